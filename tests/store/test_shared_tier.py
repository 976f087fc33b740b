"""The shared RAM tier (store/shared_tier.py): invariants across processes.

Reader processes map the tier read-only while the writer publishes the visibility stream (delta k sets a group of
2,000 rows in two slots to ``float(k)``): no reader ever sees a mixed group or goes back; a writer SIGKILLed
mid-publish leaves readers on the previous whole state until a restarted writer takes over; a tier that grows
(new heads) under reader threads never shows half a delta; freed rows are reused (no growth from updates). Growth
of one slot replaces only that slot's file: a big slot's file stays the same file while a small slot grows under
reader processes, a writer SIGKILLed in any window of a growth leaves readers on a whole state, and files no head
names are unlinked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from liverank.store import EmbeddingStore, SlotConfig
from liverank.store.ram_tier import DELETED_MS
from liverank.store.shared_tier import (
    GROWTH_STALL_ENV,
    GROWTH_WINDOWS,
    RETIRED,
    STALL_ENV,
    SharedTierReader,
    SharedTierWriter,
    SlotChange,
    TierEpoch,
    read_control,
    tier_files,
)
from tests.store._workers import (
    GROW_SMALL,
    SMALL_MARKER_IDS,
    VIS_MAP_SIZE_BYTES,
    VIS_SLOTS,
    ChildLines,
    Observations,
    build_grow_state,
    check_grow_read,
    grow_changes,
    small_new_ids,
    start_child,
    vis_delta,
    vis_requests,
)
from tests.store.test_visibility import (
    GROWTH_DELTAS,
    GROWTH_MARKER_IDS,
    GROWTH_SLOT,
    check,
    check_growth_read,
    growth_chunk,
    growth_delta,
)

pytestmark = pytest.mark.slow

N_DELTAS = 40
N_READERS = 3


def start_readers(
    path: Path, shared: Path, final: int, n: int, budget: int | None = None, into: bool = False
) -> list[ChildLines]:
    readers = []
    for _ in range(n):
        args = ["reader", str(path), "--final", str(final), "--timeout", "60", "--shared", str(shared)]
        if budget is not None:
            args += ["--budget", str(budget)]
        if into:
            args.append("--into")
        readers.append(ChildLines(start_child(*args)))
    return readers


def wait_saw(lines: ChildLines, k: int, timeout_s: float = 60.0) -> None:
    """Until a reader child has reported reading state ``k`` (or a later one)."""
    deadline = time.monotonic() + timeout_s
    while max(lines.events("saw"), default=0) < k:
        assert not lines.eof, f"reader exited before reading state {k}"
        assert time.monotonic() < deadline, f"reader did not read state {k} within {timeout_s} s"
        lines.drain_for(0.01)


def finish(lines: ChildLines) -> None:
    """Wait for a child to exit and close its pipes."""
    proc = lines.proc
    try:
        lines.read_to_eof(timeout_s=90)
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child, reap it and close its pipes."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def finish_reader(lines: ChildLines) -> dict[str, Any]:
    finish(lines)
    summary: dict[str, Any] = json.loads(
        next(line for line in lines.lines if line.startswith("summary "))[len("summary ") :]
    )
    return summary


@pytest.mark.parametrize(
    ("budget", "source", "into"),
    [(None, "ram", False), (600, "ram+lmdb", False), (None, "ram:into", True), (600, "ram+lmdb", True)],
)
def test_reader_processes_never_see_a_mixed_delta(tmp_path: Path, budget: int | None, source: str, into: bool) -> None:
    """``into``: the readers read as the ranker does, in one pass into input buffers (``lookup_into``); with rows
    outside the tier (a budget) that declines and ``lookup_many`` answers."""
    path, shared = tmp_path / "store", tmp_path / "tier"
    kwargs: dict[str, Any] = {} if budget is None else {"ram_budget_rows": budget}
    with EmbeddingStore.open(
        path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES, tier="publish", shared_tier_dir=shared, **kwargs
    ) as store:
        store.apply(vis_delta(1))
        readers = start_readers(path, shared, N_DELTAS, N_READERS, budget, into)
        try:
            for lines in readers:
                lines.wait_for("ready", timeout_s=60)
            for k in range(2, N_DELTAS + 1):
                assert store.apply(vis_delta(k)).status == "applied"
                for lines in readers:  # paced by the readers: each reads every state, however slow the machine
                    wait_saw(lines, k)
        finally:
            summaries = [finish_reader(lines) for lines in readers]
    for i, summary in enumerate(summaries):
        check(summary, f"reader process {i}", min_distinct=N_DELTAS - 1)
        assert summary["sources"].get(source, 0) >= 1, summary


def test_writer_killed_mid_publish_leaves_readers_on_the_previous_whole_state(tmp_path: Path) -> None:
    path, shared = tmp_path / "store", tmp_path / "tier"
    stall_at, final = 10, 20
    os.environ[STALL_ENV] = str(stall_at)  # only for the first writer: the child copies the environment now
    try:
        writer = start_child("tier-writer", str(path), "--shared", str(shared), "--start", "1", "--final", str(final))
    finally:
        del os.environ[STALL_ENV]
    lines = ChildLines(writer)
    lines.wait_for("ready", timeout_s=60)
    readers = start_readers(path, shared, final, 2)
    try:
        deadline = time.monotonic() + 60
        while not (shared / f"stalled-{stall_at}").exists():
            assert time.monotonic() < deadline, "the writer never reached the stall point"
            lines.drain_for(0.05)
        for reader in readers:  # the stalled state is what they read first
            reader.wait_for("ready", timeout_s=60)
        sigkill(writer)
        # LMDB holds delta 10, the tier's flip never happened: readers answer state 9, whole, from the tier.
        with EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES, tier="map", shared_tier_dir=shared) as viewer:
            for _ in range(20):
                got = viewer.lookup_many(vis_requests())
                seen = Observations()
                assert seen.record(got) == stall_at - 1, seen.violations
                assert (seen.violations, got.source, got.generation) == ([], "ram", stall_at - 1)
            assert viewer.tier_fallbacks == 0
            restarted = start_child(
                "tier-writer", str(path), "--shared", str(shared), "--start", str(stall_at + 1), "--final", str(final)
            )
            finish(ChildLines(restarted))
            seen = Observations()
            assert seen.record(viewer.lookup_many(vis_requests())) == final, seen.violations
    finally:
        summaries = [finish_reader(lines) for lines in readers]
    for i, summary in enumerate(summaries):
        # The writer child publishes on its own, unpaced: what is guaranteed is the stalled state and the final one.
        check(summary, f"reader process {i}", final=final, min_distinct=2)
        assert stall_at - 1 in summary["ks"], summary


def _change(k: int) -> list[SlotChange]:
    (slot,) = growth_delta(k).slots.values()
    ids = np.asarray(slot.ids, dtype=np.uint64)
    order = np.argsort(ids)
    return [SlotChange(GROWTH_SLOT, ids[order], slot.values[order], slot.updated_at_ms[order], np.empty(0, np.uint64))]


def test_readers_never_see_half_a_delta_while_the_tier_grows(tmp_path: Path) -> None:
    """The tier starts empty and regrows (new segments) several times; reader threads keep mapping the new ones."""
    writer = SharedTierWriter(tmp_path, budget_rows=10**9)
    writer.build({GROWTH_SLOT.name: GROWTH_SLOT}, {}, [], TierEpoch(0, {}, {}, {}))
    reader = SharedTierReader(tmp_path)
    all_ids = np.concatenate([GROWTH_MARKER_IDS, *(growth_chunk(j) for j in range(1, GROWTH_DELTAS + 1))])
    done = threading.Event()
    problems: list[str] = []
    reads = [0, 0]

    def read(i: int) -> None:
        while not done.is_set() and not problems:
            got = reader.read({GROWTH_SLOT.name: all_ids})
            if got is None or got.epoch.generation == 0:
                continue
            slot = got.reads[GROWTH_SLOT.name]
            unseen = slot.updated_at_ms == DELETED_MS
            problem = check_growth_read(slot.vectors, unseen, got.epoch.generation)
            if problem:
                problems.append(problem)
            reads[i] += 1

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    segments = set()
    try:
        for k in range(1, GROWTH_DELTAS + 1):
            writer.publish(_change(k), k, {"grow": k})
            segments.add(writer._segment_id)
            time.sleep(0.003)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not problems, problems[0]
    assert len(segments) >= 3, f"the tier never regrew: {segments}"
    final = reader.read({GROWTH_SLOT.name: all_ids})
    assert final is not None
    assert final.epoch.generation == GROWTH_DELTAS
    assert sum(reads) >= 1


def test_updates_reuse_freed_rows_and_tombstones_read_unseen(tmp_path: Path) -> None:
    slot = SlotConfig("s", 4)
    writer = SharedTierWriter(tmp_path, budget_rows=10**6)
    writer.build({"s": slot}, {}, [], TierEpoch(0, {}, {}, {}))
    ids = np.arange(100, 600, dtype=np.uint64)
    none = np.empty(0, np.uint64)
    reader = SharedTierReader(tmp_path)
    segment_after_first = None
    for k in range(1, 51):
        values = np.full((len(ids), 4), float(k), np.float32)
        writer.publish([SlotChange(slot, ids, values, np.full(len(ids), k, np.int64), none)], k, {"p": k})
        if k == 2:
            segment_after_first = writer._segment_id
    assert writer._segment_id == segment_after_first, "rewriting the same ids grew the tier: freed rows not reused"
    got = reader.read({"s": ids})
    assert got is not None
    assert got.epoch.applied_seq == {"p": 50}
    assert (got.reads["s"].vectors == 50.0).all()
    gone = ids[:10]
    empty_values = np.empty((0, 4), np.float32)
    writer.publish([SlotChange(slot, none, empty_values, np.empty(0, np.int64), gone)], 51, {"p": 51})
    got = reader.read({"s": ids})
    assert got is not None
    assert (got.reads["s"].updated_at_ms[:10] == DELETED_MS).all()
    assert (got.reads["s"].vectors[10:] == 50.0).all()
    assert got.epoch.resident == {"s": len(ids) - 10}


def test_only_the_slot_that_overflows_grows(tmp_path: Path) -> None:
    """A small slot filling up with new ids gets a bigger segment; a big slot keeps its size (its memory)."""
    big, small = SlotConfig("big", 4), SlotConfig("small", 4)
    big_ids = np.arange(1, 5_001, dtype=np.uint64)

    def rows(ids: np.ndarray[Any, Any], value: float) -> tuple[Any, ...]:
        return ids, np.full((len(ids), 4), value, np.float32), np.full(len(ids), 1_000, np.int64)

    writer = SharedTierWriter(tmp_path, budget_rows=10**9)
    chunks = [("big", *rows(big_ids, 1.0))]
    writer.build({"big": big, "small": small}, {"big": len(big_ids)}, chunks, TierEpoch(0, {}, {}, {}))
    first = writer._segment_id
    big_file = writer.slot_files()["big"]
    big_inode = big_file.stat().st_ino
    big_capacity = writer._segment.slots["big"].capacity  # type: ignore[union-attr]
    big_arena = len(writer._segment.slots["big"].updated)  # type: ignore[union-attr]
    small_capacity = writer._segment.slots["small"].capacity  # type: ignore[union-attr]
    seq = 0
    while writer._segment_id == first:  # new small ids until the small slot must grow
        seq += 1
        new = np.arange(seq * 1_000, seq * 1_000 + 1_000, dtype=np.uint64) + 10**6
        writer.publish([SlotChange(small, *rows(new, float(seq)), np.empty(0, np.uint64))], seq, {"p": seq})
        assert seq < 100, "the small slot never grew"
    grown = writer._segment
    assert grown is not None
    assert writer.slot_files()["big"] == big_file
    assert writer.slot_files()["big"].stat().st_ino == big_inode
    assert grown.slots["small"].capacity > small_capacity
    assert (grown.slots["big"].capacity, len(grown.slots["big"].updated)) == (big_capacity, big_arena)
    got = SharedTierReader(tmp_path).read({"big": big_ids, "small": new})
    assert got is not None
    assert got.epoch.generation == seq
    assert (got.reads["big"].vectors == 1.0).all()  # the big slot's rows were carried over whole
    assert (got.reads["small"].vectors == float(seq)).all()
    # The carried-over slot keeps working: updates and new ids land, untouched rows keep their values.
    moved = np.concatenate([big_ids[:100], np.arange(10**5, 10**5 + 50, dtype=np.uint64)])
    writer.publish([SlotChange(big, *rows(moved, 7.0), np.empty(0, np.uint64))], seq + 1, {"p": seq + 1})
    got = SharedTierReader(tmp_path).read({"big": np.concatenate([moved, big_ids[100:]])})
    assert got is not None
    assert (got.reads["big"].vectors[: len(moved)] == 7.0).all()
    assert (got.reads["big"].vectors[len(moved) :] == 1.0).all()
    assert (got.reads["big"].rows >= 0).all()


# --- growth of one slot: separate files -------------------------------------------------------------------------


def start_grow_readers(shared: Path, final: int, n: int) -> list[ChildLines]:
    return [
        ChildLines(start_child("grow-reader", str(shared), "--final", str(final), "--timeout", "90")) for _ in range(n)
    ]


def check_grow_summary(summary: dict[str, Any], who: str, final: int) -> None:
    assert not summary["violations"], f"{who}: {summary['violations']}"
    assert summary["last_k"] == final, f"{who} never saw the final state: {summary}"
    # A give-up (64 reads in a row overlapping publishes) falls back to LMDB: rare, never the rule.
    assert summary["gave_up"] <= max(1, summary["reads"] // 100), summary


def named_files(shared: Path) -> set[str]:
    """The files the live head names, with control and the head itself."""
    reader = SharedTierReader(shared)
    return {"control", f"head-{read_control(shared)}", *(p.name for p in reader.slot_files().values())}


def test_a_small_slot_grows_under_reader_processes_and_the_big_slot_keeps_its_file(tmp_path: Path) -> None:
    final = 40
    writer = SharedTierWriter(tmp_path, budget_rows=10**9)
    build_grow_state(writer, 0)
    big_file = writer.slot_files()["big"]
    big_inode = big_file.stat().st_ino
    small_files = {writer.slot_files()["small"]}
    readers = start_grow_readers(tmp_path, final, N_READERS)
    try:
        for lines in readers:
            lines.wait_for("ready", timeout_s=60)
        for k in range(1, final + 1):
            writer.publish(grow_changes(k), k, {"grow": k})
            small_files.add(writer.slot_files()["small"])
            time.sleep(0.01)
    finally:
        summaries = [finish_reader(lines) for lines in readers]
    for i, summary in enumerate(summaries):
        check_grow_summary(summary, f"reader process {i}", final)
    assert len(small_files) >= 3, f"the small slot never regrew: {small_files}"
    # The big slot's file is the same file (same name, same inode): no growth copied or rewrote it.
    assert writer.slot_files()["big"] == big_file
    assert big_file.stat().st_ino == big_inode
    assert {p.name for p in tier_files(tmp_path)} == named_files(tmp_path)


@pytest.mark.parametrize("window", GROWTH_WINDOWS)
def test_writer_killed_in_a_growth_window_leaves_readers_on_a_whole_state(tmp_path: Path, window: str) -> None:
    final = 30
    os.environ[GROWTH_STALL_ENV] = window  # only for the first writer: the child copies the environment now
    try:
        writer = start_child("grow-writer", str(tmp_path), "--start", "1", "--final", str(final))
    finally:
        del os.environ[GROWTH_STALL_ENV]
    lines = ChildLines(writer)
    lines.wait_for("ready", timeout_s=60)
    deadline = time.monotonic() + 60
    while not (tmp_path / f"stalled-{window}").exists():
        assert time.monotonic() < deadline, "the writer never reached the growth window"
        lines.drain_for(0.05)
    lines.drain_for(0.05)
    applied = [int(line.split()[1]) for line in lines.lines if line.startswith("applied ")]
    stalled_at = max(applied, default=0)  # the growth belongs to the publish after the last one reported
    readers = start_grow_readers(tmp_path, final, 2)
    try:
        for reader in readers:
            reader.wait_for("ready", timeout_s=60)
        sigkill(writer)
        # Whatever head control names now (the old one, or the new one of the killed growth), it is whole.
        viewer = SharedTierReader(tmp_path)
        for _ in range(20):
            got = check_grow_read(viewer)
            assert got is not None
            assert got == (stalled_at, None), got
        restarted = start_child("grow-writer", str(tmp_path), "--start", str(stalled_at + 1), "--final", str(final))
        finish(ChildLines(restarted))
        assert check_grow_read(viewer) == (final, None)
    finally:
        summaries = [finish_reader(reader) for reader in readers]
    for i, summary in enumerate(summaries):
        check_grow_summary(summary, f"reader process {i}", final)
        assert stalled_at in summary["ks"], summary
    # The restarted writer unlinked the killed growth's leftovers (half-built files, heads it never named).
    assert {p.name for p in tier_files(tmp_path)} == named_files(tmp_path)


def test_files_no_head_names_are_unlinked_across_many_growths(tmp_path: Path) -> None:
    writer = SharedTierWriter(tmp_path, budget_rows=10**9)
    build_grow_state(writer, 0)
    reader = SharedTierReader(tmp_path)  # keeps maps of files the writer unlinks: they stay readable
    heads = set()
    mapped = []
    for k in range(1, 61):
        writer.publish(grow_changes(k), k, {"grow": k})
        heads.add(read_control(tmp_path))
        assert check_grow_read(reader) == (k, None)
        mapped.append(reader._segment)
    assert len(heads) >= 4, f"too few growths to tell: {heads}"
    # Every head the reader moved away from was retired by the writer (it shares slot files the writer goes on
    # writing); the live one was not.
    live = reader._segment
    assert live is not None
    assert live.g != RETIRED
    assert all(head is not None and head.g == RETIRED for head in mapped if head is not live)
    assert sorted(p.name for p in tier_files(tmp_path)) == sorted(named_files(tmp_path))
    assert len(list(tmp_path.iterdir())) == 4  # control, one head, two slot files
    got = reader.read({GROW_SMALL.name: np.concatenate([SMALL_MARKER_IDS, small_new_ids(1), small_new_ids(60)])})
    assert got is not None
    assert (got.reads[GROW_SMALL.name].rows > 0).all()


def test_a_retired_head_never_yields_a_read(tmp_path: Path) -> None:
    """A retired head offers no epoch, so any seqlock loop over it (which needs an epoch) retries instead of trusting
    slot files the writer goes on writing; the reader then reads the live head."""
    writer = SharedTierWriter(tmp_path, budget_rows=10**9)
    build_grow_state(writer, 0)
    reader = SharedTierReader(tmp_path)
    assert check_grow_read(reader) == (0, None)
    old = reader._segment
    assert old is not None
    k = 0
    while read_control(tmp_path) == reader._segment_id:  # until the small slot grows: a new head
        k += 1
        writer.publish(grow_changes(k), k, {"grow": k})
    assert old.g == RETIRED
    assert old.epoch(old.g & 1, old.g) is None
    assert check_grow_read(reader) == (k, None)
    assert reader._segment is not old
    assert reader.gave_up == 0
