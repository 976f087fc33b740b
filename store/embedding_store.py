"""``EmbeddingStore``: the store's public face. Durable rows in LMDB, hot rows in the RAM tier, one writer.

Reads: ``lookup_many`` answers several slots from one consistent state (one delta boundary). The RAM tier answers
what is resident; rows that are not resident come from an LMDB read transaction of the same generation; when a
writer is mid-way (tier being changed, or LMDB already ahead of the tier) the whole call is answered from one LMDB
snapshot instead. Readers never wait for the writer.

Writes: ``apply`` validates a delta, commits it to LMDB in one transaction, then makes it visible in the tier. The
writer process of a server publishes a delta from its durable inbox first and writes LMDB behind it
(``liverank.store.lmdb_applier``: why, and the invariants that keep it safe).

Tier modes (``open(tier=...)``): ``local``, a RAM tier of this process's own (tests, benchmarks, one-process use);
``none``, LMDB only; ``publish``, the writer process: it builds and publishes the shared tier
(``liverank.store.shared_tier``) that ``map`` processes (serving workers) read without ever writing or following.
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

from liverank.store.errors import IdOutOfRange, SequenceGap, StoreFull, UnknownSlot
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
from liverank.store.lmdb_applier import LmdbApplier, VisibleDelta
from liverank.store.lmdb_store import DEFAULT_MAP_SIZE_BYTES, ApplyResult, Durability, LmdbStore, Txn
from liverank.store.ram_tier import DELETED_MS, RamTier, TierRead
from liverank.store.read_into import FeatureRead, IntoLookup, read_into
from liverank.store.shared_tier import SharedTierReader, SharedTierWriter, SlotChange, TierEpoch, default_dir
from liverank.store.slots import SlotConfig
from liverank.store.validation import PreparedDelta, prepare_delta

log = logging.getLogger(__name__)

DEFAULT_RAM_BUDGET_ROWS = 50_000_000
_BEHIND_WAIT_S = 5.0  # map mode: how long a lookup waits for LMDB to reach the state the tier already served
_WARM_CHUNK_ROWS = 1_000_000
Source = Literal["ram", "ram+lmdb", "lmdb"]
TierMode = Literal["local", "none", "publish", "map"]


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
    retries: int = 0  # shared tier: reads that overlapped a publish and were redone


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
        self._publisher: SharedTierWriter | None = None
        self._applier: LmdbApplier | None = None  # publish mode: writes LMDB behind the published tier
        self._publishing = False  # publish mode: the tier is built and follows every delta
        self._publish_floor = 0  # publish mode: the generation the previous writer's last head showed readers
        self._mapped: SharedTierReader | None = None
        self._floor_generation = 0  # map mode: answers never go back past what this process already served
        self.tier_fallbacks = 0  # lookups answered wholly from LMDB although a tier exists

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
        tier: TierMode | None = None,
        shared_tier_dir: str | os.PathLike[str] | None = None,
        lmdb_nice: int = 0,
    ) -> EmbeddingStore:
        """Open (or create) a store, declare ``slots``, and warm the RAM tier from LMDB up to the budget.

        ``ram_tier`` False: no RAM tier at all (same as ``tier="none"``). ``tier``: see the module docstring;
        ``shared_tier_dir``: where the shared tier lives (``publish`` and ``map``; default under /dev/shm).
        ``lmdb_nice``: ``publish`` mode, the nice value of the thread that writes published deltas into LMDB.

        ``publish`` mode publishes at once, unless the tier directory still shows readers a state LMDB does not
        hold yet (a writer that published deltas ahead of LMDB was killed): then nothing is published until LMDB
        has caught up from the inbox (``start_publishing``), so that no reader sees a delta go away.
        """
        mode: TierMode = tier if tier is not None else ("local" if ram_tier else "none")
        shared_dir = shared_tier_dir if shared_tier_dir is not None else default_dir(path)
        lmdb_store = LmdbStore(path, map_size_bytes=map_size_bytes, durability=durability, reserve_bytes=reserve_bytes)
        try:
            store = cls(lmdb_store, ram_budget_rows)
            if slots:
                store.declare_slots(slots)
            if mode == "local":
                store._warm()
            else:
                store._tier_ok = False
            if mode == "publish":
                store._publisher = SharedTierWriter(shared_dir, ram_budget_rows)
                store._applier = LmdbApplier(lmdb_store, nice=lmdb_nice)
                store._publish_floor = _published_generation(shared_dir)
                store.start_publishing(source_drained=False)
            elif mode == "map":
                store._mapped = SharedTierReader(shared_dir)
        except BaseException:
            lmdb_store.close()
            raise
        return store

    # --- lifecycle and configuration ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._applier is not None:
            self._applier.stop()  # what it could not write in time stays in the inbox
        if self._mapped is not None:
            self._mapped.close()
        if self._publisher is not None:
            self._publisher.close()
        self._lmdb.close()

    @property
    def publishing(self) -> bool:
        """``publish`` mode: the shared tier is built and follows every delta."""
        return self._publishing

    @property
    def applier(self) -> LmdbApplier | None:
        """``publish`` mode: what writes published deltas into LMDB."""
        return self._applier

    def start_publishing(self, *, source_drained: bool) -> bool:
        """``publish`` mode: build the shared tier from LMDB and publish it, once LMDB holds at least the state the
        tier directory shows readers now (or the delta source has nothing left to apply: that state is then not
        one this store's inbox can rebuild, e.g. a tier left by another store). True once publishing."""
        if self._publisher is None or self._publishing:
            return self._publishing
        with self._write_lock:
            with self._lmdb.read() as txn:
                generation = self._lmdb.generation(txn)
            if generation < self._publish_floor:
                if not source_drained:
                    log.info(
                        "readers see generation %s, LMDB holds %s: the shared tier is published once the inbox has "
                        "caught LMDB up",
                        self._publish_floor,
                        generation,
                    )
                    return False
                log.warning(
                    "the shared tier showed generation %s, but LMDB and its inbox reach only %s; publishing LMDB's "
                    "state",
                    self._publish_floor,
                    generation,
                )
            self._publish_whole()
            self._publishing = True
            return True

    @property
    def shared_tier(self) -> SharedTierReader | None:
        """The shared tier this process reads (``map`` mode), or None."""
        return self._mapped

    @property
    def publisher(self) -> SharedTierWriter | None:
        """The shared tier this process publishes (``publish`` mode), or None."""
        return self._publisher

    def refresh_config(self) -> None:
        """Re-read slots and the bound schema from LMDB (another process, e.g. a worker installing a bundle,
        may have changed them)."""
        with self._lmdb.read() as txn:
            self._slots = self._lmdb.slot_table(txn)
            self._schema_hash = self._lmdb.schema_hash(txn)

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

    def _publish_whole(self) -> None:
        """Build the shared tier from one LMDB snapshot and publish it (writer start-up, or recovery)."""
        assert self._publisher is not None
        if self._applier is not None:
            self._applier.wait_idle()  # LMDB first holds every published delta (invariant 3)
        started = time.perf_counter()
        with self._lmdb.read() as txn:
            self._slots = self._lmdb.slot_table(txn)
            counts = self._lmdb.row_counts(txn)
            epoch = TierEpoch(self._lmdb.generation(txn), self._lmdb.applied_seqs(txn), {}, {})
            chunks = (
                (name, ids, vectors, updated)
                for name, (config, code) in self._slots.items()
                if config.id_kind != "str" and counts.get(name, 0)
                for ids, vectors, updated in _scan_slot(txn, self._lmdb.rows_db, config, code, _WARM_CHUNK_ROWS)
            )
            self._publisher.build(self.slots, counts, chunks, epoch)
        log.info(
            "shared tier built: %s rows in %.1f s (generation %s)",
            self._publisher.resident_rows(),
            time.perf_counter() - started,
            epoch.generation,
        )

    def _publish(self, prepared: PreparedDelta, generation: int) -> None:
        publisher = self._publisher
        assert publisher is not None
        if publisher.epoch.generation != generation - 1:
            self._publish_whole()  # behind (another writer's deltas): rebuild from LMDB, which has this one too
            return
        applied = {**publisher.epoch.applied_seq, prepared.delta.producer: prepared.delta.seq}
        try:
            publisher.publish(self._tier_changes(prepared), generation, applied)
        except Exception:
            # Readers still serve the last whole state (nothing was flipped); start again from LMDB.
            log.exception("shared tier publish failed; rebuilding it from LMDB")
            self._publish_whole()

    @staticmethod
    def _tier_changes(prepared: PreparedDelta) -> list[SlotChange]:
        return [
            SlotChange(
                slot.config,
                slot.int_ids if slot.int_ids is not None else np.empty(0, np.uint64),
                slot.vectors,
                slot.updated_at_ms,
                slot.tombstone_int_ids if slot.tombstone_int_ids is not None else np.empty(0, np.uint64),
            )
            for slot in prepared.slots
            if slot.config.id_kind != "str"
        ]

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
            if self._publisher is not None:
                self.refresh_config()  # workers declare slots and bind schemas when bundles go live
            first = inbox_key is not None and log_position is None and self._can_publish_first()
            prepared = prepare_delta(delta, self._slots, self._schema_hash, for_lmdb=not first)
            binary = payload if payload is not None else encode_delta(delta)
            if first:
                assert inbox_key is not None
                return self._publish_first(prepared, binary, inbox_key, received_at_ms)
            if self._applier is not None:
                self._applier.wait_idle()  # invariant 3
            result = self._lmdb.apply(prepared, binary, inbox_key, received_at_ms, log_position)
            if result.status == "applied" and self._publishing:
                self._publish(prepared, result.generation)
            elif result.status == "applied" and self._tier_ok:
                if self._tier.generation == result.generation - 1:
                    self._apply_to_tier(prepared, result.generation)
                else:  # another process wrote in between: replay its deltas (and ours) from the changelog
                    self._catch_up()
            return result

    def _can_publish_first(self) -> bool:
        """A delta can be published before LMDB has it when readers never need LMDB at the tier's generation: every
        slot is held complete in the tier (no string ids, nothing past the RAM budget)."""
        if not self._publishing or self._applier is None or not self._applier.alive:
            return False
        assert self._publisher is not None
        complete = self._publisher.epoch.complete
        return all(complete.get(name, False) for name in self._slots)

    def _publish_first(
        self, prepared: PreparedDelta, binary: bytes, inbox_key: bytes, received_at_ms: int
    ) -> ApplyResult:
        """Publish a delta from the inbox, then queue it for LMDB (``liverank.store.lmdb_applier``). Checked
        against the published state, which is LMDB's plus the queued deltas."""
        publisher, applier = self._publisher, self._applier
        assert publisher is not None
        assert applier is not None
        delta = prepared.delta
        epoch = publisher.epoch
        published_seq = epoch.applied_seq.get(delta.producer, 0)
        if delta.seq <= published_seq:  # LMDB retires its inbox entry in order, as a duplicate
            applier.submit(VisibleDelta(prepared, binary, inbox_key, received_at_ms, 0))
            return ApplyResult("duplicate", delta.producer, delta.seq, epoch.generation)
        if delta.seq != published_seq + 1:
            raise SequenceGap(delta.producer, published_seq + 1, delta.seq)
        try:
            self._lmdb.check_room(prepared.n_rows > 0)
        except StoreFull:
            applier.wait_idle()  # published tombstones may free room once LMDB holds them
            self._lmdb.check_room(prepared.n_rows > 0)
        generation = epoch.generation + 1
        item = VisibleDelta(prepared, binary, inbox_key, received_at_ms, generation)
        try:
            publisher.publish(
                self._tier_changes(prepared), generation, {**epoch.applied_seq, delta.producer: delta.seq}
            )
        except Exception:
            # Readers still serve the last whole state (nothing was flipped): LMDB first, then rebuild from it.
            log.exception("shared tier publish failed; rebuilding it from LMDB")
            applier.submit(item)
            self._publish_whole()
        else:
            applier.submit(item)
        written = sum(len(slot.vectors) for slot in prepared.slots)
        deleted = sum(0 if slot.tombstone_int_ids is None else len(slot.tombstone_int_ids) for slot in prepared.slots)
        return ApplyResult("applied", delta.producer, delta.seq, generation, written, deleted)

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
                if self._applier is not None:
                    self._applier.wait_idle()  # the sweep reads LMDB's times: every published refresh first
                keys, ids = self._expired_keys(config, code, now - config.ttl_ms, max_rows_scanned)
                if keys:
                    removed[name] = self._lmdb.delete_rows(name, keys)
                    self._tier.forget(name, ids)
                    if self._publishing and self._publisher is not None and not isinstance(ids, tuple):
                        self._publisher.forget(name, ids)
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
        if self._mapped is not None:
            shared = self._lookup_mapped(normalized, now)
            if shared is not None:
                return shared
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
            self._floor_generation = max(self._floor_generation, generation)
            return Lookup(generation, self._finish(self._read_lmdb(txn, normalized), now), "lmdb", applied)

    def lookup_into(self, features: Sequence[FeatureRead], *, now_ms: int) -> IntoLookup | None:
        """The request's features read from the shared tier straight into their input buffers, in one compiled
        pass (``liverank.store.read_into``), with what ``lookup_many`` would have answered; None when only
        ``lookup_many`` can answer (no shared tier here, a string-id slot, rows outside the tier...)."""
        if self._mapped is None:
            return None
        self._lmdb.check_usable()
        got = read_into(self._mapped, self._slots, features, now_ms)
        if got is None or got.generation < self._floor_generation:
            return None
        self._floor_generation = got.generation  # not below it (checked above); a lost race only lowers it a step
        for slot, n in got.unseen_by_slot.items():
            self._count_unseen(slot, n)
        return got

    def _count_unseen(self, slot: str, n: int) -> None:
        """Unseen ids answered (the slot's default), for ``/admin/status``: by both read paths."""
        if n:
            with self._stats_lock:
                self._unseen[slot] = self._unseen.get(slot, 0) + n

    def _lookup_mapped(self, normalized: dict[str, IntIds | tuple[str, ...]], now: int) -> Lookup | None:
        """Map mode: the shared tier's answer, or None when LMDB must answer whole. The tier can be ahead of LMDB
        (the writer publishes deltas from its inbox first): then LMDB's answer would go back past what this process
        already served, so the tier is asked again until LMDB catches up (bounded: LMDB answers after that)."""
        deadline = time.monotonic() + _BEHIND_WAIT_S
        while True:
            shared = self._lookup_shared(normalized, now)
            if shared is not None:
                self._floor_generation = max(self._floor_generation, shared.generation)
                return shared
            self.tier_fallbacks += 1
            with self._lmdb.read() as txn:
                if self._lmdb.generation(txn) >= self._floor_generation or time.monotonic() >= deadline:
                    return None
            time.sleep(0.001)

    def _lookup_shared(self, normalized: dict[str, IntIds | tuple[str, ...]], now: int) -> Lookup | None:
        """The answer from the shared tier (plus LMDB at the same generation for rows it does not hold), or None
        when it cannot give one: nothing published yet, too many publishes overlapped, LMDB moved on while rows
        outside the tier are needed, or the tier is behind an answer this process already gave."""
        assert self._mapped is not None
        int_ids = {slot: ids for slot, ids in normalized.items() if not isinstance(ids, tuple)}
        got = self._mapped.read(int_ids)
        if got is None or got.epoch.generation < self._floor_generation:
            return None
        epoch = got.epoch
        reads = dict(got.reads)
        need = [
            slot
            for slot in normalized
            if slot not in reads or (not epoch.complete.get(slot, False) and bool((reads[slot].rows < 0).any()))
        ]
        if not need:
            return Lookup(epoch.generation, self._finish(reads, now), "ram", epoch.applied_seq, got.retries)
        with self._lmdb.read() as txn:
            if self._lmdb.generation(txn) != epoch.generation:
                return None
            for slot in need:
                ids = normalized[slot]
                if slot not in reads:
                    reads[slot] = self._read_slot_lmdb(txn, slot, ids)
                    continue
                idx = np.flatnonzero(reads[slot].rows < 0)
                sub = tuple(ids[i] for i in idx) if isinstance(ids, tuple) else ids[idx]
                got_rows = self._read_slot_lmdb(txn, slot, sub)
                reads[slot].vectors[idx] = got_rows.vectors
                reads[slot].updated_at_ms[idx] = got_rows.updated_at_ms
        return Lookup(epoch.generation, self._finish(reads, now), "ram+lmdb", epoch.applied_seq, got.retries)

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
                self._count_unseen(slot, int(unseen.sum()))
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
        if self._mapped is not None:
            epoch = self._mapped.epoch()
            return 0 if epoch is None else epoch.applied_seq.get(producer, 0)
        if self._tier_ok and self._tier_complete:
            return self._tier.applied_seq.get(producer, 0)
        return self.applied_seq(producer)

    def served_epoch(self) -> tuple[int, dict[str, int]]:
        """(generation, sequence per producer) that lookups answer from now."""
        if self._mapped is not None:
            epoch = self._mapped.epoch()
            if epoch is not None:
                return epoch.generation, dict(epoch.applied_seq)
        elif self._tier_ok and self._tier_complete:
            return self._tier.generation, dict(self._tier.applied_seq)
        with self._lmdb.read() as txn:
            return self._lmdb.generation(txn), self._lmdb.applied_seqs(txn)

    def applied_seqs(self) -> dict[str, int]:
        with self._lmdb.read() as txn:
            return self._lmdb.applied_seqs(txn)

    def _resident_by_slot(self) -> dict[str, int]:
        if self._mapped is not None:
            epoch = self._mapped.epoch()
            return {} if epoch is None else dict(epoch.resident)
        if self._publisher is not None:
            return dict(self._publisher.epoch.resident)
        return self._tier.resident_by_slot()

    def log_position(self) -> int:
        with self._lmdb.read() as txn:
            return self._lmdb.log_position(txn)

    def rows_checksum(self) -> dict[str, Any]:
        """A digest of every stored row (key and value bytes, in key order) with the sequences and log position of
        the same snapshot: two replicas that applied the same records hold equal digests. Reads every row (seconds
        per million): for convergence checks, not for a hot path. In map mode, once LMDB holds the state this
        process serves (the writer writes LMDB behind the tier it publishes)."""
        self.wait_durable(_BEHIND_WAIT_S * 6)
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

    def wait_durable(self, timeout_s: float) -> bool:
        """Map mode: until LMDB holds the state this process serves (the writer writes LMDB behind the tier it
        publishes); True at once elsewhere. False if the timeout passed first."""
        if self._mapped is None:
            return True
        generation = self.served_epoch()[0]
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lmdb.read() as txn:
                if self._lmdb.generation(txn) >= generation:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def stats(self) -> StoreStats:
        with self._lmdb.read() as txn:
            return StoreStats(
                path=str(self._lmdb.path),
                generation=self._lmdb.generation(txn),
                schema_hash=self._schema_hash,
                applied_seq=self._lmdb.applied_seqs(txn),
                rows_by_slot={name: self._lmdb.row_counts(txn).get(name, 0) for name in self._slots},
                resident_rows_by_slot=self._resident_by_slot(),
                ram_budget_rows=self._tier.budget_rows,
                used_bytes=self._lmdb.used_bytes(txn),
                map_size_bytes=self._lmdb.map_size_bytes,
                durability=self._lmdb.durability,
                unseen_by_slot=dict(self._unseen),
            )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _published_generation(directory: str | os.PathLike[str]) -> int:
    """The generation a shared tier directory shows readers now (0: none)."""
    reader = SharedTierReader(directory)
    try:
        epoch = reader.epoch()
    except (OSError, ValueError):  # a head half gone or unreadable: nothing a reader can be served from either
        return 0
    finally:
        reader.close()
    return 0 if epoch is None else epoch.generation


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
