"""The updater: the writer process's loop, the one place where deltas are written to LMDB.

It drains the durable inbox into the store in sequence order, fsyncs committed data on a timer (on a thread of its
own, durability "process"), sweeps expired rows. It runs on a thread of the writer process (serving/writer.py),
which publishes ``status_record()`` for the server's workers. One bad artifact is logged, counted and quarantined,
and serving goes on; ranking threads never wait for it. A server's writer publishes each delta to the shared tier
before it is in LMDB (``liverank.store.lmdb_applier``): entries published but not yet written are skipped here.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from liverank.serving.delta_source import DeltaSource
from liverank.store import (
    DeltaError,
    EmbeddingStore,
    InboxEntry,
    SchemaMismatch,
    SequenceGap,
    StoreError,
    StoreFull,
)
from liverank.store.doorbell import Doorbell

log = logging.getLogger(__name__)

QUARANTINE_RECORD = "quarantine"
_QUARANTINE_KEEP = 100
_BACKOFF_S = 1.0
DOORBELL_FALLBACK_S = 0.05  # also bounds how long ``stop`` waits for an idle updater with a doorbell


class Updater:
    """Applies queued deltas and does the store's housekeeping, on one background thread."""

    def __init__(
        self,
        store: EmbeddingStore,
        inbox: DeltaSource,
        *,
        poll_s: float,
        flush_interval_s: float,
        sweep_interval_s: float,
        doorbell: Doorbell | None = None,
    ) -> None:
        self._store = store
        self._inbox = inbox
        self._poll_s = poll_s
        # With a doorbell (the inbox rings it after each entry), an idle updater sleeps until rung and only looks at
        # the inbox on its own every DOORBELL_FALLBACK_S (a lost ring); without one it polls every ``poll_s``.
        self._doorbell = doorbell
        self._flush_interval_s = flush_interval_s
        self._sweep_interval_s = sweep_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverank-updater", daemon=True)
        # fsync on a thread of its own: it can take tens of milliseconds, and on the updater's thread every delta
        # that arrived meanwhile waited for it (measured: BENCHMARKS.md, fourth run).
        self._flusher = threading.Thread(target=self._flush_loop, name="liverank-flush", daemon=True)
        self._waiting_schema: set[tuple[str, int]] = set()  # (producer, seq): warned about once
        self.drained_at_start = threading.Event()
        self.last_apply_ms: int | None = None
        # Reported in ``status_record``; the server's follower turns them into its metrics.
        self.failures: collections.Counter[str] = collections.Counter()  # by kind
        self.expired_by_slot: collections.Counter[str] = collections.Counter()
        self.deltas_applied = 0
        self.rows_applied = 0
        self.publish_window_s = 0.0  # the last shared-tier publish (writer process with a shared tier)
        # (producer, seq, rows, received_at_ms, visible_at_ms) of applied deltas, for a server's writer to turn into
        # metrics (``WriterMetrics``): with a shared tier a delta is visible to every worker once applied here.
        self.applied_log: collections.deque[tuple[str, int, int, int, int]] = collections.deque(maxlen=4096)
        self.on_applied: Callable[[], None] | None = None  # called after deltas were applied (a status report)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        if self._store.lmdb.durability == "process":
            self._flusher.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._flusher.is_alive():
            self._flusher.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the loop -----------------------------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._flush_interval_s):
            try:
                self._store.flush()
            except Exception:
                log.exception("flushing the store failed; trying again in %.1f s", self._flush_interval_s)
                self._fail("flush")

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                progressed = self._drain()
                # A restarted writer publishes the tier once LMDB has caught up with what readers saw (a no-op
                # once publishing, and for a store that publishes no tier).
                self._store.start_publishing(source_drained=not progressed)
                if progressed and self.on_applied is not None:
                    self.on_applied()
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep()
                    next_sweep = now + self._sweep_interval_s
            except Exception:
                log.exception("updater loop failed; retrying in %.1f s", _BACKOFF_S)
                self._fail("internal")
                self._stop.wait(_BACKOFF_S)
                continue
            if not progressed:
                if self._doorbell is not None:
                    self._doorbell.wait(DOORBELL_FALLBACK_S)
                else:
                    self._stop.wait(self._poll_s)

    def _drain(self) -> bool:
        """Apply what the inbox holds, oldest first per producer. True if anything was applied."""
        entries = self._inbox.pending(limit=256)
        applier = self._store.applier
        if applier is not None:  # visible already, waiting for LMDB (which retires them from the inbox)
            entries = [entry for entry in entries if not applier.in_flight(entry.key)]
        if not entries:
            self.drained_at_start.set()
            return False
        blocked: set[str] = set()
        applied_any = False
        for entry in entries:
            if entry.producer in blocked:
                continue
            if not self._apply(entry):
                blocked.add(entry.producer)  # later sequences of this producer must wait for this one
                if self._inbox.in_order:
                    break  # a log's later records (any producer's) wait too: its position moves in order
                continue
            applied_any = True
        if not applied_any and not self.drained_at_start.is_set() and blocked:
            self.drained_at_start.set()  # what is left waits for a bundle; serving must not wait for it
        return applied_any

    def _apply(self, entry: InboxEntry) -> bool:
        try:
            delta = entry.delta()
            result = self._store.apply(
                delta,
                inbox_key=entry.key,
                payload=entry.payload,
                received_at_ms=entry.received_at_ms,
                log_position=entry.log_position,
            )
        except SchemaMismatch as exc:
            if self._store.reload_schema():  # the server made a bundle of another schema live: look again
                return self._apply(entry)
            if (entry.producer, entry.seq) not in self._waiting_schema:
                self._waiting_schema.add((entry.producer, entry.seq))
                self._fail("schema_mismatch")
                log.warning("delta %s/%s waits for a bundle of its schema: %s", entry.producer, entry.seq, exc.message)
            return False
        except StoreFull as exc:
            self._fail("store_full")
            log.error("delta %s/%s not applied, store full: %s", entry.producer, entry.seq, exc.message)
            self._stop.wait(_BACKOFF_S)
            return False
        except (DeltaError, SequenceGap) as exc:
            self._quarantine(entry, exc)
            return False
        except StoreError as exc:
            self._fail(exc.code)
            log.error("delta %s/%s not applied: %s", entry.producer, entry.seq, exc.message)
            self._stop.wait(_BACKOFF_S)
            return False
        self._waiting_schema.discard((entry.producer, entry.seq))
        now_ms = time.time_ns() // 1_000_000
        if result.status == "applied":
            self.deltas_applied += 1
            self.rows_applied += result.rows_written
            self.last_apply_ms = now_ms
            self.applied_log.append((entry.producer, entry.seq, result.rows_written, entry.received_at_ms, now_ms))
        return True

    def _fail(self, kind: str) -> None:
        self.failures[kind] += 1

    def _quarantine(self, entry: InboxEntry, exc: StoreError) -> None:
        """Set a delta that can never apply aside (kept for inspection), so the ones after it can go on."""
        log.error("quarantining delta %s/%s: %s", entry.producer, entry.seq, exc.message)
        self._fail(exc.code)
        kept: list[dict[str, Any]] = list(self._store.lmdb.get_app_record(QUARANTINE_RECORD) or [])
        kept.append(
            {
                "producer": entry.producer,
                "seq": entry.seq,
                "code": exc.code,
                "reason": exc.message,
                "received_at_ms": entry.received_at_ms,
            }
        )
        self._store.lmdb.put_app_record(QUARANTINE_RECORD, kept[-_QUARANTINE_KEEP:])
        self._inbox.discard(entry)

    def _sweep(self) -> None:
        for slot, removed in self._store.sweep_expired().items():
            self.expired_by_slot[slot] += removed

    # --- status -------------------------------------------------------------------------------------------------

    def status_record(self) -> dict[str, Any]:
        """What a writer process reports to the server it works for (through the store)."""
        return {
            "alive_at_ms": time.time_ns() // 1_000_000,
            "drained_at_start": self.drained_at_start.is_set(),
            "last_apply_ms": self.last_apply_ms,
            "failures": dict(self.failures),
            "expired_by_slot": dict(self.expired_by_slot),
            "deltas_applied": self.deltas_applied,
            "rows_applied": self.rows_applied,
            "publish_window_s": self.publish_window_s,
            "lmdb_lag_deltas": 0 if self._store.applier is None else self._store.applier.lag,
            "source": self._inbox.status(),
        }
