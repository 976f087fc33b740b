"""``DeltaIntake``: a pushed delta's way into the durable inbox. Decoded, validated against the live slots and
schema, and queued (one LMDB write transaction) for the writer process, which the inbox's doorbell wakes. Anything
wrong raises before anything is written."""

from __future__ import annotations

import threading

from liverank.serving.metrics import Metrics
from liverank.store import EmbeddingStore, EnqueueResult, Inbox, StoreError, StoreFull, decode_any, encode_delta
from liverank.store.format import is_binary_delta

# A delta takes about three times its bytes in the store once applied (rows with B-tree overhead, and the changelog
# entry). Room is asked for that much, for every queued delta too (the inbox has its own environment, so queued
# deltas take none of the store's map yet), plus this slack for page rounding.
_GROWTH_FACTOR = 3
_ROOM_SLACK_BYTES = 256 * 1024
_DURABLE_WAIT_S = 10.0  # a full store: how long a push waits for LMDB to hold what is served before it is refused


class DeltaIntake:
    """Accepts deltas in the binary or the JSON form."""

    def __init__(self, store: EmbeddingStore, inbox: Inbox, metrics: Metrics) -> None:
        self._store = store
        self._inbox = inbox
        self._metrics = metrics
        self._room_lock = threading.Lock()  # room check and enqueue as one step: concurrent pushes see each other

    def submit(self, payload: bytes, received_at_ms: int) -> EnqueueResult:
        try:
            delta = decode_any(payload)
            self._store.validate(delta)
            binary = payload if is_binary_delta(payload) else encode_delta(delta)
            with self._room_lock:
                if delta.n_rows:
                    try:
                        self._check_room(len(binary))
                    except StoreFull:
                        # Deltas already served may not be in LMDB yet (the writer writes it behind the tier), among
                        # them tombstones that free room: judge room on the state the producer has seen.
                        self._store.wait_durable(_DURABLE_WAIT_S)
                        self._check_room(len(binary))
                result = self._inbox.enqueue(delta, received_at_ms, payload=binary)
        except StoreError as exc:
            self._metrics.deltas_received.labels(outcome=exc.code).inc()
            raise
        self._metrics.deltas_received.labels(outcome=result.status).inc()
        return result

    def _check_room(self, delta_bytes: int) -> None:
        """Refuse rows before they are queued when the store will have no room to apply them (the store's own
        check runs only at apply time). An acknowledged delta that cannot apply would block its producer's later
        sequences, the tombstones that could make room among them, and queued deltas would use up the room the
        store keeps for deletes once applied. Tombstone-only deltas are never refused here."""
        lmdb = self._store.lmdb
        with lmdb.read() as txn:
            used = lmdb.used_bytes(txn)
        with lmdb.inbox_read() as txn:
            inbox = txn.stat(lmdb.inbox_db)
        queued_bytes = (inbox["branch_pages"] + inbox["leaf_pages"] + inbox["overflow_pages"]) * inbox["psize"]
        room = lmdb.map_size_bytes - lmdb.reserve_bytes - used
        if _GROWTH_FACTOR * (queued_bytes + delta_bytes) + _ROOM_SLACK_BYTES > room:
            raise StoreFull(
                f"store map is full ({used} of {lmdb.map_size_bytes} bytes used, {lmdb.reserve_bytes} kept for "
                f"deletes): a delta that adds rows is refused and was not queued; delete rows (a tombstone-only "
                f"delta is accepted) or raise LIVERANK_MAP_SIZE_BYTES"
            )
