"""Child-process side of the store's process-level tests, and the delta builders both sides share.

Run as ``python -m tests.store._workers <command> ...`` (from the repository root). A child reports each event as
one stdout line written with a single ``os.write``: when the parent SIGKILLs it, every line the parent read was
reported before the kill, and nothing is stuck in a userspace buffer.

Commands:
- ``crash-writer PATH --start S --durability D``: apply the crash stream from ``S`` on until killed.
- ``inbox-writer PATH --start S --seed N [--hold]``: drain the inbox, then enqueue and apply (with ``inbox_key``) until
  killed; ``--hold`` enqueues one batch, prints ``holding`` and waits to be killed with the batch still queued.
- ``reader PATH --final K``: look the visibility group up in a loop until it reads ``K``; print a JSON summary.
- ``hold-write PATH``: open a write transaction on the store and hold it until stdin closes.
- ``reader PATH --final K --shared DIR [--into]``: the same, reading the shared tier in ``DIR`` (a serving worker's
  view); ``--into``: in one pass into input buffers, as the ranker reads it.
- ``tier-writer PATH --shared DIR --start S --final K``: publish the visibility stream from ``S`` to ``K`` into the
  shared tier in ``DIR`` (``LIVERANK_TIER_TEST_STALL_AT_GENERATION`` makes it stall mid-publish).
- ``grow-writer DIR --start S --final K``: build the growth stream's state ``S - 1`` into a fresh shared tier in ``DIR``
  (as a restarted writer builds from LMDB), then publish ``S`` to ``K``; the small slot grows several times
  (``LIVERANK_TIER_TEST_STALL_IN_GROWTH`` makes it stall in one window of its first growth).
- ``grow-reader DIR --final K``: read the growth stream from the shared tier in ``DIR`` in a loop until it reads
  ``K``, alternately as ``lookup_many`` and as the one-pass read do; print a JSON summary (violations, states seen,
  give-ups).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from liverank.store import EmbeddingStore, Inbox, Lookup, SlotConfig, SlotDelta, SparseDelta
from liverank.store.read_into import FeatureRead, IntoLookup, read_into
from liverank.store.shared_tier import SharedTierReader, SharedTierWriter, SlotChange, TierEpoch

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_DEADLINE_S = 60.0  # a child the parent forgot to kill exits on its own

# --- the crash stream: delta k writes group k (fresh ids) and rewrites the shared ids, every row to float(k) -------

CRASH_PRODUCER = "crash"
CRASH_DIM = 8
GROUP_ROWS = 256
SHARED_IDS = np.arange(50, dtype=np.uint64)
# "group": group rows and the shared ids; "mirror": the shared ids again (a delta spans two slots).
CRASH_SLOTS = (SlotConfig("group", CRASH_DIM), SlotConfig("mirror", CRASH_DIM))
CRASH_MAP_SIZE_BYTES = 1 << 30


def group_ids(k: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Ids of group ``k`` (k >= 1): never overlap the shared ids 0..49 or another group."""
    return np.arange(k * GROUP_ROWS, (k + 1) * GROUP_ROWS, dtype=np.uint64)


def _rows(ids: np.ndarray[Any, np.dtype[np.uint64]], value: int, dim: int) -> SlotDelta:
    n = len(ids)
    return SlotDelta(ids, np.full((n, dim), float(value), dtype=np.float32), np.full(n, value, dtype=np.int64))


def crash_delta(k: int) -> SparseDelta:
    ids = np.concatenate([SHARED_IDS, group_ids(k)])
    return SparseDelta(
        CRASH_PRODUCER,
        k,
        "",
        k,
        {"group": _rows(ids, k, CRASH_DIM), "mirror": _rows(SHARED_IDS, k, CRASH_DIM)},
    )


# --- the visibility stream: delta k sets one group of ids, across two slots, all to float(k) ----------------------

VIS_PRODUCER = "vis"
VIS_DIM = 8
VIS_IDS_PER_SLOT = 1000
VIS_SLOTS = (SlotConfig("user", VIS_DIM), SlotConfig("item", VIS_DIM))
VIS_MAP_SIZE_BYTES = 256 << 20


