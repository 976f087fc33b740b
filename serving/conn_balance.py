"""``ConnectionBalance``: spreads a multi-process server's client connections evenly over its workers.

Why: every worker listens on the port in one ``SO_REUSEPORT`` group (``serving/server.py``), and the kernel places
each new connection by a hash of its addresses. With few long-lived keep-alive connections (a load balancer's pool,
a benchmark's 8 clients) that hash is often uneven, and it stays so for the connections' lifetime: at 10M rows one
worker carried 102 % of a core and the other 39 % (BENCHMARKS.md, sixth run). The busier worker then runs near one
core, its own GIL bounds it, and any extra work landing on it (a pushed delta's intake, the writer taking a core)
queues its rankings while the other worker idles.

How: each worker counts its active connections (distinct client address and port that sent a request in the last
``active_s`` seconds: an idle connection carries no load), publishes the count in its status record (the
``WorkerSync`` beat, every 0.25 s) and reads the other workers' counts there. A worker holding more than its fair
share, ``ceil(total / workers)``, closes one connection: its next response carries ``Connection: close``, and the
HTTP/1.1 client opens a new connection, which the kernel places anew (the shared socket of the group goes to
whichever worker accepts first). One connection per beat, so that every count is fresh before the next decision;
once no worker is above its share, nothing is closed. The response itself is whole: only the connection ends.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable

ACTIVE_S = 2.0


class ConnectionBalance:
    """One worker's side: count active connections, and close one when asked to give connections up."""

    def __init__(self, active_s: float = ACTIVE_S) -> None:
        self._active_s = active_s
        self._last_seen: dict[tuple[str, int], float] = {}
        self._to_close = 0
        self._lock = threading.Lock()  # requests on the event loop, counting and decisions on the sync thread
        self.closed = 0  # connections closed to rebalance, for /admin/status

    def on_request(self, client: tuple[str, int] | None, http_version: str) -> bool:
        """A request arrived on ``client``'s connection; True if its response should close the connection."""
        if client is None:
            return False
        now = time.monotonic()
        with self._lock:
            if self._to_close > 0 and http_version == "1.1":
                self._to_close -= 1
                self.closed += 1
                self._last_seen.pop(client, None)
                return True
            self._last_seen[client] = now
            return False

    def active(self) -> int:
        """Connections that sent a request within ``active_s`` (forgetting older ones)."""
        horizon = time.monotonic() - self._active_s
        with self._lock:
            stale = [client for client, seen in self._last_seen.items() if seen < horizon]
            for client in stale:
                del self._last_seen[client]
            return len(self._last_seen)

    def rebalance(self, mine: int, others: Iterable[int]) -> None:
        """Given this worker's active connections and every other live worker's, close one connection if this
        worker holds more than ``ceil(total / workers)``; otherwise close none."""
        counts = list(others)
        fair = math.ceil((mine + sum(counts)) / (1 + len(counts)))
        with self._lock:
            self._to_close = 1 if mine > fair else 0
