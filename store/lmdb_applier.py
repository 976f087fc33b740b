"""``LmdbApplier``: writes deltas that are already visible in the shared tier into LMDB, behind the publisher.

Why: at 1M rows under ranking load the LMDB write of a D-10k delta took 91 ms (p50) of the writer's 145 ms from
push to visible (BENCHMARKS.md, fourth run); publishing it to the shared tier took 7. A delta that came from the
durable inbox can be made visible first: its inbox entry stays until the LMDB transaction that writes its rows has
committed, so nothing acknowledged depends on LMDB having it yet. The publisher (``EmbeddingStore.apply``) checks
the sequence against the published state, publishes, and hands the delta here; this thread writes it with the
generation the tier gave it.

Invariants:
1. Deltas reach LMDB in the order they were published, one write transaction each (rows, sequence, generation,
   changelog: ``LmdbStore.apply``; the inbox entry is removed after it commits), so LMDB always holds a prefix of
   the published states and its generation never passes the tier's.
2. A delta written here gets the generation it was published as; anything else is a broken invariant, and the
   applier stops (the writer exits and is restarted: it rebuilds the tier from LMDB after draining the inbox).
3. Any other write to LMDB's rows (a delta that is not published first, an expiry sweep, a rebuild of the tier from
   LMDB) first waits for this queue to empty (``wait_idle``, under the store's write lock).
4. A restarted writer publishes nothing until LMDB has caught up with the last state the previous writer published
   (``EmbeddingStore.open``, ``tier="publish"``): readers never see a published delta go away.
5. At most ``max_queued`` deltas wait here; the publisher blocks beyond that (LMDB cannot keep up: visibility slows
   to LMDB's pace instead of the queue growing without bound).

A write that fails for lack of room (``StoreFull``) or another store error is retried every second, logged: later
deltas stay visible and queue behind it, and their inbox entries stay until it succeeds.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass

from liverank.store.errors import StoreError
from liverank.store.lmdb_store import LmdbStore
from liverank.store.validation import PreparedDelta, with_lmdb_encoding

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 64
_RETRY_S = 1.0
# Test-only seam: while the file this names exists, the applier writes nothing (deltas stay visible-only), so a test
# can watch a delta served before LMDB has it, and SIGKILL the writer then.
HOLD_ENV = "LIVERANK_TIER_TEST_HOLD_LMDB"


@dataclass(frozen=True)
class VisibleDelta:
    """A published delta that LMDB does not hold yet."""

    prepared: PreparedDelta  # validated; LMDB keys and values are encoded here if they are not yet
    payload: bytes  # its binary form, for the changelog
    inbox_key: bytes  # removed once the transaction that writes the rows has committed
    received_at_ms: int
    generation: int  # the published state it made; 0: a duplicate of a published one (LMDB only retires its entry)


class LmdbApplier:
    """One background thread writing published deltas into LMDB in order."""

    def __init__(self, lmdb: LmdbStore, *, max_queued: int = DEFAULT_MAX_QUEUED, nice: int = 0) -> None:
        self._lmdb = lmdb
        self._max_queued = max_queued
        self._nice = nice
        self._queue: collections.deque[VisibleDelta] = collections.deque()
        self._in_flight: set[bytes] = set()  # inbox keys queued or being written
        self._cond = threading.Condition()
        self._stop = False
        self._hold = os.environ.get(HOLD_ENV)
        self.failure: str | None = None  # set when the applier stopped on a broken invariant
        self.errors = 0  # failed write attempts (retried)
        self._thread = threading.Thread(target=self._run, name="liverank-lmdb-applier", daemon=True)
        self._thread.start()

    # --- the publisher's side -------------------------------------------------------------------------------------

    def submit(self, item: VisibleDelta) -> None:
        """Queue a published delta (blocks while ``max_queued`` wait: invariant 5)."""
        with self._cond:
            while len(self._queue) >= self._max_queued and self.failure is None and not self._stop:
                self._cond.wait(0.5)
            self._check_alive()
            self._queue.append(item)
            self._in_flight.add(item.inbox_key)
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Until LMDB holds every queued delta (True), or the timeout passes (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._in_flight:
                self._check_alive()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
        return True

    def in_flight(self, inbox_key: bytes | None) -> bool:
        """True while this inbox entry is published but not yet written (the updater must not hand it over again)."""
        with self._cond:
            return inbox_key in self._in_flight

    @property
    def lag(self) -> int:
        """Deltas published but not yet in LMDB."""
        with self._cond:
            return len(self._in_flight)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (bounded by ``timeout_s``: the inbox keeps what is left), then end the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _check_alive(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the LMDB applier stopped: {self.failure}")

    # --- the thread -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        if self._nice:
            # Linux: a thread's own nice value (its native id is a task id). Only ever raised, which needs no
            # privilege; the publisher thread keeps its priority.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return  # stopping, nothing left
                item = self._queue[0]
            if self._held():
                continue
            if not self._write(item):
                if self._stopping():
                    return  # the inbox still holds it: the next writer applies it
                time.sleep(_RETRY_S)
                continue
            if self.failure is not None:
                return  # what is queued stays in the inbox for the next writer
            with self._cond:
                self._queue.popleft()
                self._in_flight.discard(item.inbox_key)
                self._cond.notify_all()

    def _held(self) -> bool:
        """Test-only (``HOLD_ENV``): True while held (after a short wait, so the loop looks again)."""
        if self._hold is None or not os.path.exists(self._hold) or self._stopping():
            return False
        time.sleep(0.01)
        return True

    def _stopping(self) -> bool:
        with self._cond:
            return self._stop

    def _write(self, item: VisibleDelta) -> bool:
        """One delta into LMDB; False when it must be tried again."""
        delta = item.prepared.delta
        try:
            prepared = with_lmdb_encoding(item.prepared)  # here, off the publisher's path
            result = self._lmdb.apply(prepared, item.payload, item.inbox_key, item.received_at_ms)
        except StoreError as exc:
            self.errors += 1
            log.error(
                "delta %s/%s is visible but not yet in LMDB (%s); trying again in %.0f s (its inbox entry is kept)",
                delta.producer,
                delta.seq,
                exc.message,
                _RETRY_S,
            )
            return False
        except Exception as exc:  # a broken store: stop, the writer exits and its successor recovers (invariant 2)
            log.exception("the LMDB applier failed on delta %s/%s", delta.producer, delta.seq)
            self._fail(f"{type(exc).__name__}: {exc}")
            return True
        if item.generation and (result.status != "applied" or result.generation != item.generation):
            self._fail(
                f"delta {delta.producer}/{delta.seq} was published as generation {item.generation}, LMDB gave "
                f"{result.status} at generation {result.generation}"
            )
        return True

    def _fail(self, reason: str) -> None:
        log.error("the LMDB applier stops: %s", reason)
        with self._cond:
            self.failure = reason
            self._cond.notify_all()