def vis_ids(slot: str) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Spread-out ids (different per slot) so the group is not one contiguous run of hash places or pages."""
    offset = 13 if slot == "user" else 7_000_001
    return (np.arange(VIS_IDS_PER_SLOT, dtype=np.uint64) * np.uint64(7919)) + np.uint64(offset)


def vis_requests() -> dict[str, np.ndarray[Any, np.dtype[np.uint64]]]:
    return {config.name: vis_ids(config.name) for config in VIS_SLOTS}


def vis_delta(k: int) -> SparseDelta:
    return SparseDelta(
        VIS_PRODUCER, k, "", k, {config.name: _rows(vis_ids(config.name), k, VIS_DIM) for config in VIS_SLOTS}
    )


# --- the growth stream: a big slot that never grows beside a small one that keeps growing ---------------------------
# State k: the big slot's hot ids hold float(k), its cold ids COLD_VALUE; the small slot's markers hold float(k) and
# delta j's fresh ids (j <= k) float(j). Each delta adds GROW_NEW_PER_DELTA fresh small ids, so the small slot
# outgrows its files again and again, while the big slot's rewrites fit its free rows (its file must never change).

GROW_DIM = 4
GROW_BIG, GROW_SMALL = SlotConfig("big", GROW_DIM), SlotConfig("small", GROW_DIM)
GROW_SLOTS = {"big": GROW_BIG, "small": GROW_SMALL}
BIG_HOT_IDS = np.arange(1, 501, dtype=np.uint64)
BIG_COLD_IDS = np.arange(501, 5001, dtype=np.uint64)
COLD_VALUE = 0.5
SMALL_MARKER_IDS = np.arange(10**6, 10**6 + 200, dtype=np.uint64)
GROW_NEW_PER_DELTA = 500


def small_new_ids(k: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    return np.arange(GROW_NEW_PER_DELTA, dtype=np.uint64) + np.uint64(2 * 10**6 + k * GROW_NEW_PER_DELTA)


def _grow_rows(ids: np.ndarray[Any, Any], value: float) -> tuple[Any, Any, Any]:
    return ids, np.full((len(ids), GROW_DIM), value, np.float32), np.full(len(ids), max(int(value), 1), np.int64)


def grow_changes(k: int) -> list[SlotChange]:
    none = np.empty(0, np.uint64)
    small = np.concatenate([SMALL_MARKER_IDS, small_new_ids(k)])
    return [
        SlotChange(GROW_BIG, *_grow_rows(BIG_HOT_IDS, float(k)), none),
        SlotChange(GROW_SMALL, *_grow_rows(small, float(k)), none),
    ]


def grow_epoch(k: int) -> TierEpoch:
    return TierEpoch(k, {"grow": k}, {}, {})


def build_grow_state(writer: SharedTierWriter, k: int) -> None:
    """Build state ``k`` fresh (what a restarted writer reads from LMDB)."""
    chunks = [("big", *_grow_rows(BIG_HOT_IDS, float(k))), ("big", *_grow_rows(BIG_COLD_IDS, COLD_VALUE))]
    if k:
        chunks.append(("small", *_grow_rows(SMALL_MARKER_IDS, float(k))))
        chunks += [("small", *_grow_rows(small_new_ids(j), float(j))) for j in range(1, k + 1)]
    counts = {"big": len(BIG_HOT_IDS) + len(BIG_COLD_IDS), "small": (len(SMALL_MARKER_IDS) if k else 0)}
    counts["small"] += k * GROW_NEW_PER_DELTA
    writer.build(GROW_SLOTS, counts, chunks, grow_epoch(k))


def check_grow_read(reader: SharedTierReader) -> tuple[int, str | None] | None:
    """One read of the growth stream: (its state k, what is wrong with it or None), or None if the read gave up."""
    requests = {"big": np.concatenate([BIG_HOT_IDS, BIG_COLD_IDS]), "small": SMALL_MARKER_IDS}
    got = reader.read(requests)
    if got is None:
        return None
    k = got.epoch.generation
    big, small = got.reads["big"], got.reads["small"]
    hot = len(BIG_HOT_IDS)
    if got.epoch.applied_seq != {"grow": k}:
        return k, f"state {k}: applied {got.epoch.applied_seq}"
    if not (big.rows > 0).all() or not (big.vectors[:hot] == float(k)).all():
        return k, f"state {k}: big hot rows {np.unique(big.vectors[:hot])[:6].tolist()}"
    if not (big.vectors[hot:] == COLD_VALUE).all():
        return k, f"state {k}: big cold rows {np.unique(big.vectors[hot:])[:6].tolist()}"
    if k == 0:
        return k, None if (small.rows < 0).all() else f"state 0 has small rows {int((small.rows >= 0).sum())}"
    if not (small.rows > 0).all() or not (small.vectors == float(k)).all():
        return k, f"state {k}: small markers {np.unique(small.vectors)[:6].tolist()}"
    fresh = reader.read({"small": small_new_ids(k)})
    if fresh is not None and fresh.epoch.generation == k and not (fresh.reads["small"].vectors == float(k)).all():
        return k, f"state {k}: its fresh small ids {np.unique(fresh.reads['small'].vectors)[:6].tolist()}"
    return k, None


def check_grow_read_into(reader: SharedTierReader) -> tuple[int, str | None] | None:
    """The same read as ``check_grow_read``, in one pass into input buffers (``read_into``, as the ranker reads):
    (its state k, what is wrong with it or None), or None if it gave up."""
    big_ids = np.concatenate([BIG_HOT_IDS, BIG_COLD_IDS])
    big = np.empty((len(big_ids), GROW_DIM), dtype=np.float32)
    small = np.empty((len(SMALL_MARKER_IDS), GROW_DIM), dtype=np.float32)
    features = [
        FeatureRead("big", big_ids, big, 0, None, False),
        FeatureRead("small", SMALL_MARKER_IDS, small, 0, None, False),
    ]
    got = read_into(reader, {name: (config, 0) for name, config in GROW_SLOTS.items()}, features, 0)
    if got is None:
        return None
    k = got.generation
    hot = len(BIG_HOT_IDS)
    if got.applied_seq != {"grow": k}:
        return k, f"one-pass state {k}: applied {got.applied_seq}"
    if got.unseen_by_slot["big"] or not (big[:hot] == float(k)).all():
        return k, f"one-pass state {k}: big hot rows {np.unique(big[:hot])[:6].tolist()}"
    if not (big[hot:] == COLD_VALUE).all():
        return k, f"one-pass state {k}: big cold rows {np.unique(big[hot:])[:6].tolist()}"
    if k == 0:
        unseen = got.unseen_by_slot["small"]
        return k, None if unseen == len(SMALL_MARKER_IDS) else f"one-pass state 0 has small rows ({unseen} unseen)"
    if got.unseen_by_slot["small"] or not (small == float(k)).all():
        return k, f"one-pass state {k}: small markers {np.unique(small)[:6].tolist()}"
    return k, None


@dataclass
class Observations:
    """What one reader saw: each lookup of the whole group must show exactly one delta's state, never older."""

    check_generation: bool = True
    reads: int = 0
    ks: set[int] = field(default_factory=set)
    sources: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    last_k: int = 0

    def record(self, lookup: Lookup) -> int:
        unseen = np.concatenate([s.unseen for s in lookup.slots.values()])
        updated = np.concatenate([s.updated_at_ms for s in lookup.slots.values()])
        return self._check(
            f"read {self.reads + 1} (generation {lookup.generation}, source {lookup.source})",
            lookup.source,
            lookup.generation,
            np.concatenate([s.vectors.ravel() for s in lookup.slots.values()]),
            len(unseen),
            int(unseen.sum()),
            updated[~unseen],
        )

    def record_into(self, got: IntoLookup, buffers: list[np.ndarray[Any, Any]]) -> int:
        """The same checks for a one-pass read (``lookup_into``): the buffers it wrote, its counts and seen times."""
        return self._check(
            f"one-pass read {self.reads + 1} (generation {got.generation})",
            f"{got.source}:into",
            got.generation,
            np.concatenate([b.ravel() for b in buffers]),
            sum(got.ids_by_slot.values()),
            sum(got.unseen_by_slot.values()),
            got.seen_ms,
        )

    def _check(
        self,
        where: str,
        source: str,
        generation: int,
        vectors: np.ndarray[Any, Any],
        n_ids: int,
        n_unseen: int,
        seen_ms: np.ndarray[Any, Any],
    ) -> int:
        """One read of the whole group: one delta's value everywhere (0: every row unseen), its event times, its
        generation, never older than an earlier read."""
        self.reads += 1
        self.sources[source] += 1
        first = float(vectors[0])
        k = int(first)
        if not np.all(vectors == first):
            values = np.unique(vectors)
            self._violate(f"{where}: mixed group, {len(values)} distinct values, e.g. {values[:6].tolist()}")
        elif k != first or k < 0:
            self._violate(f"{where}: value {first} is no delta's value")
        elif n_unseen != (n_ids if k == 0 else 0):
            self._violate(f"{where}: value {k} but {n_unseen} of {n_ids} rows unseen")
        elif k and not (len(seen_ms) == n_ids and np.all(seen_ms == k)):
            self._violate(f"{where}: value {k} but event times {np.unique(seen_ms)[:6].tolist()}")
        elif self.check_generation and generation != k:
            self._violate(f"{where}: value {k} read at generation {generation}")
        if k < self.last_k:
            self._violate(f"{where}: went back from {self.last_k} to {k}")
        self.ks.add(k)
        self.last_k = max(self.last_k, k)
        return k

    def _violate(self, message: str) -> None:
        if len(self.violations) < 5:
            self.violations.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "ks": sorted(self.ks),
            "sources": dict(self.sources),
            "violations": self.violations,
            "last_k": self.last_k,
        }


