"""The shared RAM tier: one copy of the hot rows for every serving worker, built and published by the writer.

Files (in one directory, ``/dev/shm/liverank-<store>`` by default): ``control`` names the live segment; a segment
``seg-<id>`` holds a header (publish counter, slot layout), two epoch records, and per slot a hash index with one
keys array and two row-number copies, over one row arena. The writer process maps them read-write; workers map
them read-only (numpy views over ``mmap``, probed and gathered by the compiled kernel).

Invariants (tests/store/test_shared_tier.py checks them across processes):

1. The publish counter ``G`` (one aligned u64) names the active index copy: ``G & 1``. Readers use only the
   active copy and the epoch record of the same number. The writer writes only the *inactive* copy, its epoch
   record, and arena rows that the active copy does not reference ("free" rows). A publish is one store:
   ``G += 1``. So a writer stopped at any instant (SIGKILL included) leaves the active copy, its epoch and every row
   it references untouched: readers go on serving that whole state; there is no "stuck odd" state.
2. A read is valid iff ``G`` is the same before and after it (seqlock). A reader that overlapped a publish retries
   (microseconds: a flip is one store, so only reads that straddle it retry); after ``MAX_TRIES`` it gives up and
   the caller answers from LMDB (counted: a fallback). The epoch (LMDB generation, applied sequence per producer,
   which slots are complete) is read inside the same section, so an answer's epoch names exactly what it read.
3. Copy-on-write rows: an updated id gets a fresh arena row; its old row is freed only when the *next* publish has
   repointed the other copy (rows freed by publish P are reused from publish P+1 on). A reader still on the old
   copy after P sees ``G`` change and retries, so it never trusts a row that is being reused.
4. After the flip the inactive copy lags one publish: the next publish first replays the previous one's index
   changes into it, then applies its own. Index entries are never removed (a deleted id points at row 0), and both
   copies receive the same inserts in the same order, so they have the same occupied places: the copies share one
   keys array. A new id's key is written at a place that is empty (row -1) in the active copy, where its readers
   stop without looking at the key.
5. Growth (arena or index full, a new slot): the writer builds a bigger segment beside the live one, then writes
   its id into ``control``. A segment is never written again once another is live; readers re-map when the id
   changes (the old file is unlinked, its memory freed when the last reader drops its map).
6. A restarted writer never trusts the previous writer's bookkeeping (its free lists lived in its own memory): it
   builds a fresh segment from LMDB and publishes it; until then readers serve the previous segment's whole state.
7. Deleted and expired ids point at row 0, which always reads as unseen (zeros, time ``DELETED_MS``).

Memory order: the writer's stores (rows, index, epoch, then ``G``) and a reader's loads (``G``, data, ``G``) keep
program order on x86-64 (TSO), which this relies on; a weakly ordered CPU would need fences around ``G``.

String-id slots (``id_kind="str"``) are not held here: their ids have no fixed width; they read from LMDB.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from liverank.store.format import Array, IntIds
from liverank.store.hash_index import Rows, capacity_for, mix64, probe_numpy
from liverank.store.hash_index import _kernel as kernel
from liverank.store.ram_tier import DELETED_MS, TierRead
from liverank.store.slots import SlotConfig

log = logging.getLogger(__name__)

MAGIC = b"LRTIER01"
CONTROL_BYTES = 64
HEADER_BYTES = 64 * 1024  # magic, G, layout JSON
EPOCH_BYTES = 64 * 1024  # per copy: u32 length + JSON
MAX_TRIES = 64
RESERVED_ROW = 0
_ALIGN = 64
_G_OFFSET = 8
_LAYOUT_OFFSET = 16
# Test-only seam: the writer pauses forever right before the flip of this generation (after writing the inactive
# copy), having created ``stalled-<generation>`` in the tier directory, so a test can SIGKILL it mid-publish.
STALL_ENV = "LIVERANK_TIER_TEST_STALL_AT_GENERATION"


@dataclass(frozen=True)
class TierEpoch:
    """What one published state is: LMDB ``generation``, per-producer sequences, complete slots."""

    generation: int
    applied_seq: dict[str, int]
    complete: dict[str, bool]  # every LMDB row of the slot is here: a miss is an unseen id
    resident: dict[str, int]
    published_at_ns: int = 0


@dataclass(frozen=True)
class SharedRead:
    epoch: TierEpoch
    reads: dict[str, TierRead]
    retries: int


def default_dir(store_path: str | os.PathLike[str]) -> Path:
    """/dev/shm/liverank-<hash of the store's absolute path>: one shared tier per store."""
    digest = hashlib.sha1(str(Path(store_path).resolve()).encode()).hexdigest()[:12]
    return Path("/dev/shm") / f"liverank-{digest}"


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _segment_path(directory: Path, segment_id: int) -> Path:
    return directory / f"seg-{segment_id}"


