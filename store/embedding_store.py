"""``EmbeddingStore``: the store's public face. Durable rows in LMDB, hot rows in the RAM tier, one writer.

Reads: ``lookup_many`` answers several slots from one consistent state (one delta boundary). The RAM tier answers
what is resident; rows that are not resident come from an LMDB read transaction of the same generation; when a
writer is mid-way (tier being changed, or LMDB already ahead of the tier) the whole call is answered from one LMDB
snapshot instead. Readers never wait for the writer.

Writes: ``apply`` validates a delta, commits it to LMDB in one transaction, then makes it visible in the tier.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from liverank.store.errors import IdOutOfRange, UnknownSlot
from liverank.store.format import (
    Array,
    Ids,
    IntIds,
    SparseDelta,
    decode_delta,
    encode_delta,
    encode_int_keys,
    encode_str_key,
    hash_str_id,
    slot_key_prefix,
    value_dtype,
)
from liverank.store.lmdb_store import DEFAULT_MAP_SIZE_BYTES, ApplyResult, Durability, LmdbStore, Txn
from liverank.store.ram_tier import DELETED_MS, RamTier, TierRead
from liverank.store.slots import SlotConfig
from liverank.store.validation import PreparedDelta, prepare_delta

log = logging.getLogger(__name__)

DEFAULT_RAM_BUDGET_ROWS = 50_000_000
_WARM_CHUNK_ROWS = 1_000_000
Source = Literal["ram", "ram+lmdb", "lmdb"]


@dataclass(frozen=True)
class SlotLookup:
    """Rows of one slot: float32 vectors (unseen ids hold the slot default), event times, and which were unseen."""

    vectors: Array
    updated_at_ms: Array
    unseen: Array

    @property
    def n_unseen(self) -> int:
        return int(self.unseen.sum())


@dataclass(frozen=True)
class Lookup:
    """The answer to one ``lookup_many`` call: every slot read at the same ``generation``."""

    generation: int
    slots: dict[str, SlotLookup]
    source: Source
    applied_seq: dict[str, int]  # per producer, as of ``generation``


@dataclass(frozen=True)
class Followed:
    """A delta the RAM tier followed from the changelog (applied to LMDB by another process)."""

    generation: int
    producer: str
    seq: int
    received_at_ms: int
    n_rows: int


@dataclass(frozen=True)
class StoreStats:
    path: str
    generation: int
    schema_hash: str | None
    applied_seq: dict[str, int]
    rows_by_slot: dict[str, int]
    resident_rows_by_slot: dict[str, int]
    ram_budget_rows: int
    used_bytes: int
    map_size_bytes: int
    durability: str
    unseen_by_slot: dict[str, int]


class EmbeddingStore:
    """Collisionless embedding tables with crash-safe, all-or-nothing delta application and fast reads."""

    def __init__(self, lmdb_store: LmdbStore, ram_budget_rows: int) -> None:
        self._lmdb = lmdb_store
        self._tier = RamTier(ram_budget_rows)
        self._tier_complete = True  # every LMDB row is resident: a tier miss is an unseen id
        self._tier_ok = True
        self._write_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._unseen: dict[str, int] = {}
        self._slots = self._lmdb.slot_table()
        self._schema_hash = self._lmdb.schema_hash()
        self._sweep_from: dict[str, bytes] = {}
        # A lookup that finds the tier behind LMDB follows the changelog itself. A server turns this off and runs
        # a follower thread instead, so that no ranking request pays for catching up.
        self.follow_inline = True

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        slots: Sequence[SlotConfig] = (),
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES,
        durability: Durability = "process",
        ram_budget_rows: int = DEFAULT_RAM_BUDGET_ROWS,
        reserve_bytes: int | None = None,
        ram_tier: bool = True,
    ) -> EmbeddingStore:
        """Open (or create) a store, declare ``slots``, and warm the RAM tier from LMDB up to the budget.

        ``ram_tier`` False: no RAM tier at all (a process that only writes, like the server's writer process:
        its reads, if any, go to LMDB).
        """
        lmdb_store = LmdbStore(path, map_size_bytes=map_size_bytes, durability=durability, reserve_bytes=reserve_bytes)
        try:
            store = cls(lmdb_store, ram_budget_rows)
            if slots:
                store.declare_slots(slots)
            if ram_tier:
                store._warm()
            else:
                store._tier_ok = False
        except BaseException:
            lmdb_store.close()
            raise
        return store

    # --- lifecycle and configuration ----------------------------------------------------------------------------

    def close(self) -> None:
        self._lmdb.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def lmdb(self) -> LmdbStore:
        return self._lmdb

    @property
    def slots(self) -> dict[str, SlotConfig]:
        return {name: cfg for name, (cfg, _) in self._slots.items()}

    @property
    def schema_hash(self) -> str | None:
        return self._schema_hash

    def declare_slots(self, slots: Sequence[SlotConfig]) -> None:
        with self._write_lock:
            self._slots = self._lmdb.declare_slots(list(slots))
            self._tier.configure(self.slots)

    def bind_schema(self, schema_hash: str) -> None:
        """Accept only deltas built for this schema from now on (set when a bundle goes live)."""
        with self._write_lock:
            self._lmdb.set_schema_hash(schema_hash)
            self._schema_hash = schema_hash

    def reload_schema(self) -> bool:
        """Take the slots and schema another process bound (a writer process after the server made a bundle
        live). True if they changed."""
        with self._write_lock, self._lmdb.read() as txn:
            schema_hash = self._lmdb.schema_hash(txn)
            slots = self._lmdb.slot_table(txn)
            if schema_hash == self._schema_hash and slots.keys() == self._slots.keys():
                return False
            self._slots = slots
            self._schema_hash = schema_hash
            self._tier.configure(self.slots)
            return True

    def _warm(self) -> None:
        """Fill a fresh RAM tier from one LMDB snapshot, slot by slot, in chunks (bounded memory), then use it."""
        started = time.perf_counter()
        tier = RamTier(self._tier.budget_rows)
        complete = True
        with self._lmdb.read() as txn:
            self._slots = self._lmdb.slot_table(txn)
            tier.configure(self.slots)
            counts = self._lmdb.row_counts(txn)
            for name, (config, code) in self._slots.items():
                stored = counts.get(name, 0)
                room = tier.budget_rows - tier.resident_rows
                if stored > room:
                    complete = False
                if stored == 0 or room <= 0:
                    continue  # nothing to load, or no budget left: no reason to scan the slot
                # Sized once, with headroom for new ids, instead of doubling through the load.
                tier.reserve(name, min(stored, room) + max(1024, stored // 4))
                for ids, vectors, updated in _scan_slot(txn, self._lmdb.rows_db, config, code, _WARM_CHUNK_ROWS):
                    if tier.load(name, ids, vectors, updated) < len(ids):
                        break
            tier.generation = self._lmdb.generation(txn)
            tier.applied_seq = self._lmdb.applied_seqs(txn)
        self._tier, self._tier_complete, self._tier_ok = tier, complete, True
        log.info(
            "RAM tier warm: %s rows resident in %.1f s (complete=%s)",
            tier.resident_rows,
            time.perf_counter() - started,
            complete,
        )

    def catch_up(self) -> list[Followed]:
        """Bring the RAM tier up to LMDB's generation: deltas another process (the writer) applied. Returns what
        was followed, oldest first; a tier further behind than the changelog reaches is rebuilt instead."""
        if not self._tier_ok:
            return []
        with self._write_lock:
            return self._catch_up()

    def _catch_up(self) -> list[Followed]:
        with self._lmdb.read() as txn:
            entries = self._lmdb.changelog(txn, self._tier.generation)
            if entries is None:
                log.warning("RAM tier is further behind than the changelog reaches; rebuilding it from LMDB")
            elif entries:
                self._slots = self._lmdb.slot_table(txn)
                self._tier.configure(self.slots)
                self._schema_hash = self._lmdb.schema_hash(txn)
        if entries is None:
            self._warm()
            return []
        followed: list[Followed] = []
        for generation, received_at_ms, payload in entries:
            # Already validated and committed by the writer; the schema it was checked against is its business.
            delta = decode_delta(payload)
            self._apply_to_tier(prepare_delta(delta, self._slots, None, for_lmdb=False), generation)
            followed.append(Followed(generation, delta.producer, delta.seq, received_at_ms, delta.n_rows))
        return followed

    def _apply_to_tier(self, prepared: PreparedDelta, generation: int) -> None:
        try:
            self._tier.apply(prepared, generation)
        except Exception:
            # LMDB has the delta; the tier does not. Serve from LMDB rather than serve stale rows.
            self._tier_ok = False
            log.exception("RAM tier update failed; reads fall back to LMDB until the store is reopened")
        if self._tier.resident_rows >= self._tier.budget_rows:
            self._tier_complete = False

    # --- writes -------------------------------------------------------------------------------------------------

    def apply(
        self,
        delta: SparseDelta,
        *,
        inbox_key: bytes | None = None,
        payload: bytes | None = None,
        received_at_ms: int = 0,
        log_position: int | None = None,
    ) -> ApplyResult:
        """Validate and apply one delta, all or nothing. Duplicates are no-ops; gaps raise ``SequenceGap``.

        ``payload``: the delta's binary form if the caller has it (saves encoding it again for the changelog).
        ``received_at_ms``: when the delta arrived, kept in the changelog for followers' freshness figures.
        ``log_position``: the shared-log record it came from (replicated mode), recorded with the rows.
        """
        with self._write_lock:
            prepared = prepare_delta(delta, self._slots, self._schema_hash)
            binary = payload if payload is not None else encode_delta(delta)
            result = self._lmdb.apply(prepared, binary, inbox_key, received_at_ms, log_position)
            if result.status == "applied" and self._tier_ok:
                if self._tier.generation == result.generation - 1:
                    self._apply_to_tier(prepared, result.generation)
                else:  # another process wrote in between: replay its deltas (and ours) from the changelog
                    self._catch_up()
            return result

    def validate(self, delta: SparseDelta) -> None:
        """Check a delta against the slots and the bound schema without writing it (e.g. before queueing)."""
        prepare_delta(delta, self._slots, self._schema_hash, for_lmdb=False)

    def flush(self) -> None:
        self._lmdb.flush()

    def sweep_expired(self, now_ms: int | None = None, max_rows_scanned: int = 200_000) -> dict[str, int]:
        """Delete rows past their slot's TTL, scanning at most ``max_rows_scanned`` rows per slot per call.

        Resumes where the previous call stopped, so a background loop covers a large table in slices.
        """
        now = _now_ms() if now_ms is None else now_ms
        removed: dict[str, int] = {}
        with self._write_lock:
            for name, (config, code) in self._slots.items():
                if config.ttl_ms is None:
                    continue
                keys, ids = self._expired_keys(config, code, now - config.ttl_ms, max_rows_scanned)
                if keys:
                    removed[name] = self._lmdb.delete_rows(name, keys)
                    self._tier.forget(name, ids)
        return removed

    def _expired_keys(
        self, config: SlotConfig, code: int, cutoff_ms: int, budget: int
    ) -> tuple[list[bytes], IntIds | tuple[str, ...]]:
        prefix = slot_key_prefix(code)
        start = self._sweep_from.get(config.name, prefix)
        keys: list[bytes] = []
        last = None
        with self._lmdb.read() as txn:
            cursor = txn.cursor(db=self._lmdb.rows_db)
            scanned = 0
            if cursor.set_range(start):
                for key, value in cursor:
                    if not key.startswith(prefix) or scanned >= budget:
                        break
                    scanned += 1
                    last = key
                    if int.from_bytes(value[:8], "little", signed=True) < cutoff_ms:
                        keys.append(key)
        self._sweep_from[config.name] = (last + b"\x00") if last is not None and scanned >= budget else prefix
        if config.id_kind == "str":
            return keys, tuple(k[2:].decode("utf-8") for k in keys)
        return keys, np.asarray([int.from_bytes(k[2:], "big") for k in keys], dtype=np.uint64)

    # --- reads --------------------------------------------------------------------------------------------------

    def lookup(self, slot: str, ids: Ids | Sequence[int] | Sequence[str], *, now_ms: int | None = None) -> SlotLookup:
        return self.lookup_many({slot: ids}, now_ms=now_ms).slots[slot]

    def lookup_many(
        self, requests: Mapping[str, Ids | Sequence[int] | Sequence[str]], *, now_ms: int | None = None
    ) -> Lookup:
        """Rows of several slots from one consistent state. Unseen and expired ids read as the slot default."""
        self._lmdb.check_usable()
        normalized = {slot: self._normalize(slot, ids) for slot, ids in requests.items()}
        now = _now_ms() if now_ms is None else now_ms
        with self._lmdb.read() as txn:
            generation = self._lmdb.generation(txn)
            if (
                self.follow_inline
                and self._tier_ok
                and self._tier.generation != generation
                and self._write_lock.acquire(blocking=False)
            ):
                # Behind LMDB and nobody is writing here: another process wrote. Follow it now.
                try:
                    self._catch_up()
                finally:
                    self._write_lock.release()
            if self._tier_ok:
                for _ in range(2):
                    answer = self._lookup_via_tier(txn, generation, normalized, now)
                    if answer is not None:
                        return answer
            # No tier, or it is mid-update and not complete: answer everything from this one LMDB snapshot.
            applied = self._lmdb.applied_seqs(txn)
            return Lookup(generation, self._finish(self._read_lmdb(txn, normalized), now), "lmdb", applied)

    def _lookup_via_tier(
        self, txn: Txn, lmdb_generation: int, normalized: dict[str, IntIds | tuple[str, ...]], now: int
    ) -> Lookup | None:
        """The answer from the tier, or None when it cannot give a consistent one.

        A tier behind LMDB (a writer committed, the tier has not followed yet) still holds one whole earlier
        state: when every row is resident it answers from that state, a few milliseconds stale but consistent,
        instead of making ranking wait or read thousands of keys from LMDB. Rows that are not resident can only
        come from LMDB at the tier's own generation.
        """
        tier = self._tier
        version = tier.begin_read()
        if version is None:
            return None
        generation, applied = tier.generation, tier.applied_seq
        if generation != lmdb_generation and not self._tier_complete:
            return None
        reads = {slot: tier.read(slot, ids) for slot, ids in normalized.items()}
        if not tier.unchanged_since(version):
            return None
        missing = {slot: r.rows < 0 for slot, r in reads.items()}
        if self._tier_complete or not any(m.any() for m in missing.values()):
            return Lookup(generation, self._finish(reads, now), "ram", applied)
        for slot, miss in missing.items():
            if miss.any():
                # Not resident (past the RAM budget): read from the LMDB snapshot of the same generation.
                idx = np.flatnonzero(miss)
                ids = normalized[slot]
                sub = tuple(ids[i] for i in idx) if isinstance(ids, tuple) else ids[idx]
                got = self._read_slot_lmdb(txn, slot, sub)
                reads[slot].vectors[idx] = got.vectors
                reads[slot].updated_at_ms[idx] = got.updated_at_ms
        return Lookup(generation, self._finish(reads, now), "ram+lmdb", applied)

    def _read_lmdb(self, txn: Txn, normalized: dict[str, IntIds | tuple[str, ...]]) -> dict[str, TierRead]:
        return {slot: self._read_slot_lmdb(txn, slot, ids) for slot, ids in normalized.items()}

    def _read_slot_lmdb(self, txn: Txn, slot: str, ids: IntIds | tuple[str, ...]) -> TierRead:
        config, code = self._slots[slot]
        keys = [encode_str_key(code, s) for s in ids] if isinstance(ids, tuple) else encode_int_keys(code, ids)
        # One getmulti call for the whole batch: per-key txn.get gives up and re-takes the GIL for every key,
        # which under load costs far more than the B-tree walks themselves.
        hits = txn.cursor(db=self._lmdb.rows_db).getmulti(keys)
        if len(hits) == len(keys):  # the usual case: every id is stored
            found = np.ones(len(keys), dtype=bool)
            values = [value for _, value in hits]
        else:
            found = np.zeros(len(keys), dtype=bool)
            values = []
            j = 0
            for i, key in enumerate(keys):  # getmulti answers found keys in input order
                if j < len(hits) and hits[j][0] == key:
                    found[i] = True
                    values.append(hits[j][1])
                    j += 1
        vectors = np.zeros((len(keys), config.dim), dtype=np.float32)
        updated = np.full(len(keys), DELETED_MS, dtype=np.int64)
        if values:
            records = np.frombuffer(b"".join(values), dtype=value_dtype(config.dim, config.np_dtype))
            vectors[found] = records["v"]
            updated[found] = records["t"]
        rows = np.where(found, 0, -1).astype(np.int64)
        return TierRead(rows, vectors, updated)

    def _finish(self, reads: dict[str, TierRead], now: int) -> dict[str, SlotLookup]:
        out: dict[str, SlotLookup] = {}
        for slot, read in reads.items():
            config, _ = self._slots[slot]
            unseen = read.updated_at_ms == DELETED_MS
            if config.ttl_ms is not None:
                unseen |= read.updated_at_ms < now - config.ttl_ms
            vectors = read.vectors
            if unseen.any():
                if not vectors.flags.writeable:
                    vectors = vectors.copy()
                vectors[unseen] = config.default_vector()
                with self._stats_lock:
                    self._unseen[slot] = self._unseen.get(slot, 0) + int(unseen.sum())
            out[slot] = SlotLookup(vectors, read.updated_at_ms, unseen)
        return out

    def _normalize(self, slot: str, ids: Ids | Sequence[int] | Sequence[str]) -> IntIds | tuple[str, ...]:
        if slot not in self._slots:
            raise UnknownSlot(f"unknown slot {slot!r} (known: {sorted(self._slots)})")
        config, _ = self._slots[slot]
        if config.id_kind == "str":
            if isinstance(ids, np.ndarray) or not all(isinstance(s, str) for s in ids):
                raise IdOutOfRange(f"slot {slot!r} takes string ids")
            return tuple(ids)  # type: ignore[arg-type]
        if config.id_kind == "str_hash" and not isinstance(ids, np.ndarray) and ids and isinstance(ids[0], str):
            return np.asarray([hash_str_id(str(s)) for s in ids], dtype=np.uint64)
        if isinstance(ids, np.ndarray) and ids.dtype == np.uint64:
            return ids
        try:
            arr = np.asarray(ids)
        except (OverflowError, ValueError, TypeError) as exc:
            raise IdOutOfRange(f"slot {slot!r} takes integer ids in 0..2**64-1") from exc
        if arr.dtype.kind in "iu" and arr.ndim == 1:
            if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
                raise IdOutOfRange(f"slot {slot!r} takes integer ids in 0..2**64-1, got {int(arr.min())}")
            return arr.astype(np.uint64)
        # numpy turns a list mixing ints above 2**63 - 1 with others into float64 or object: check each exactly.
        if arr.ndim == 1 and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64 for x in ids):
            return np.asarray(ids, dtype=np.uint64)
        raise IdOutOfRange(f"slot {slot!r} takes a list of integer ids in 0..2**64-1")

    # --- introspection ------------------------------------------------------------------------------------------

    def applied_seq(self, producer: str) -> int:
        with self._lmdb.read() as txn:
            return self._lmdb.applied_seq(txn, producer)

    def served_seq(self, producer: str) -> int:
        """The producer's sequence that lookups answer from now (the RAM tier may trail LMDB by a delta or two
        while it follows; see ``lookup_many``)."""
        if self._tier_ok and self._tier_complete:
            return self._tier.applied_seq.get(producer, 0)
        return self.applied_seq(producer)

    def applied_seqs(self) -> dict[str, int]:
        with self._lmdb.read() as txn:
            return self._lmdb.applied_seqs(txn)

    def log_position(self) -> int:
        with self._lmdb.read() as txn:
            return self._lmdb.log_position(txn)

    def rows_checksum(self) -> dict[str, Any]:
        """A digest of every stored row (key and value bytes, in key order) with the sequences and log position of
        the same snapshot: two replicas that applied the same records hold equal digests. Reads every row (seconds
        per million): for convergence checks, not for a hot path."""
        digest = hashlib.blake2b(digest_size=16)
        rows = 0
        with self._lmdb.read() as txn:
            for key, value in txn.cursor(db=self._lmdb.rows_db):
                digest.update(len(key).to_bytes(4, "little") + key + len(value).to_bytes(4, "little") + value)
                rows += 1
            return {
                "rows_digest": digest.hexdigest(),
                "rows": rows,
                "applied_seq": self._lmdb.applied_seqs(txn),
                "log_position": self._lmdb.log_position(txn),
                "generation": self._lmdb.generation(txn),
            }

    def stats(self) -> StoreStats:
        with self._lmdb.read() as txn:
            return StoreStats(
                path=str(self._lmdb.path),
                generation=self._lmdb.generation(txn),
                schema_hash=self._schema_hash,
                applied_seq=self._lmdb.applied_seqs(txn),
                rows_by_slot={name: self._lmdb.row_counts(txn).get(name, 0) for name in self._slots},
                resident_rows_by_slot=self._tier.resident_by_slot(),
                ram_budget_rows=self._tier.budget_rows,
                used_bytes=self._lmdb.used_bytes(txn),
                map_size_bytes=self._lmdb.map_size_bytes,
                durability=self._lmdb.durability,
                unseen_by_slot=dict(self._unseen),
            )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _scan_slot(txn: Txn, rows_db: Any, config: SlotConfig, code: int, chunk_rows: int) -> Any:
    """Yield (ids, vectors, updated_at_ms) chunks of one slot's rows, decoded in bulk.

    Rows come off the cursor in slices (``islice``), not one Python loop step each: keys are sorted, so only a
    slice's last key needs checking against the slot's prefix, and the slice that crosses into the next slot is cut
    with a binary search.
    """
    prefix = slot_key_prefix(code)
    end = slot_key_prefix(code + 1) if code < 0xFFFF else None
    cursor = txn.cursor(db=rows_db)
    if not cursor.set_range(prefix):
        return
    records = value_dtype(config.dim, config.np_dtype)
    rows = cursor.iternext(keys=True, values=True)
    while True:
        chunk = list(itertools.islice(rows, chunk_rows))
        if not chunk:
            return
        last = chunk[-1][0]
        crossed = not last.startswith(prefix)
        if crossed:
            cut = bisect.bisect_left(chunk, (end,)) if end is not None else len(chunk)
            chunk = chunk[:cut]
        if chunk:
            keys, values = zip(*chunk, strict=True)
            yield _decode_chunk(list(keys), list(values), config, records)
        if crossed:
            return


def _decode_chunk(
    keys: list[bytes], values: list[bytes], config: SlotConfig, records: np.dtype[Any]
) -> tuple[IntIds | tuple[str, ...], Array, Array]:
    decoded = np.frombuffer(b"".join(values), dtype=records)
    ids: IntIds | tuple[str, ...]
    if config.id_kind == "str":
        ids = tuple(k[2:].decode("utf-8") for k in keys)
    else:
        ids = np.frombuffer(b"".join(keys), dtype=[("s", ">u2"), ("id", ">u8")])["id"].astype(np.uint64)
    return ids, decoded["v"].astype(config.np_dtype), decoded["t"].astype(np.int64)
