"""The sync loop's sending side: touched rows pushed as deltas, dense bundles exported and uploaded.

A background thread does the network work, so training never waits for a server. Deltas are pushed with
``?wait=visible``: the time from the push to the server's answer is push-to-visible as the trainer sees it.
Nothing is dropped: a delta that cannot be sent is retried by the push client, and a failure is counted and
reported, never skipped silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liverank.exporter.push import PushClient, PushError
from liverank.store.format import SparseDelta

log = logging.getLogger(__name__)


@dataclass
class SyncStats:
    deltas_pushed: int = 0
    rows_pushed: int = 0
    bundles_pushed: int = 0
    failures: int = 0
    last_error: str = ""
    push_to_visible_s: list[float] = field(default_factory=list)
    bundle_seconds: list[float] = field(default_factory=list)

    def visible_percentile_ms(self, q: float) -> float | None:
        values = list(self.push_to_visible_s)
        return None if not values else float(np.percentile(values, q) * 1000)


class Pusher(threading.Thread):
    """Sends queued deltas and bundles to one server, in order."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(name="liverank-pusher", daemon=True)
        self._client = PushClient(url, token)
        self._queue: queue.Queue[SparseDelta | Path | None] = queue.Queue()
        self.stats = SyncStats()

    def push_delta(self, delta: SparseDelta) -> None:
        self._queue.put(delta)

    def push_bundle(self, bundle_dir: Path) -> None:
        self._queue.put(bundle_dir)

    def finish(self, timeout_s: float = 60.0) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self.join(timeout_s)
        self._client.close()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            started = time.perf_counter()
            try:
                if isinstance(item, Path):
                    self._client.push_bundle(item)
                    self.stats.bundles_pushed += 1
                    self.stats.bundle_seconds.append(time.perf_counter() - started)
                else:
                    self._client.push_delta(item, wait_visible=True)
                    self.stats.push_to_visible_s.append(time.perf_counter() - started)
                    self.stats.deltas_pushed += 1
                    self.stats.rows_pushed += item.n_rows
            except PushError as exc:
                self.stats.failures += 1
                self.stats.last_error = str(exc)
                log.error("push failed: %s", exc)
