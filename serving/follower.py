"""The follower: the serving process's side of the writer process. It follows; it never writes a delta.

A thread that brings the RAM tier up to what the writer committed (``EmbeddingStore.catch_up``), measures
push-to-visible as the time from a delta's receipt to this process serving it, wakes ``?wait=visible`` waiters,
mirrors the writer's state into metrics and readiness, and restarts the writer if it dies.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from liverank.serving.freshness import Freshness
from liverank.serving.metrics import Metrics, add_new
from liverank.serving.writer import STATUS_RECORD, WriterProcess
from liverank.store import EmbeddingStore

log = logging.getLogger(__name__)

_STATUS_EVERY_S = 0.25


class Follower:
    """Keeps this process's view (its RAM tier, metrics and readiness) current with the writer process."""

    def __init__(self, store: EmbeddingStore, writer: WriterProcess, metrics: Metrics, *, poll_s: float) -> None:
        self._store = store
        self._writer = writer
        self._metrics = metrics
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverank-follower", daemon=True)
        self._failures_seen: dict[str, int] = {}
        self._expired_seen: dict[str, int] = {}
        self._seen_token = 0  # the writer whose running totals the two dicts above hold
        self.drained_at_start = threading.Event()
        self.last_apply_ms: int | None = None
        self.writer_status: dict[str, Any] = {}  # the writer's last status record (its delta source's state too)
        self.freshness = Freshness(store, metrics)

    def start(self) -> None:
        self._writer.start()
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._writer.stop()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._writer.alive

    def wait_applied(self, producer: str, seq: int, timeout_s: float) -> bool:
        """Block until ``producer``'s ``seq`` is served by this process, or the timeout passes."""
        return self.freshness.wait_served(producer, seq, timeout_s)

    def _run(self) -> None:
        next_status = time.monotonic()
        while not self._stop.is_set():
            try:
                self._follow()
                if time.monotonic() >= next_status:
                    self._mirror_writer()
                    next_status = time.monotonic() + _STATUS_EVERY_S
            except Exception:
                log.exception("follower failed; retrying")
                self._metrics.updater_failures.labels(kind="follower").inc()
                self._stop.wait(1.0)
                continue
            self._stop.wait(self._poll_s)

    def _follow(self) -> None:
        followed = self._store.catch_up()
        if not followed:
            return
        now_ms = time.time_ns() // 1_000_000
        for entry in followed:
            if entry.received_at_ms > 0:
                self.freshness.visible(entry.received_at_ms, now_ms)
            self._metrics.applied_sequence.labels(producer=entry.producer).set(entry.seq)
            self._metrics.deltas_applied.inc()
            self._metrics.delta_rows_applied.inc(entry.n_rows)
        self.last_apply_ms = now_ms
        self.freshness.notify()

    def _mirror_writer(self) -> None:
        if not self._writer.alive and not self._stop.is_set():
            if self._writer.restart():
                self._metrics.updater_failures.labels(kind="writer_restart").inc()
            return
        status: dict[str, Any] = self._store.lmdb.get_app_record(STATUS_RECORD) or {}
        if status.get("token") != self._writer.token:
            return  # a previous writer's record: this one has not reported yet
        self.writer_status = status
        if self._seen_token != self._writer.token:  # a restarted writer counts from zero again
            self._seen_token = self._writer.token
            self._failures_seen.clear()
            self._expired_seen.clear()
        add_new(status.get("failures", {}), self._failures_seen, self._metrics.updater_failures, "kind")
        add_new(status.get("expired_by_slot", {}), self._expired_seen, self._metrics.rows_expired, "slot")
        if status.get("drained_at_start") and not self.drained_at_start.is_set():
            self._follow()  # serve what the writer applied before calling this process ready
            self.drained_at_start.set()

    def push_to_visible_summary(self) -> dict[str, float | int | None]:
        return self.freshness.summary()
