"""The durable delta inbox: validated deltas wait here, in LMDB, between their acknowledgement and their apply.

An inbox entry is keyed ``producer UTF-8 | 0x00 | seq u64 big-endian`` (one producer's entries in sequence order)
and holds ``received_at_ms i64 LE | the delta's binary form``. The entries live in the inbox's own LMDB
environment (``LmdbStore.inbox_env``; why: ``liverank.store.lmdb_store``). Enqueueing checks the sequence against
what is queued and what is applied (read after the inbox's write lock is taken), in one inbox write transaction;
applying removes the entry once the transaction that writes the rows and the producer's sequence has committed
(``EmbeddingStore.apply(..., inbox_key=...)``). An entry found already applied is retired as a duplicate, so a delta
is applied exactly once across crashes and restarts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import lmdb

from liverank.store.doorbell import doorbell_address, ring
from liverank.store.errors import SequenceGap, StoreError, StoreFull
from liverank.store.format import SparseDelta, decode_delta, encode_delta
from liverank.store.lmdb_store import LmdbStore, Txn

_SEQ = struct.Struct(">Q")
_TIME = struct.Struct("<q")


class InboxFull(StoreError):
    """The inbox holds as many deltas as it may; the producer should retry later."""

    code = "inbox_full"


@dataclass(frozen=True)
class EnqueueResult:
    status: Literal["queued", "duplicate"]
    producer: str
    seq: int
    depth: int


@dataclass(frozen=True)
class InboxEntry:
    """A delta waiting to be applied: from the inbox (``key``) or, in replicated mode, from the shared log
    (``log_position``, its stream sequence; ``key`` is None)."""

    key: bytes | None
    producer: str
    seq: int
    received_at_ms: int
    payload: bytes
    log_position: int | None = None

    def delta(self) -> SparseDelta:
        return decode_delta(self.payload)


def inbox_key(producer: str, seq: int) -> bytes:
    return producer.encode("utf-8") + b"\x00" + _SEQ.pack(seq)


def _parse_key(key: bytes) -> tuple[str, int]:
    return key[:-9].decode("utf-8"), int(_SEQ.unpack(key[-8:])[0])


class Inbox:
    """Bounded, durable, ordered per producer. A ``DeltaSource`` for the writer (serving/delta_source.py)."""

    in_order = False  # producers are independent: one waiting for its schema does not hold up the others

    def __init__(self, store: LmdbStore, max_depth: int) -> None:
        self._store = store
        self.max_depth = max_depth
        self.doorbell_address = doorbell_address(store.path)  # rung after each queued entry (store/doorbell.py)

    def enqueue(self, delta: SparseDelta, received_at_ms: int, payload: bytes | None = None) -> EnqueueResult:
        """Queue a validated delta durably. Duplicates (applied or queued) are reported, gaps refused."""
        self._store.check_usable()
        body = payload if payload is not None else encode_delta(delta)
        prefix = delta.producer.encode("utf-8") + b"\x00"
        try:
            with self._store.inbox_env.begin(write=True) as txn:
                # Read under the inbox's write lock: an entry that is gone from the inbox was applied before it was
                # removed, so its sequence is seen here (a producer's retry is a duplicate, not queued twice).
                with self._store.read() as rows_txn:
                    applied = self._store.applied_seq(rows_txn, delta.producer)
                last_queued = self._last_queued(txn, prefix)
                depth = int(txn.stat(self._store.inbox_db)["entries"])
                if delta.seq <= max(applied, last_queued):
                    return EnqueueResult("duplicate", delta.producer, delta.seq, depth)
                expected = max(applied, last_queued) + 1
                if delta.seq != expected:
                    raise SequenceGap(delta.producer, expected, delta.seq)
                if depth >= self.max_depth:
                    raise InboxFull(f"the inbox holds {depth} deltas (its limit); retry after the updater drains it")
                txn.put(
                    inbox_key(delta.producer, delta.seq),
                    _TIME.pack(received_at_ms) + body,
                    db=self._store.inbox_db,
                )
        except lmdb.MapFullError as exc:
            raise StoreFull("the inbox's map is full: the delta could not be queued") from exc
        ring(self.doorbell_address)  # after the commit: the writer that wakes finds the entry
        return EnqueueResult("queued", delta.producer, delta.seq, depth + 1)

    def _last_queued(self, txn: Txn, prefix: bytes) -> int:
        cursor = txn.cursor(db=self._store.inbox_db)
        # Position after this producer's last key, then step back.
        if cursor.set_range(prefix + b"\xff" * 8 + b"\x00"):
            if not cursor.prev():
                return 0
        elif not cursor.last():
            return 0
        key = cursor.key()
        return _parse_key(key)[1] if key.startswith(prefix) and len(key) == len(prefix) + 8 else 0

    def pending(self, limit: int = 64) -> list[InboxEntry]:
        """The oldest entries, each producer's in sequence order."""
        out: list[InboxEntry] = []
        with self._store.inbox_read() as txn:
            for key, value in txn.cursor(db=self._store.inbox_db):
                producer, seq = _parse_key(key)
                out.append(InboxEntry(key, producer, seq, _TIME.unpack_from(value)[0], value[_TIME.size :]))
                if len(out) >= limit:
                    break
        return out

    def depth(self) -> int:
        with self._store.inbox_read() as txn:
            return int(txn.stat(self._store.inbox_db)["entries"])

    def discard(self, entry: InboxEntry) -> None:
        """Drop an entry that can never apply (quarantined by the updater)."""
        if entry.key is not None:
            self.remove(entry.key)

    def status(self) -> dict[str, object]:
        return {"kind": "inbox", "depth": self.depth()}

    def remove(self, key: bytes) -> None:
        """Drop an entry without applying it (an artifact quarantined by the updater)."""
        self._store.remove_inbox_entry(key)