# --- parent side: reading a child's event lines ------------------------------------------------------------------


class ChildLines:
    """Event lines from a child's stdout, read without blocking past a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self.proc = proc
        self._fd = proc.stdout.fileno()
        self._buffer = b""
        self.lines: list[str] = []
        self.eof = False

    def _pump(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout_s))
        if not ready:
            return
        chunk = os.read(self._fd, 65536)
        if not chunk:
            self.eof = True
            return
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(line.decode() for line in complete)

    def wait_for(self, line: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in self.lines:
            if self.eof:
                raise AssertionError(f"child exited before {line!r}: {self._stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"child did not report {line!r} within {timeout_s} s")
            self._pump(deadline - time.monotonic())

    def drain_for(self, seconds: float) -> None:
        """Keep reading (so the child never blocks on a full pipe) for ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self.eof and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())

    def read_to_eof(self, timeout_s: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while not self.eof:
            if time.monotonic() > deadline:
                raise AssertionError(f"child stdout still open after {timeout_s} s")
            self._pump(deadline - time.monotonic())
        return self.lines

    def _stderr(self) -> str:
        self._proc.wait(timeout=30)
        assert self._proc.stderr is not None
        return f"exit {self._proc.returncode}, stderr:\n{self._proc.stderr.read().decode(errors='replace')}"

    def events(self, name: str) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith(name + " ")]