@dataclass
class _SlotArrays:
    config: SlotConfig
    keys: tuple[IntIds, IntIds]
    rows: tuple[Rows, Rows]
    vectors: Array
    updated: Array

    @property
    def capacity(self) -> int:
        return len(self.keys[0])


class _Segment:
    """One mapped segment file: numpy views over its header, epoch records and slot arrays."""

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = path
        with open(path, "r+b" if writable else "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        buf = memoryview(self._map)
        if bytes(buf[:8]) != MAGIC:
            raise ValueError(f"{path} is not a liverank tier segment")
        self.counter = np.frombuffer(buf, dtype=np.uint64, count=1, offset=_G_OFFSET)
        (length,) = np.frombuffer(buf, dtype=np.uint32, count=1, offset=_LAYOUT_OFFSET)
        layout = orjson.loads(bytes(buf[_LAYOUT_OFFSET + 4 : _LAYOUT_OFFSET + 4 + int(length)]))
        self.epoch_areas = [buf[HEADER_BYTES + i * EPOCH_BYTES : HEADER_BYTES + (i + 1) * EPOCH_BYTES] for i in (0, 1)]
        self.slots: dict[str, _SlotArrays] = {}
        for entry in layout["slots"]:
            config = SlotConfig.from_json(entry["config"])
            cap, arena = int(entry["capacity"]), int(entry["arena_rows"])
            off = entry["offsets"]

            def view(name: str, dtype: Any, count: int, off: dict[str, int] = off) -> Array:
                return np.frombuffer(buf, dtype=dtype, count=count, offset=off[name])

            vectors = view("vectors", config.np_dtype, arena * config.dim).reshape(arena, config.dim)
            keys = view("keys", np.uint64, cap)
            self.slots[config.name] = _SlotArrays(
                config,
                (keys, keys),  # shared by both copies (invariant 4)
                (view("rows0", np.int64, cap), view("rows1", np.int64, cap)),
                vectors,
                view("updated", np.int64, arena),
            )
        self._epochs: dict[int, TierEpoch] = {}

    @classmethod
    def create(cls, path: Path, slots: Mapping[str, tuple[SlotConfig, int, int]]) -> _Segment:
        """A new segment file: ``slots`` maps name -> (config, index capacity, arena rows). Both copies empty."""
        offset = HEADER_BYTES + 2 * EPOCH_BYTES
        entries = []
        for config, cap, arena in slots.values():
            offsets = {}
            for name, size in (
                ("keys", cap * 8),
                ("rows0", cap * 8),
                ("rows1", cap * 8),
                ("vectors", arena * config.row_bytes),
                ("updated", arena * 8),
            ):
                offsets[name] = offset
                offset = _align(offset + size)
            entries.append({"config": config.to_json(), "capacity": cap, "arena_rows": arena, "offsets": offsets})
        layout = orjson.dumps({"slots": entries})
        if _LAYOUT_OFFSET + 4 + len(layout) > HEADER_BYTES:
            raise ValueError("too many slots for the shared tier's header")
        tmp = path.with_name(path.name + ".building")
        with open(tmp, "wb") as f:
            f.truncate(offset)  # sparse: pages are allocated as they are written
            f.write(MAGIC)
            f.seek(_LAYOUT_OFFSET)
            f.write(np.uint32(len(layout)).tobytes() + layout)
        segment = cls(tmp, writable=True)
        for arrays in segment.slots.values():
            for rows in arrays.rows:
                rows[:] = -1
            arrays.updated[RESERVED_ROW] = DELETED_MS
        os.rename(tmp, path)
        segment.path = path
        return segment

    @property
    def g(self) -> int:
        return int(self.counter[0])

    def epoch(self, copy: int, g: int) -> TierEpoch | None:
        """The epoch record of ``copy`` (parsed once per publish). Valid only if ``G`` is still ``g`` afterwards."""
        cached = self._epochs.get(g)
        if cached is not None:
            return cached
        area = self.epoch_areas[copy]
        (length,) = np.frombuffer(area, dtype=np.uint32, count=1)
        if not 0 < length <= EPOCH_BYTES - 4:
            return None
        raw = bytes(area[4 : 4 + int(length)])
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None  # torn by a publish under us; the G check discards this read anyway
        return TierEpoch(
            int(data["generation"]),
            data["applied_seq"],
            data["complete"],
            data["resident"],
            int(data.get("published_at_ns", 0)),
        )

    def remember(self, g: int, epoch: TierEpoch) -> None:
        if len(self._epochs) > 8:
            self._epochs.clear()
        self._epochs[g] = epoch

    def write_epoch(self, copy: int, epoch: TierEpoch) -> None:
        raw = orjson.dumps(
            {
                "generation": epoch.generation,
                "applied_seq": epoch.applied_seq,
                "complete": epoch.complete,
                "resident": epoch.resident,
                "published_at_ns": epoch.published_at_ns,
            }
        )
        if len(raw) > EPOCH_BYTES - 4:
            raise ValueError("epoch record too large for the shared tier (too many producers)")
        area = self.epoch_areas[copy]
        area[4 : 4 + len(raw)] = raw
        area[:4] = np.uint32(len(raw)).tobytes()


def read_control(directory: Path) -> int:
    try:
        with open(directory / "control", "rb") as f:
            raw = f.read(16)
    except FileNotFoundError:
        return 0
    return int.from_bytes(raw[8:16], "little") if raw[:8] == MAGIC else 0


def _write_control(directory: Path, segment_id: int) -> None:
    """Point readers at a segment: written to a temporary file and renamed (one atomic step)."""
    tmp = directory / "control.tmp"
    tmp.write_bytes(MAGIC + segment_id.to_bytes(8, "little") + bytes(CONTROL_BYTES - 16))
    os.rename(tmp, directory / "control")


def _gather(arrays: _SlotArrays, copy: int, ids: IntIds) -> TierRead:
    keys, rows = arrays.keys[copy], arrays.rows[copy]
    n = len(ids)
    if kernel is not None:
        out_vectors = np.empty((n, arrays.config.dim), dtype=arrays.vectors.dtype)
        out_updated = np.empty(n, dtype=np.int64)
        out_rows = np.empty(n, dtype=np.int64)
        kernel.gather(
            keys, rows, ids, arrays.vectors, arrays.updated, arrays.config.row_bytes, out_vectors, out_updated, out_rows
        )
    else:  # pragma: no cover - the kernel is built by every install
        out_rows = probe_numpy(keys, rows, ids)
        out_rows[out_rows >= len(arrays.updated)] = -1
        safe = np.clip(out_rows, 0, None)
        out_vectors = arrays.vectors[safe]
        out_updated = arrays.updated[safe].copy()
        out_updated[out_rows < 0] = DELETED_MS
    return TierRead(out_rows, out_vectors.astype(np.float32, copy=False), out_updated)


class SharedTierReader:
    """A worker's read-only view of the shared tier. Lock-free; safe to use from many threads."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._segment: _Segment | None = None
        self._segment_id = 0
        self.retries = 0
        self.gave_up = 0

    def _current(self) -> _Segment | None:
        segment_id = read_control(self.directory)
        segment = self._segment
        if segment_id == 0:
            return None
        if segment is None or segment_id != self._segment_id:
            try:
                segment = _Segment(_segment_path(self.directory, segment_id), writable=False)
            except (FileNotFoundError, ValueError):
                return self._segment  # replaced again meanwhile: the one we have is still a whole state
            # The previous map is dropped, not closed: a thread may still read it (and will retry on its G check
            # only if that segment was written, which it no longer is: its state is whole).
            self._segment, self._segment_id = segment, segment_id
        return segment

    def epoch(self) -> TierEpoch | None:
        """The state readers are served now (None before the writer published anything)."""
        got = self.read({})
        return None if got is None else got.epoch

    def read(self, ids_by_slot: Mapping[str, IntIds]) -> SharedRead | None:
        """Rows of several slots from one published state, or None (no tier yet, or too many publishes overlapped
        this read: the caller answers from LMDB)."""
        segment = self._current()
        if segment is None:
            return None
        for attempt in range(MAX_TRIES):
            g = segment.g
            copy = g & 1
            epoch = segment.epoch(copy, g)
            reads = {}
            if epoch is not None:
                for slot, ids in ids_by_slot.items():
                    arrays = segment.slots.get(slot)
                    if arrays is not None:
                        reads[slot] = _gather(arrays, copy, np.ascontiguousarray(ids, dtype=np.uint64))
            if segment.g == g and epoch is not None:
                segment.remember(g, epoch)
                if attempt:
                    self.retries += attempt
                return SharedRead(epoch, reads, attempt)
            if attempt and attempt % 8 == 0:
                segment = self._current() or segment
        self.retries += MAX_TRIES
        self.gave_up += 1
        return None

    def close(self) -> None:
        self._segment = None


@dataclass
class _SlotBook:
    """The writer's private bookkeeping for one slot (never shared: a restarted writer rebuilds instead)."""

    free: list[Rows] = field(default_factory=list)  # stacks of free arena rows
    freed_last: Rows = field(default_factory=lambda: np.empty(0, np.int64))  # reusable after the next publish
    pending_ids: IntIds = field(default_factory=lambda: np.empty(0, np.uint64))  # to replay into the lagging copy
    pending_rows: Rows = field(default_factory=lambda: np.empty(0, np.int64))
    entries: int = 0  # index entries (both copies, once caught up)
    resident: int = 0  # entries pointing at a real row (not RESERVED_ROW)
    complete: bool = True

    def n_free(self) -> int:
        return sum(len(f) for f in self.free) + len(self.freed_last)

    def take(self, n: int) -> Rows:
        out = []
        while n:
            top = self.free[-1]
            got = top[-n:]
            self.free[-1] = top[: len(top) - len(got)]
            if not len(self.free[-1]):
                self.free.pop()
            out.append(got)
            n -= len(got)
        return np.concatenate(out) if out else np.empty(0, np.int64)


def _insert(keys: IntIds, rows: Rows, ids: IntIds, new_rows: Rows) -> int:
    ids = np.ascontiguousarray(ids, dtype=np.uint64)
    new_rows = np.ascontiguousarray(new_rows, dtype=np.int64)
    if kernel is not None:
        return int(kernel.insert(keys, rows, ids, new_rows))
    added = 0  # pragma: no cover - reference path
    mask = len(keys) - 1
    for key, row in zip(ids.tolist(), new_rows.tolist(), strict=True):
        at = int(mix64(np.asarray([key], dtype=np.uint64))[0]) & mask
        while rows[at] >= 0 and int(keys[at]) != key:
            at = (at + 1) & mask
        added += int(rows[at] < 0)
        keys[at], rows[at] = key, row
    return added


def _probe(keys: IntIds, rows: Rows, ids: IntIds) -> Rows:
    ids = np.ascontiguousarray(ids, dtype=np.uint64)
    if kernel is None:  # pragma: no cover
        return probe_numpy(keys, rows, ids)
    out = np.empty(len(ids), dtype=np.int64)
    kernel.probe(keys, rows, ids, out)
    return out


@dataclass(frozen=True)
class SlotChange:
    """One slot's part of a publish: rows to write (``ids`` with values) and ids to delete."""

    config: SlotConfig
    ids: IntIds
    vectors: Array
    updated_at_ms: Array
    deleted: IntIds


class SharedTierWriter:
    """The writer process's side: builds segments, publishes deltas copy-on-write, one flip each."""

    def __init__(self, directory: str | os.PathLike[str], budget_rows: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget_rows = budget_rows
        self._segment: _Segment | None = None
        self._segment_id = read_control(self.directory)
        self._books: dict[str, _SlotBook] = {}
        self._epoch = TierEpoch(0, {}, {}, {})
        stall = os.environ.get(STALL_ENV)
        self._stall_at = int(stall) if stall else None
        self.last_publish_window_s = 0.0

    # --- building ---------------------------------------------------------------------------------------------

    def build(
        self,
        slots: Mapping[str, SlotConfig],
        counts: Mapping[str, int],
        chunks: Iterable[tuple[str, IntIds, Array, Array]],
        epoch: TierEpoch,
    ) -> None:
        """A fresh segment from ``chunks`` (slot, ids, vectors, times), sized for ``counts`` rows per slot plus
        headroom, published whole. The budget caps resident rows; a slot past it is incomplete."""
        room = self.budget_rows
        sizes: dict[str, tuple[SlotConfig, int, int]] = {}
        wanted: dict[str, int] = {}
        for name, config in slots.items():
            if config.id_kind == "str":
                continue
            take = min(counts.get(name, 0), max(room, 0))
            room -= take
            wanted[name] = take
            sizes[name] = (config, capacity_for(take + max(1024, take // 4)), 1 + take + max(1024, take // 4))
        segment, books = self._new_segment(sizes)
        complete = {name: name in sizes for name in slots}
        for name, ids, vectors, updated in chunks:
            book = books.get(name)
            if book is None:
                continue
            left = wanted[name] - book.resident
            if left < len(ids):
                complete[name] = False
            if left <= 0:
                continue
            self._load(segment.slots[name], book, ids[:left], vectors[:left], updated[:left])
        for name, book in books.items():
            book.complete = complete[name] and wanted[name] >= counts.get(name, 0)
        self._install(segment, books, epoch)

    def _new_segment(self, sizes: Mapping[str, tuple[SlotConfig, int, int]]) -> tuple[_Segment, dict[str, _SlotBook]]:
        self._segment_id = max(self._segment_id, read_control(self.directory)) + 1
        segment = _Segment.create(_segment_path(self.directory, self._segment_id), sizes)
        books = {}
        for name, (_, _, arena) in sizes.items():
            books[name] = _SlotBook(free=[np.arange(arena - 1, RESERVED_ROW, -1, dtype=np.int64)])
        return segment, books

    def _load(self, arrays: _SlotArrays, book: _SlotBook, ids: IntIds, vectors: Array, updated: Array) -> None:
        """Rows into a segment no reader sees yet: both copies at once."""
        rows = book.take(len(ids))
        arrays.vectors[rows] = vectors
        arrays.updated[rows] = updated
        for copy in (0, 1):
            added = _insert(arrays.keys[copy], arrays.rows[copy], ids, rows)
        book.entries += added
        book.resident += len(ids)

    def _install(self, segment: _Segment, books: dict[str, _SlotBook], epoch: TierEpoch) -> None:
        """Publish a whole new segment: its epoch in both records, then its id in ``control``."""
        full = self._with_books(epoch, books)
        segment.write_epoch(0, full)
        segment.write_epoch(1, full)
        old = self._segment
        self._segment, self._books, self._epoch = segment, books, full
        _write_control(self.directory, self._segment_id)
        for path in self.directory.glob("seg-*"):
            if path != segment.path and not path.name.endswith(".building"):
                path.unlink(missing_ok=True)
        del old
        log.info("shared tier segment %s live: %s rows", self._segment_id, sum(b.resident for b in books.values()))

    def _with_books(self, epoch: TierEpoch, books: Mapping[str, _SlotBook]) -> TierEpoch:
        complete = dict.fromkeys(epoch.complete, False)
        complete.update({name: book.complete for name, book in books.items()})
        return TierEpoch(
            epoch.generation,
            dict(epoch.applied_seq),
            complete,
            {name: book.resident for name, book in books.items()},
            time.time_ns(),
        )

    @property
    def epoch(self) -> TierEpoch:
        return self._epoch

    @property
    def slots(self) -> dict[str, SlotConfig]:
        return {} if self._segment is None else {n: a.config for n, a in self._segment.slots.items()}

    def resident_rows(self) -> int:
        return sum(book.resident for book in self._books.values())

    # --- publishing ---------------------------------------------------------------------------------------------

    def publish(self, changes: list[SlotChange], generation: int, applied_seq: Mapping[str, int]) -> None:
        """Make ``changes`` visible as one state (``generation``), copy-on-write, with one flip of ``G``."""
        segment = self._segment
        assert segment is not None, "build() first"
        if not self._fits(segment, changes):
            segment = self._grown(changes)
        g = segment.g
        active, inactive = g & 1, (g + 1) & 1
        # Invariant 4: bring the lagging copy up to the active state; rows freed by the previous publish are now
        # unreferenced by both copies.
        for name, book in self._books.items():
            arrays = segment.slots[name]
            if len(book.pending_ids):
                _insert(arrays.keys[inactive], arrays.rows[inactive], book.pending_ids, book.pending_rows)
            if len(book.freed_last):
                book.free.append(book.freed_last)
            book.freed_last = np.empty(0, np.int64)
            book.pending_ids, book.pending_rows = np.empty(0, np.uint64), np.empty(0, np.int64)
        started = time.perf_counter()
        for change in changes:
            self._write_change(segment, change, active, inactive)
        epoch = self._with_books(TierEpoch(generation, dict(applied_seq), self._epoch.complete, {}), self._books)
        segment.write_epoch(inactive, epoch)
        if self._stall_at is not None and generation == self._stall_at:
            (self.directory / f"stalled-{generation}").touch()
            while True:  # test-only: wait here to be killed mid-publish
                time.sleep(1)
        segment.counter[0] = g + 1  # the flip (invariant 1)
        self.last_publish_window_s = time.perf_counter() - started
        self._epoch = epoch

    def _write_change(self, segment: _Segment, change: SlotChange, active: int, inactive: int) -> None:
        name = change.config.name
        book = self._books.get(name)
        if book is None:
            return  # a string-id slot: not held here
        arrays = segment.slots[name]
        existing = _probe(arrays.keys[active], arrays.rows[active], change.ids) if len(change.ids) else None
        ids, vectors, updated = change.ids, change.vectors, change.updated_at_ms
        if existing is not None:
            new = existing < 0
            admitted = min(int(new.sum()), max(0, self.budget_rows - self.resident_rows()))
            if admitted < int(new.sum()):
                keep = ~new
                keep[np.flatnonzero(new)[:admitted]] = True
                ids, vectors, updated, existing = ids[keep], vectors[keep], updated[keep], existing[keep]
                book.complete = False
            rows = book.take(len(ids))
            arrays.vectors[rows] = vectors
            arrays.updated[rows] = updated
            added = _insert(arrays.keys[inactive], arrays.rows[inactive], ids, rows)
            book.entries += added
            book.resident += int((existing <= RESERVED_ROW).sum())
            freed = existing[existing > RESERVED_ROW]
        else:
            ids, rows, freed = np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64)
        if len(change.deleted):
            # Probed in the copy being written: an id both written and deleted by this delta is deleted (as in
            # LMDB, which deletes after writing), and its fresh row freed.
            old = _probe(arrays.keys[inactive], arrays.rows[inactive], change.deleted)
            gone = change.deleted[old > RESERVED_ROW]
            reserved = np.full(len(gone), RESERVED_ROW, dtype=np.int64)
            _insert(arrays.keys[inactive], arrays.rows[inactive], gone, reserved)
            freed = np.concatenate([freed, old[old > RESERVED_ROW]])
            book.resident -= len(gone)
            ids, rows = np.concatenate([ids, gone]), np.concatenate([rows, reserved])
        book.freed_last = np.concatenate([book.freed_last, freed])
        book.pending_ids = np.concatenate([book.pending_ids, ids])
        book.pending_rows = np.concatenate([book.pending_rows, rows])

    def _fits(self, segment: _Segment, changes: list[SlotChange]) -> bool:
        for change in changes:
            book = self._books.get(change.config.name)
            arrays = segment.slots.get(change.config.name)
            if change.config.id_kind == "str":
                continue
            if book is None or arrays is None:
                return False  # a slot this segment does not have
            if not self._slot_fits(book, arrays, len(change.ids)):
                return False
        return True

    @staticmethod
    def _slot_fits(book: _SlotBook, arrays: _SlotArrays, n: int) -> bool:
        """``n`` more rows fit: free arena rows for their copies, and the index stays at most half full."""
        return n <= book.n_free() and 2 * (book.entries + n) <= arrays.capacity

    def _grown(self, changes: list[SlotChange]) -> _Segment:
        """A bigger segment holding the active state (no change applied yet), published; invariant 5."""
        old = self._segment
        assert old is not None
        g = old.g
        active = g & 1
        extra = {c.config.name: len(c.ids) for c in changes}
        configs = {name: arrays.config for name, arrays in old.slots.items()}
        for change in changes:
            if change.config.id_kind != "str":
                configs[change.config.name] = change.config
        sizes = {}
        kept: set[str] = set()
        for name, config in configs.items():
            book = self._books.get(name, _SlotBook())
            arrays = old.slots.get(name)
            n = extra.get(name, 0)
            if arrays is not None and arrays.config == config and self._slot_fits(book, arrays, n):
                # Only the slots that overflow grow: a small slot filling up with new ids must not double the
                # memory of a 10M-row one (measured in the soak: +3 GB of /dev/shm while the copy ran).
                sizes[name] = (config, arrays.capacity, len(arrays.updated))
                kept.add(name)
                continue
            need = book.resident + n
            grow = max(2 * need, 1024)
            sizes[name] = (config, capacity_for(grow), 1 + grow)
        segment, books = self._new_segment(sizes)
        for name, arrays in old.slots.items():
            if name in kept:
                _copy_whole(arrays, active, segment.slots[name], books[name])
            else:
                live = arrays.rows[active] > RESERVED_ROW
                ids = arrays.keys[active][live]
                rows = arrays.rows[active][live]
                if len(ids):
                    self._load(segment.slots[name], books[name], ids, arrays.vectors[rows], arrays.updated[rows])
            books[name].complete = self._books[name].complete
        for name in books:
            if name not in old.slots:
                books[name].complete = True  # a new slot starts empty, as it is in LMDB
        self._install(segment, books, self._epoch)
        return segment

    def forget(self, slot: str, ids: IntIds) -> None:
        """Rows removed by an expiry sweep read as unseen from now on (one publish, same epoch)."""
        config = self.slots.get(slot)
        if config is None:
            return
        empty = np.empty(0, np.uint64)
        change = SlotChange(config, empty, np.empty((0, config.dim), config.np_dtype), np.empty(0, np.int64), ids)
        self.publish([change], self._epoch.generation, self._epoch.applied_seq)

    def close(self) -> None:
        self._segment = None


def _copy_whole(old: _SlotArrays, active: int, new: _SlotArrays, book: _SlotBook) -> None:
    """A slot that keeps its size in a new segment: its active index copy (into both new copies), arena and times
    copied as they are. Memory copies, where re-inserting every row of a 10M-row slot stalled publishing for about a
    minute beside two busy workers (measured in the soak). Rows the active copy does not reference are free: only the
    old segment's readers could still read them, and they read the old mapping."""
    rows = old.rows[active]
    new.keys[0][:] = old.keys[active]  # one keys array serves both copies (invariant 4)
    new.rows[0][:] = rows
    new.rows[1][:] = rows
    new.vectors[:] = old.vectors
    new.updated[:] = old.updated
    used = np.zeros(len(new.updated), dtype=bool)
    used[rows[rows > RESERVED_ROW]] = True
    used[RESERVED_ROW] = True
    book.free = [np.flatnonzero(~used)[::-1].astype(np.int64)]  # highest first, as a fresh segment's: take() pops lows
    book.entries = int(np.count_nonzero(rows >= 0))
    book.resident = int(np.count_nonzero(rows > RESERVED_ROW))


def iter_chunks(items: Iterable[tuple[str, Iterator[tuple[IntIds, Array, Array]]]]) -> Iterator[Any]:
    for name, chunks in items:
        for ids, vectors, updated in chunks:
            yield name, ids, vectors, updated
