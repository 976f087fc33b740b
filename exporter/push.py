"""``PushClient``: the exporter's way to send deltas and bundles, which is ``liverank.client.Client``.

The push logic (retries with backoff, safe resends, gap recovery from a window of recent deltas) lives in the
public client (``liverank/client/_steps.py``), written once for its sync and async forms; this module keeps the
exporter's names for it (``liverank push``, the trainer's sync loop and the demo use them).
"""

from __future__ import annotations

from typing import Any

from liverank.client import (
    BundleRejected,
    Client,
    DeltaRejected,
    GapUnrecoverable,
    PushResult,
    ServerUnavailable,
)
from liverank.client import ClientError as PushError

__all__ = [
    "BundleRejected",
    "DeltaRejected",
    "GapUnrecoverable",
    "PushClient",
    "PushError",
    "PushResult",
    "ServerUnavailable",
]


class PushClient(Client):
    """A ``Client`` whose admin token is its second argument (pushing always needs it)."""

    def __init__(self, base_url: str, token: str | None, **options: Any) -> None:
        super().__init__(base_url, token=token, **options)