def start_child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store._workers", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# --- child side ----------------------------------------------------------------------------------------------------


def _emit(event: str, value: int | str = "") -> None:
    os.write(1, f"{event} {value}".strip().encode() + b"\n")


def _crash_writer(path: str, start: int, durability: str) -> int:
    store = EmbeddingStore.open(
        path,
        slots=CRASH_SLOTS,
        map_size_bytes=CRASH_MAP_SIZE_BYTES,
        durability="power" if durability == "power" else "process",
    )
    applied = store.applied_seq(CRASH_PRODUCER)
    if applied != start - 1:
        print(f"store has applied {applied}, parent says resume at {start}", file=sys.stderr)
        return 3
    _emit("ready")
    deadline = time.monotonic() + CHILD_DEADLINE_S
    k = start
    while time.monotonic() < deadline:
        _emit("begin", k)
        store.apply(crash_delta(k))
        _emit("applied", k)
        k += 1
    return 4


def _inbox_writer(path: str, start: int, seed: int, hold: bool = False) -> int:
    store = EmbeddingStore.open(path, slots=CRASH_SLOTS, map_size_bytes=CRASH_MAP_SIZE_BYTES)
    inbox = Inbox(store.lmdb, max_depth=64)
    _emit("ready")

    def drain() -> None:
        for entry in inbox.pending():
            _emit("begin", entry.seq)
            store.apply(entry.delta(), inbox_key=entry.key, payload=entry.payload)
            _emit("applied", entry.seq)

    drain()  # what the previous (killed) writer left queued goes first, in order
    applied = store.applied_seq(CRASH_PRODUCER)
    if applied != start - 1:
        print(f"store has applied {applied} after draining, parent says resume at {start}", file=sys.stderr)
        return 3
    rng = random.Random(seed)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    k = start
    while time.monotonic() < deadline:
        for _ in range(rng.randint(1, 3)):
            inbox.enqueue(crash_delta(k), received_at_ms=k)
            _emit("enqueued", k)
            k += 1
        if hold:  # the hand-off case on demand: enqueued, acknowledged, not yet applied when the kill comes
            _emit("holding")
            time.sleep(max(0.0, deadline - time.monotonic()))
            return 4
        drain()
    return 4


