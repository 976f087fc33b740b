"""The serving process's view of freshness: recording push-to-visible latencies, and letting ``?wait=visible``
callers wait until a delta is served here. The follower feeds it."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

from liverank.serving.metrics import Metrics
from liverank.store import EmbeddingStore

# How often a ``?wait=visible`` caller looks at the served state. In a worker nothing notifies it when the writer
# publishes (another process): this poll is part of push-to-visible (a 2 ms look costs a few microseconds).
_SERVED_POLL_S = 0.002


class Freshness:
    """Push-to-visible figures (a recent window, plus the Prometheus histogram) and visibility waiters."""

    def __init__(self, store: EmbeddingStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._served = threading.Condition()
        self.recent_s: collections.deque[float] = collections.deque(maxlen=2048)

    def visible(self, received_at_ms: int, now_ms: int) -> None:
        """A delta received at ``received_at_ms`` is served from ``now_ms`` on."""
        seconds = max(0.0, (now_ms - received_at_ms) / 1000.0)
        self.recent_s.append(seconds)
        self._metrics.push_to_visible_seconds.observe(seconds)

    def notify(self) -> None:
        with self._served:
            self._served.notify_all()

    def wait_served(self, producer: str, seq: int, timeout_s: float) -> bool:
        """Block until ``producer``'s ``seq`` is served by this process, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        with self._served:
            while self._store.served_seq(producer) < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Re-check now and then, not only on notify: a restarted writer or a rebuild also moves it.
                self._served.wait(min(left, _SERVED_POLL_S))
        return True

    def summary(self) -> dict[str, float | int | None]:
        values = np.asarray(self.recent_s, dtype=np.float64)
        if not values.size:
            return {"count": 0, "p50_s": None, "p99_s": None, "max_s": None}
        return {
            "count": int(values.size),
            "p50_s": float(np.percentile(values, 50)),
            "p99_s": float(np.percentile(values, 99)),
            "max_s": float(values.max()),
        }
