"""``ModelSlot``: the live dense model. A swap builds and warms the new runner first, then replaces one reference.

Like MLServer's load-before-unload reload: a request takes the slot's current ``LiveModel`` once and uses it to the
end, so a swap never fails or mixes a request; the old session is dropped when its last request finishes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from liverank.serving.bundle import Bundle
from liverank.serving.errors import NoBundle
from liverank.serving.runner import OnnxRunner
from liverank.store.manifest import Manifest


@dataclass(frozen=True)
class LiveModel:
    """A warmed runner and the bundle it came from; ``bundle_id`` names its directory under bundles/."""

    bundle_id: str
    bundle: Bundle
    runner: OnnxRunner
    live_since_ms: int

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def version(self) -> str:
        return self.bundle.manifest.version


class ModelSlot:
    """Holds one ``LiveModel`` reference. Reading it is lock-free; swaps are serialised."""

    def __init__(self) -> None:
        self._live: LiveModel | None = None
        self.swap_lock = threading.Lock()

    @property
    def live(self) -> LiveModel | None:
        return self._live

    def current(self) -> LiveModel:
        live = self._live
        if live is None:
            raise NoBundle("no model bundle is live yet; upload one to POST /admin/bundles")
        return live

    def replace(self, new: LiveModel) -> LiveModel | None:
        """Make ``new`` live (it must already be built and warmed). Returns the model it replaced."""
        old, self._live = self._live, new
        return old