def vis_features() -> tuple[list[FeatureRead], list[np.ndarray[Any, Any]]]:
    """The visibility group as a ranking request reads it in one pass: both slots' ids as id features side by side
    in one input buffer, and the item ids again as lists of 10, mean-pooled into another."""
    ids = vis_requests()
    rows = np.empty((VIS_IDS_PER_SLOT, 2 * VIS_DIM), dtype=np.float32)
    pooled = np.empty((VIS_IDS_PER_SLOT // 10, VIS_DIM), dtype=np.float32)
    lengths = np.full(VIS_IDS_PER_SLOT // 10, 10, dtype=np.int64)
    features = [
        FeatureRead("user", ids["user"], rows, 0, None, False),
        FeatureRead("item", ids["item"], rows, VIS_DIM, None, False),
        FeatureRead("item", ids["item"], pooled, 0, lengths, True),
    ]
    return features, [rows, pooled]


def _reader(
    path: str, final: int, budget: int | None, timeout_s: float, shared: str | None = None, into: bool = False
) -> int:
    """``into``: read as the ranker does, in one pass into input buffers (``lookup_into``), ``lookup_many`` only
    when that declines."""
    kwargs: dict[str, Any] = {} if budget is None else {"ram_budget_rows": budget}
    if shared is not None:
        kwargs.update(tier="map", shared_tier_dir=shared)
    store = EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES, **kwargs)
    requests = vis_requests()
    features, buffers = vis_features()
    seen = Observations()

    def read() -> None:
        got = store.lookup_into(features, now_ms=int(time.time() * 1000)) if into else None
        if got is None:
            seen.record(store.lookup_many(requests))
        else:
            seen.record_into(got, buffers)

    read()
    _emit("ready")
    deadline = time.monotonic() + timeout_s
    reported = seen.last_k
    while seen.last_k < final and time.monotonic() < deadline:
        read()
        if seen.last_k > reported:  # the parent applies the next delta once we have seen this one
            reported = seen.last_k
            _emit("saw", reported)
    fallbacks = store.tier_fallbacks
    retries = store.shared_tier.retries if store.shared_tier is not None else 0
    store.close()
    _emit("summary", json.dumps({**seen.to_json(), "fallbacks": fallbacks, "retries": retries}))
    return 0


def _tier_writer(path: str, shared: str, start: int, final: int, pause_s: float) -> int:
    store = EmbeddingStore.open(
        path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES, tier="publish", shared_tier_dir=shared
    )
    _emit("ready")
    windows = []
    for k in range(start, final + 1):
        store.apply(vis_delta(k))
        assert store.publisher is not None
        windows.append(store.publisher.last_publish_window_s)
        _emit("applied", k)
        time.sleep(pause_s)
    _emit("windows", json.dumps(windows))
    store.close()
    return 0


def _grow_writer(shared: str, start: int, final: int, pause_s: float) -> int:
    writer = SharedTierWriter(shared, budget_rows=10**9)
    build_grow_state(writer, start - 1)
    _emit("ready")
    for k in range(start, final + 1):
        writer.publish(grow_changes(k), k, {"grow": k})
        _emit("applied", k)
        time.sleep(pause_s)
    writer.close()
    return 0


def _grow_reader(shared: str, final: int, timeout_s: float) -> int:
    reader = SharedTierReader(shared)
    reads, last_k, ks, violations = 0, -1, set(), []
    deadline = time.monotonic() + timeout_s
    while last_k < final and time.monotonic() < deadline:
        # Alternately the general read and the one-pass read (``read_into``: the ranker's).
        got = (check_grow_read, check_grow_read_into)[reads % 2](reader)
        if got is None:
            continue
        k, problem = got
        reads += 1
        if problem is None and k < last_k:
            problem = f"went back from {last_k} to {k}"
        if problem is not None and len(violations) < 5:
            violations.append(problem)
        if last_k < 0:
            _emit("ready")
        ks.add(k)
        last_k = max(last_k, k)
    summary = {"reads": reads, "ks": sorted(ks), "last_k": last_k, "violations": violations}
    _emit("summary", json.dumps({**summary, "gave_up": reader.gave_up, "retries": reader.retries}))
    return 0


def _hold_write(path: str) -> int:
    store = EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)
    txn = store.lmdb.env.begin(write=True)
    _emit("holding")
    sys.stdin.buffer.read()  # until the parent closes our stdin
    txn.abort()
    store.close()
    return 0


def forked_child(store: EmbeddingStore, path: str, conn: Connection) -> None:
    """Runs in a child forked while ``store`` was open in the parent; sends back what each step did."""
    report: dict[str, Any] = {}
    steps: dict[str, Callable[[], object]] = {
        "lookup": lambda: store.lookup("user", vis_ids("user")),
        "lookup_many": lambda: store.lookup_many(vis_requests()),
        "apply": lambda: store.apply(vis_delta(2)),
        "stats": store.stats,
        "flush": store.flush,
    }
    for name, step in steps.items():
        try:
            step()
            report[name] = "ok"
        except Exception as exc:
            report[name] = type(exc).__name__
    store.close()  # the inherited handle: closing it must leave the parent's environment alone
    try:
        own = EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)
    except Exception as exc:
        report["open"] = f"{type(exc).__name__}: {exc}"
    else:
        with own:
            report["open"] = "ok"
            report["seen"] = Observations().record(own.lookup_many(vis_requests()))
            report["applied"] = own.apply(vis_delta(2)).status
            report["seen_after"] = Observations().record(own.lookup_many(vis_requests()))
    conn.send(report)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.store._workers")
    commands = parser.add_subparsers(dest="command", required=True)
    crash = commands.add_parser("crash-writer")
    crash.add_argument("path")
    crash.add_argument("--start", type=int, required=True)
    crash.add_argument("--durability", choices=("process", "power"), default="process")
    inbox = commands.add_parser("inbox-writer")
    inbox.add_argument("path")
    inbox.add_argument("--start", type=int, required=True)
    inbox.add_argument("--seed", type=int, required=True)
    inbox.add_argument("--hold", action="store_true")
    reader = commands.add_parser("reader")
    reader.add_argument("path")
    reader.add_argument("--final", type=int, required=True)
    reader.add_argument("--budget", type=int, default=None)
    reader.add_argument("--timeout", type=float, default=30.0)
    reader.add_argument("--shared", default=None)
    reader.add_argument("--into", action="store_true")
    tier_writer = commands.add_parser("tier-writer")
    tier_writer.add_argument("path")
    tier_writer.add_argument("--shared", required=True)
    tier_writer.add_argument("--start", type=int, required=True)
    tier_writer.add_argument("--final", type=int, required=True)
    tier_writer.add_argument("--pause", type=float, default=0.01)
    grow_writer = commands.add_parser("grow-writer")
    grow_writer.add_argument("shared")
    grow_writer.add_argument("--start", type=int, required=True)
    grow_writer.add_argument("--final", type=int, required=True)
    grow_writer.add_argument("--pause", type=float, default=0.01)
    grow_reader = commands.add_parser("grow-reader")
    grow_reader.add_argument("shared")
    grow_reader.add_argument("--final", type=int, required=True)
    grow_reader.add_argument("--timeout", type=float, default=60.0)
    hold = commands.add_parser("hold-write")
    hold.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "crash-writer":
        return _crash_writer(args.path, args.start, args.durability)
    if args.command == "inbox-writer":
        return _inbox_writer(args.path, args.start, args.seed, args.hold)
    if args.command == "reader":
        return _reader(args.path, args.final, args.budget, args.timeout, args.shared, args.into)
    if args.command == "tier-writer":
        return _tier_writer(args.path, args.shared, args.start, args.final, args.pause)
    if args.command == "grow-writer":
        return _grow_writer(args.shared, args.start, args.final, args.pause)
    if args.command == "grow-reader":
        return _grow_reader(args.shared, args.final, args.timeout)
    return _hold_write(args.path)


if __name__ == "__main__":
    sys.exit(main())
