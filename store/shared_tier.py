"""The shared RAM tier: one copy of the hot rows for every serving worker, built and published by the writer.

Files (in one directory, ``/dev/shm/liverank-<store>`` by default):

- ``control`` names the live head (``head-<id>``; ids only grow). It is replaced by writing ``control.tmp`` and
  renaming it (one atomic step).
- a **head** ``head-<id>`` holds the publish counter ``G``, the layout (per slot: its config, sizes, array offsets and
  the name of its slot file) and two epoch records. It is small (a few hundred KiB).
- a **slot file** ``slot-<id>`` holds one slot's hash index (one keys array, two row-number copies) over its row
  arena (vectors, update times).

The writer process maps them read-write; workers map them read-only (numpy views over ``mmap``, probed and gathered
by the compiled kernel). Readers keep the maps of the slot files the live head names, by file name: a slot file
kept by a new head is not re-mapped.

Invariants (tests/store/test_shared_tier.py checks them across processes):

1. The publish counter ``G`` (one aligned u64 in the live head) names the active index copy of every slot:
   ``G & 1``. Readers use only the active copy and the epoch record of the same number. The writer writes only the
   *inactive* copy, its epoch record, and arena rows that the active copy does not reference ("free" rows). A
   publish is one store: ``G += 1``. So a writer stopped at any instant (SIGKILL included) leaves the active copy, its
   epoch and every row it references untouched: readers go on serving that whole state; there is no "stuck odd"
   state.
2. A read is valid iff ``G`` is the same before and after it (seqlock) and is not ``RETIRED``. A reader that
   overlapped a publish retries (microseconds: a flip is one store, so only reads that straddle it retry); after
   ``MAX_TRIES`` it gives up and the caller answers from LMDB (counted: a fallback). The epoch (LMDB generation,
   applied sequence per producer, which slots are complete) is read inside the same section, so an answer's epoch
   names exactly what it read.
3. Copy-on-write rows: an updated id gets a fresh arena row; its old row is freed only when the *next* publish has
   repointed the other copy (rows freed by publish P are reused from publish P+1 on). A reader still on the old
   copy after P sees ``G`` change and retries, so it never trusts a row that is being reused.
4. After the flip the inactive copy lags one publish: the next publish first replays the previous one's index
   changes into it, then applies its own. Index entries are never removed (a deleted id points at row 0), and both
   copies receive the same inserts in the same order, so they have the same occupied places: the copies share one
   keys array. A new id's key is written at a place that is empty (row -1) in the active copy, where its readers
   stop without looking at the key.
5. Growth (a slot's arena or index full, or a new slot) touches only that slot. Order of a growing publish:
   a. the replay of invariant 4 first: every slot's two index copies are now equal;
   b. the growing slot gets a new, bigger file (``slot-<id>``, created as ``.building`` and renamed once its index
      copies are empty, then filled with the active rows into both copies); no head names it yet;
   c. a new head (``head-<id>.building``, renamed when complete) names the new file for the growing slot and the
      *existing* files of every other slot, starts with the same ``G`` (same active copy) and both epoch records
      set to the current state: it describes exactly the state the old head describes;
   d. ``control`` is renamed to name the new head;
   e. the old head is **retired**: ``RETIRED`` is stored into its ``G``, before the writer's first later store to
      any slot file (the delta's rows and index writes in the kept files come after). Why: the kept files are
      shared, and the next flips happen in the new head only; without it, a reader on the old head (``G = g``
      forever) would trust copy ``g & 1`` and its rows after the writer started rewriting and reusing them. A reader
      that loaded the old ``G = g``, then data, then ``G`` again sees ``RETIRED != g`` if any of its data loads could
      have seen a later store, and retries; a reader that loads ``RETIRED`` re-reads ``control`` at once. A retired
      head is never written again, so it stays retired.
   f. heads and slot files that the live head does not name are unlinked (a reader's map of them stays valid: the
      old grown slot file is never written again, so readers still on it read a whole state until they move).
   A big slot's file is never copied or touched by another slot's growth.
6. A writer SIGKILLed at any point leaves readers on a whole state. Mid-publish: invariant 1. In growth: during b
   or c (new files half-written, or complete but not named by ``control``) readers use the old head, untouched but
   for invariant 1's inactive copy; after d and before e the old head is not retired, but nothing has written any
   slot file since d (e precedes every such store), so the old and new heads describe the same whole state; after
   e the old head is retired and readers follow ``control`` to the new head, a state of invariant 1. A restarted
   writer never trusts the previous writer's bookkeeping (its free lists lived in its own memory): it builds fresh
   slot files and a fresh head from LMDB, publishes them by ``control`` and unlinks every file the new head does not
   name (leftovers of any window above included); until then readers serve the previous head's whole state.
7. Deleted and expired ids point at row 0, which always reads as unseen (zeros, time ``DELETED_MS``).

Memory order: the writer's stores (rows, index, epoch, then ``G``; ``RETIRED`` into the old head's ``G`` before any
later store to a slot file) and a reader's loads (``G``, data, ``G``) keep program order on x86-64 (TSO), which this
relies on; a weakly ordered CPU would need fences around ``G``. File contents written before ``control`` is renamed
are visible to a reader that opens the file after reading ``control`` (the page cache is one copy).

String-id slots (``id_kind="str"``) are not held here: their ids have no fixed width; they read from LMDB.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from liverank.store.format import Array, IntIds
from liverank.store.hash_index import Rows, capacity_for, mix64, probe_numpy
from liverank.store.hash_index import _kernel as kernel
from liverank.store.ram_tier import DELETED_MS, TierRead
from liverank.store.slots import SlotConfig

log = logging.getLogger(__name__)

MAGIC = b"LRTIER02"  # control and heads
SLOT_MAGIC = b"LRSLOT02"
CONTROL_BYTES = 64
HEADER_BYTES = 64 * 1024  # magic, G, layout JSON
EPOCH_BYTES = 64 * 1024  # per copy: u32 length + JSON
SLOT_HEADER_BYTES = 64  # magic
MAX_TRIES = 64
RESERVED_ROW = 0
RETIRED = 2**64 - 1  # stored into a superseded head's G (invariant 5e)
_ALIGN = 64
_G_OFFSET = 8
_LAYOUT_OFFSET = 16
# ``seg-<id>``: the single segment file of the previous layout; unlinked like every file the live head does not name.
_TIER_FILE = re.compile(r"(head|slot|seg)-(\d+)(\.building)?")
# Test-only seam: the writer pauses forever right before the flip of this generation (after writing the inactive
# copy), having created ``stalled-<generation>`` in the tier directory, so a test can SIGKILL it mid-publish.
STALL_ENV = "LIVERANK_TIER_TEST_STALL_AT_GENERATION"
# Test-only seam: the writer pauses forever at this step of its first growth (one of ``GROWTH_WINDOWS``), having
# created ``stalled-<window>`` in the tier directory, so a test can SIGKILL it there.
GROWTH_STALL_ENV = "LIVERANK_TIER_TEST_STALL_IN_GROWTH"
GROWTH_WINDOWS = ("slot-written", "head-written", "control-renamed")
T = TypeVar("T")


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


def tier_files(directory: Path) -> list[Path]:
    """Every file of a shared tier in ``directory`` (control, heads, slot files, half-built ones)."""
    found = [path for path in directory.glob("*-*") if _TIER_FILE.fullmatch(path.name)]
    return [*found, *(p for p in (directory / "control", directory / "control.tmp") if p.exists())]


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _head_path(directory: Path, head_id: int) -> Path:
    return directory / f"head-{head_id}"


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


def _slot_layout(config: SlotConfig, file: str, cap: int, arena: int) -> tuple[dict[str, Any], int]:
    """A slot file's layout entry (as the head stores it) and the file's size in bytes."""
    offset = SLOT_HEADER_BYTES
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
    entry = {"config": config.to_json(), "file": file, "capacity": cap, "arena_rows": arena, "offsets": offsets}
    return entry, offset


def _map(path: Path, *, writable: bool) -> mmap.mmap:
    with open(path, "r+b" if writable else "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)


class _SlotFile:
    """One mapped slot file: numpy views over its index and arena, as the layout ``entry`` of a head places them."""

    def __init__(self, path: Path, entry: Mapping[str, Any], *, writable: bool) -> None:
        self.name = entry["file"]
        self.entry = dict(entry)
        self._map = _map(path, writable=writable)
        buf = memoryview(self._map)
        if bytes(buf[:8]) != SLOT_MAGIC:
            raise ValueError(f"{path} is not a liverank tier slot file")
        config = SlotConfig.from_json(entry["config"])
        cap, arena = int(entry["capacity"]), int(entry["arena_rows"])
        off = entry["offsets"]

        def view(name: str, dtype: Any, count: int) -> Array:
            return np.frombuffer(buf, dtype=dtype, count=count, offset=off[name])

        keys = view("keys", np.uint64, cap)
        self.arrays = _SlotArrays(
            config,
            (keys, keys),  # shared by both copies (invariant 4)
            (view("rows0", np.int64, cap), view("rows1", np.int64, cap)),
            view("vectors", config.np_dtype, arena * config.dim).reshape(arena, config.dim),
            view("updated", np.int64, arena),
        )

    @classmethod
    def create(cls, directory: Path, file: str, config: SlotConfig, cap: int, arena: int) -> _SlotFile:
        """A new, empty slot file (both copies empty), under its final name once initialised; no head names it."""
        entry, size = _slot_layout(config, file, cap, arena)
        tmp = directory / f"{file}.building"
        with open(tmp, "wb") as f:
            f.truncate(size)  # sparse: pages are allocated as they are written
            f.write(SLOT_MAGIC)
        slot_file = cls(tmp, entry, writable=True)
        for rows in slot_file.arrays.rows:
            rows[:] = -1
        slot_file.arrays.updated[RESERVED_ROW] = DELETED_MS
        os.rename(tmp, directory / file)
        return slot_file


class _Segment:
    """One head and the slot files it names: its ``G``, epoch records and per-slot arrays.

    ``files`` are slot files already mapped (by file name); those the head names are reused, not mapped again."""

    def __init__(self, path: Path, *, writable: bool, files: Mapping[str, _SlotFile] | None = None) -> None:
        self.path = path
        self._map = _map(path, writable=writable)
        buf = memoryview(self._map)
        if bytes(buf[:8]) != MAGIC:
            raise ValueError(f"{path} is not a liverank tier head")
        self.counter = np.frombuffer(buf, dtype=np.uint64, count=1, offset=_G_OFFSET)
        (length,) = np.frombuffer(buf, dtype=np.uint32, count=1, offset=_LAYOUT_OFFSET)
        layout = orjson.loads(bytes(buf[_LAYOUT_OFFSET + 4 : _LAYOUT_OFFSET + 4 + int(length)]))
        self.epoch_areas = [buf[HEADER_BYTES + i * EPOCH_BYTES : HEADER_BYTES + (i + 1) * EPOCH_BYTES] for i in (0, 1)]
        known = files or {}
        self.files: dict[str, _SlotFile] = {}
        self.slots: dict[str, _SlotArrays] = {}
        for entry in layout["slots"]:
            slot_file = known.get(entry["file"])
            if slot_file is None:
                slot_file = _SlotFile(path.parent / entry["file"], entry, writable=writable)
            self.files[slot_file.name] = slot_file
            self.slots[slot_file.arrays.config.name] = slot_file.arrays
        self._epochs: dict[int, TierEpoch] = {}

    @classmethod
    def create(cls, path: Path, files: Iterable[_SlotFile], g: int, epoch: TierEpoch) -> _Segment:
        """A new head naming ``files``, with ``G = g`` and both epoch records set to ``epoch``; renamed to ``path``
        once complete (invariant 5c)."""
        by_name = {f.name: f for f in files}
        layout = orjson.dumps({"slots": [f.entry for f in by_name.values()]})
        if _LAYOUT_OFFSET + 4 + len(layout) > HEADER_BYTES:
            raise ValueError("too many slots for the shared tier's head")
        tmp = path.with_name(path.name + ".building")
        with open(tmp, "wb") as f:
            f.truncate(HEADER_BYTES + 2 * EPOCH_BYTES)
            f.write(MAGIC + np.uint64(g).tobytes())
            f.seek(_LAYOUT_OFFSET)
            f.write(np.uint32(len(layout)).tobytes() + layout)
        head = cls(tmp, writable=True, files=by_name)
        head.write_epoch(0, epoch)
        head.write_epoch(1, epoch)
        os.rename(tmp, path)
        head.path = path
        return head

    @property
    def g(self) -> int:
        return int(self.counter[0])

    def epoch(self, copy: int, g: int) -> TierEpoch | None:
        """The epoch record of ``copy`` (parsed once per publish). Valid only if ``G`` is still ``g`` afterwards.
        None for a retired head: a seqlock loop that only checks ``G`` then never accepts a read from one."""
        if g == RETIRED:
            return None
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
    """The id of the live head (0: none yet). Ids only grow."""
    try:
        with open(directory / "control", "rb") as f:
            raw = f.read(16)
    except FileNotFoundError:
        return 0
    return int.from_bytes(raw[8:16], "little") if raw[:8] == MAGIC else 0


def _write_control(directory: Path, head_id: int) -> None:
    """Point readers at a head: written to a temporary file and renamed (one atomic step)."""
    tmp = directory / "control.tmp"
    tmp.write_bytes(MAGIC + head_id.to_bytes(8, "little") + bytes(CONTROL_BYTES - 16))
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


# What runs inside one seqlock section: (the slots' arrays, the active copy) -> what it read, or None to decline.
Section = Callable[[Mapping[str, _SlotArrays], int], T | None]


class SharedTierReader:
    """A worker's read-only view of the shared tier. Lock-free; safe to use from many threads."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._segment: _Segment | None = None
        self._segment_id = 0
        self.retries = 0
        self.gave_up = 0

    def _current(self) -> _Segment | None:
        """The head ``control`` names, mapped (with the slot files it names), or the one we have if that head is
        already gone (the writer moved on again and unlinked it: control is read again on the next call)."""
        segment = self._segment
        for _ in range(3):
            segment_id = read_control(self.directory)
            if segment_id == 0:
                return None
            if segment is not None and segment_id == self._segment_id:
                return segment
            try:
                # Slot files the previous head shares with this one keep their maps. The previous head's maps are
                # dropped, not closed: a thread may still read them (its G check tells it to retry).
                known = segment.files if segment is not None else None
                segment = _Segment(_head_path(self.directory, segment_id), writable=False, files=known)
            except (FileNotFoundError, ValueError):
                continue  # replaced again meanwhile: read control again
            self._segment, self._segment_id = segment, segment_id
            return segment
        return segment

    def slot_files(self) -> dict[str, Path]:
        """The file each slot of the live head reads from (empty before the writer published anything)."""
        segment = self._current()
        if segment is None:
            return {}
        return {s.arrays.config.name: self.directory / name for name, s in segment.files.items()}

    def epoch(self) -> TierEpoch | None:
        """The state readers are served now (None before the writer published anything)."""
        got = self.read({})
        return None if got is None else got.epoch

    def read(self, ids_by_slot: Mapping[str, IntIds]) -> SharedRead | None:
        """Rows of several slots from one published state, or None (no tier yet, or too many publishes overlapped
        this read: the caller answers from LMDB)."""

        def gather(slots: Mapping[str, _SlotArrays], copy: int) -> dict[str, TierRead]:
            reads = {}
            for slot, ids in ids_by_slot.items():
                arrays = slots.get(slot)
                if arrays is not None:
                    reads[slot] = _gather(arrays, copy, np.ascontiguousarray(ids, dtype=np.uint64))
            return reads

        got = self._seqlock(gather)
        return None if got is None else SharedRead(*got)

    def read_section(self, section: Section[T]) -> tuple[TierEpoch, T] | None:
        """``section(slots, copy)`` run inside one seqlock section (redone, into the same buffers, when a publish
        overlapped it), with the epoch it read; None as ``read``, or when ``section`` declines (None)."""
        got = self._seqlock(section)
        return None if got is None else (got[0], got[1])

    def _seqlock(self, section: Section[T]) -> tuple[TierEpoch, T, int] | None:
        """(epoch, what ``section`` read, retries) from one published state (invariant 2), or None."""
        segment = self._current()
        if segment is None:
            return None
        for attempt in range(MAX_TRIES):
            g = segment.g
            if g == RETIRED:  # a newer head is live (invariant 5e): follow control now
                segment = self._current() or segment
                continue
            copy = g & 1
            epoch = segment.epoch(copy, g)
            got = None if epoch is None else section(segment.slots, copy)
            if segment.g == g and epoch is not None:
                if got is None:
                    return None
                segment.remember(g, epoch)
                self.retries += attempt
                return epoch, got, attempt
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
    """The writer process's side: builds slot files and heads, publishes deltas copy-on-write, one flip each."""

    def __init__(self, directory: str | os.PathLike[str], budget_rows: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget_rows = budget_rows
        self._segment: _Segment | None = None
        self._segment_id = read_control(self.directory)
        self._last_id = self._segment_id
        self._books: dict[str, _SlotBook] = {}
        self._epoch = TierEpoch(0, {}, {}, {})
        stall = os.environ.get(STALL_ENV)
        self._stall_at = int(stall) if stall else None
        self._growth_stall = os.environ.get(GROWTH_STALL_ENV)
        self.last_publish_window_s = 0.0

    # --- files --------------------------------------------------------------------------------------------------

    def _next_id(self) -> int:
        """A file id above every id in the directory and ``control`` (a restarted writer never reuses a name that
        a reader may still have mapped)."""
        ids = [int(m.group(2)) for p in self.directory.iterdir() if (m := _TIER_FILE.fullmatch(p.name))]
        self._last_id = max(self._last_id, read_control(self.directory), *ids) + 1
        return self._last_id

    def _new_slot(self, config: SlotConfig, rows: int) -> tuple[_SlotFile, _SlotBook]:
        """An empty slot file with room for ``rows`` rows and its free list (every arena row but the reserved)."""
        cap, arena = capacity_for(rows), 1 + rows
        slot_file = _SlotFile.create(self.directory, f"slot-{self._next_id()}", config, cap, arena)
        return slot_file, _SlotBook(free=[np.arange(arena - 1, RESERVED_ROW, -1, dtype=np.int64)])

    def _switch(
        self, files: Iterable[_SlotFile], books: dict[str, _SlotBook], epoch: TierEpoch, g: int, *, growth: bool
    ) -> _Segment:
        """Publish a new head naming ``files`` (invariant 5 c-f): head, control, retire the old head, unlink what is
        no longer named."""
        full = self._with_books(epoch, books)
        head_id = self._next_id()
        segment = _Segment.create(_head_path(self.directory, head_id), files, g, full)
        if growth:
            self._stall_in_growth("head-written")
        old = self._segment
        _write_control(self.directory, head_id)
        if growth:
            self._stall_in_growth("control-renamed")
        if old is not None:
            old.counter[0] = RETIRED  # before any later store to a slot file (invariant 5e)
        self._segment, self._segment_id, self._books, self._epoch = segment, head_id, books, full
        named = {segment.path.name, *segment.files}
        for path in tier_files(self.directory):
            if path.name not in named and path.name not in ("control", "control.tmp"):
                path.unlink(missing_ok=True)
        log.info("shared tier head %s live: %s rows", head_id, sum(b.resident for b in books.values()))
        return segment

    def _stall_in_growth(self, window: str) -> None:
        if self._growth_stall == window:
            self._stall(window)

    def _stall(self, where: str) -> None:
        """Test-only (``STALL_ENV``, ``GROWTH_STALL_ENV``): say so in ``stalled-<where>``, then wait here to be
        killed."""
        (self.directory / f"stalled-{where}").touch()
        while True:
            time.sleep(1)

    # --- building ---------------------------------------------------------------------------------------------

    def build(
        self,
        slots: Mapping[str, SlotConfig],
        counts: Mapping[str, int],
        chunks: Iterable[tuple[str, IntIds, Array, Array]],
        epoch: TierEpoch,
    ) -> None:
        """Fresh slot files and a head from ``chunks`` (slot, ids, vectors, times), sized for ``counts`` rows per
        slot plus headroom, published whole (invariant 6). The budget caps resident rows; a slot past it is
        incomplete."""
        room = self.budget_rows
        files: dict[str, _SlotFile] = {}
        books: dict[str, _SlotBook] = {}
        wanted: dict[str, int] = {}
        for name, config in slots.items():
            if config.id_kind == "str":
                continue
            take = min(counts.get(name, 0), max(room, 0))
            room -= take
            wanted[name] = take
            files[name], books[name] = self._new_slot(config, take + max(1024, take // 4))
        complete = {name: name in files for name in slots}
        for name, ids, vectors, updated in chunks:
            book = books.get(name)
            if book is None:
                continue
            left = wanted[name] - book.resident
            if left < len(ids):
                complete[name] = False
            if left <= 0:
                continue
            self._load(files[name].arrays, book, ids[:left], vectors[:left], updated[:left])
        for name, book in books.items():
            book.complete = complete[name] and wanted[name] >= counts.get(name, 0)
        self._switch(files.values(), books, epoch, 0, growth=False)

    def _load(self, arrays: _SlotArrays, book: _SlotBook, ids: IntIds, vectors: Array, updated: Array) -> None:
        """Rows into a slot file no head names yet: both copies at once."""
        rows = book.take(len(ids))
        arrays.vectors[rows] = vectors
        arrays.updated[rows] = updated
        for copy in (0, 1):
            added = _insert(arrays.keys[copy], arrays.rows[copy], ids, rows)
        book.entries += added
        book.resident += len(ids)

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

    def slot_files(self) -> dict[str, Path]:
        """The file each slot of the live head lives in."""
        if self._segment is None:
            return {}
        return {s.arrays.config.name: self.directory / name for name, s in self._segment.files.items()}

    def resident_rows(self) -> int:
        return sum(book.resident for book in self._books.values())

    # --- publishing ---------------------------------------------------------------------------------------------

    def publish(self, changes: list[SlotChange], generation: int, applied_seq: Mapping[str, int]) -> None:
        """Make ``changes`` visible as one state (``generation``), copy-on-write, with one flip of ``G``."""
        segment = self._segment
        assert segment is not None, "build() first"
        g = segment.g
        active, inactive = g & 1, (g + 1) & 1
        # Invariant 4: bring the lagging copy up to the active state; rows freed by the previous publish are now
        # unreferenced by both copies. Done before any growth (5a): a new head then names equal copies.
        for name, book in self._books.items():
            arrays = segment.slots[name]
            if len(book.pending_ids):
                _insert(arrays.keys[inactive], arrays.rows[inactive], book.pending_ids, book.pending_rows)
            if len(book.freed_last):
                book.free.append(book.freed_last)
            book.freed_last = np.empty(0, np.int64)
            book.pending_ids, book.pending_rows = np.empty(0, np.uint64), np.empty(0, np.int64)
        if not self._fits(segment, changes):
            segment = self._grown(changes)
        started = time.perf_counter()
        for change in changes:
            self._write_change(segment, change, active, inactive)
        epoch = self._with_books(TierEpoch(generation, dict(applied_seq), self._epoch.complete, {}), self._books)
        segment.write_epoch(inactive, epoch)
        if self._stall_at is not None and generation == self._stall_at:
            self._stall(str(generation))  # mid-publish
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
        """A new head where only the slots that overflow (or are new) have new, bigger files, holding the active
        state (no change applied yet); every other slot keeps its file, untouched (invariant 5). Call after the
        replay: both index copies are equal."""
        old = self._segment
        assert old is not None
        g = old.g
        active = g & 1
        extra = {c.config.name: len(c.ids) for c in changes}
        configs = {name: arrays.config for name, arrays in old.slots.items()}
        for change in changes:
            if change.config.id_kind != "str":
                configs[change.config.name] = change.config
        started = time.perf_counter()
        files = {f.arrays.config.name: f for f in old.files.values()}
        books = dict(self._books)
        for name, config in configs.items():
            book = self._books.get(name, _SlotBook())
            arrays = old.slots.get(name)
            n = extra.get(name, 0)
            if arrays is not None and arrays.config == config and self._slot_fits(book, arrays, n):
                continue  # keeps its file: a small slot growing must not copy a 10M-row one (measured in the soak)
            need = book.resident + n
            grow = max(2 * need, 1024)
            files[name], books[name] = self._new_slot(config, grow)
            if arrays is not None:
                live = arrays.rows[active] > RESERVED_ROW
                ids = arrays.keys[active][live]
                rows = arrays.rows[active][live]
                if len(ids):
                    self._load(files[name].arrays, books[name], ids, arrays.vectors[rows], arrays.updated[rows])
            books[name].complete = book.complete  # a new slot starts empty and complete, as it is in LMDB
        self._stall_in_growth("slot-written")
        segment = self._switch(files.values(), books, self._epoch, g, growth=True)
        grown = sorted(name for name, f in files.items() if old.files.get(f.name) is not f)
        log.info(
            "shared tier slots %s grew in %.3f s; the other slots kept their files",
            grown,
            time.perf_counter() - started,
        )
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


def iter_chunks(items: Iterable[tuple[str, Iterator[tuple[IntIds, Array, Array]]]]) -> Iterator[Any]:
    for name, chunks in items:
        for ids, vectors, updated in chunks:
            yield name, ids, vectors, updated
