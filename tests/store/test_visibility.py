"""All-or-nothing visibility: readers looping over lookups while deltas that set whole groups of rows to one value
are applied never observe a mixed group, and never go back to an older one.

Delta k sets the same 2,000 ids (1,000 in each of two slots) all to ``float(k)`` with event time k; the store sees no
other delta, so its generation is k too. Every ``lookup_many`` of the whole group must read one k for every row of
both slots, at generation k (see ``Observations`` in ``tests/store/_workers.py``). Readers: another process with its
own store on the same path (it follows the writer through the LMDB changelog), threads in the writer's process (the
RAM tier's seqlock), a RAM budget smaller than the group (RAM and LMDB mixed in one answer), and a table that grows
while it is read (the tier's arrays and hash index are replaced under readers).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from liverank.store import EmbeddingStore, SlotConfig, SlotDelta, SparseDelta
from tests.store._workers import (
    VIS_IDS_PER_SLOT,
    VIS_MAP_SIZE_BYTES,
    VIS_SLOTS,
    ChildLines,
    Observations,
    start_child,
    vis_delta,
    vis_requests,
)

N_DELTAS = 40
BUDGET_ROWS = 600  # of the group's 2,000 rows: both slots are partly resident
MIN_DISTINCT_K = 5
# The writer applies delta k + 1 once every reader has seen state k (readers keep looping, so deltas still land
# mid-read): every state is read, however fast or slow the machine. The deadline only catches a hung reader.
SEEN_DEADLINE_S = 120.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = SEEN_DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.001)


pytestmark = pytest.mark.slow


def apply_stream(store: EmbeddingStore, seen: Callable[[int], None], n_deltas: int = N_DELTAS) -> None:
    """Apply deltas 1..n; after each, ``seen(k)`` returns once the readers have read state k."""
    for k in range(1, n_deltas + 1):
        assert store.apply(vis_delta(k)).status == "applied"
        seen(k)


def check(
    seen: Observations | dict[str, Any], who: str, final: int = N_DELTAS, min_distinct: int = MIN_DISTINCT_K
) -> None:
    """No violation, the final state read, and at least ``min_distinct`` states read. Only a writer paced by its
    readers guarantees many states; one that is not (a writer process publishing on its own) passes the number of
    states it guarantees, or the check would depend on the machine's speed."""
    summary = seen.to_json() if isinstance(seen, Observations) else seen
    assert not summary["violations"], f"{who}: {summary['violations']}"
    assert summary["last_k"] == final, f"{who} never saw the final delta: {summary}"
    assert len(summary["ks"]) >= min_distinct, f"{who} read too few states while deltas landed: {summary}"
    assert summary["reads"] >= len(summary["ks"])


def read_in_threads(
    store: EmbeddingStore, n_threads: int, writer: Callable[[Callable[[int], None]], None]
) -> list[Observations]:
    """Readers loop over the whole group while ``writer`` runs, then read once more after it is done. ``writer``
    gets a ``seen(k)`` that waits until every reader has read state k (or one failed)."""
    requests = vis_requests()
    done = threading.Event()
    observed = [Observations() for _ in range(n_threads)]
    failures: list[BaseException] = []

    def read(seen: Observations) -> None:
        try:
            while not done.is_set():
                seen.record(store.lookup_many(requests))
            seen.record(store.lookup_many(requests))
        except BaseException as exc:
            failures.append(exc)

    def seen_by_all(k: int) -> None:
        wait_until(lambda: bool(failures) or all(s.last_k >= k for s in observed), f"every reader seeing state {k}")

    threads = [threading.Thread(target=read, args=(seen,), name=f"reader-{i}") for i, seen in enumerate(observed)]
    for thread in threads:
        thread.start()
    try:
        writer(seen_by_all)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a reader thread hung"
    if failures:
        raise AssertionError(f"a reader thread failed: {failures[0]!r}") from failures[0]
    return observed


@pytest.mark.parametrize(("budget", "source"), [(None, "ram"), (BUDGET_ROWS, "ram+lmdb")])
def test_reader_process_never_sees_a_mixed_group(tmp_path: Path, budget: int | None, source: str) -> None:
    path = tmp_path / "store"
    with EmbeddingStore.open(path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES) as store:
        args = ["reader", str(path), "--final", str(N_DELTAS), "--timeout", str(2 * SEEN_DEADLINE_S)]
        if budget is not None:
            args += ["--budget", str(budget)]
        with start_child(*args) as proc:
            lines = ChildLines(proc)
            lines.wait_for("ready", timeout_s=30)
            apply_stream(store, lambda k: lines.wait_for(f"saw {k}", timeout_s=SEEN_DEADLINE_S))
            lines.read_to_eof(timeout_s=60)
            proc.wait(timeout=30)
            assert proc.stderr is not None
            stderr = proc.stderr.read().decode(errors="replace")
        assert proc.returncode == 0, stderr
        summary = json.loads(next(line for line in lines.lines if line.startswith("summary "))[len("summary ") :])
    check(summary, "reader process")
    # It followed the writer through the changelog into its own RAM tier, not only from LMDB.
    assert summary["sources"].get(source, 0) >= 1, summary["sources"]


def test_reader_threads_in_the_writers_process_never_see_a_mixed_group(tmp_path: Path) -> None:
    with EmbeddingStore.open(tmp_path / "store", slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES) as store:
        observed = read_in_threads(store, 3, lambda seen: apply_stream(store, seen))
    for i, seen in enumerate(observed):
        check(seen, f"reader thread {i}")
        assert seen.sources["ram"] >= 1, seen.sources


def test_budget_limited_store_mixing_ram_and_lmdb_never_shows_a_mixed_group(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with EmbeddingStore.open(
        path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES, ram_budget_rows=BUDGET_ROWS
    ) as store:
        observed = read_in_threads(store, 2, lambda seen: apply_stream(store, seen))
    for i, seen in enumerate(observed):
        check(seen, f"reader thread {i}")
        assert seen.sources["ram+lmdb"] >= 1, seen.sources
    # Reopened, the tier warms up to the budget and the rest comes from LMDB: still one state per answer.
    with EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES, ram_budget_rows=BUDGET_ROWS) as store:
        seen = Observations()
        seen.record(store.lookup_many(vis_requests()))
        assert (seen.violations, seen.last_k, dict(seen.sources)) == ([], N_DELTAS, {"ram+lmdb": 1})


def test_ram_budget_holds_for_deltas_spanning_several_slots(tmp_path: Path) -> None:
    """At most ``ram_budget_rows`` rows are resident, whether they came from a delta or from warm-up."""
    path = tmp_path / "store"
    budget = 3 * VIS_IDS_PER_SLOT // 2  # 1,500 of the 2,000 rows
    with EmbeddingStore.open(path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES, ram_budget_rows=budget) as store:
        store.apply(vis_delta(1))
        after_delta = store.stats().resident_rows_by_slot
        seen = Observations()
        seen.record(store.lookup_many(vis_requests()))
        assert seen.violations == []
    with EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES, ram_budget_rows=budget) as store:
        after_warm = store.stats().resident_rows_by_slot
    assert sum(after_warm.values()) <= budget, after_warm
    assert sum(after_delta.values()) <= budget, f"budget {budget}, resident after one two-slot delta: {after_delta}"


# --- a table that grows while it is read --------------------------------------------------------------------------

GROWTH_SLOT = SlotConfig("grow", 4)
GROWTH_MARKER_IDS = np.arange(10**9, 10**9 + 200, dtype=np.uint64)
GROWTH_FIRST_ROWS = 3000  # delta 1: marker + 2,800 fresh rows: the tier sizes its arrays to fit exactly
GROWTH_CHUNK_ROWS = 250  # later deltas: 250 fresh rows each, so the arrays are regrown every so often
GROWTH_DELTAS = 60
GROWTH_ROUNDS = 12


def growth_chunk(k: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    if k == 1:
        return np.arange(GROWTH_FIRST_ROWS - len(GROWTH_MARKER_IDS), dtype=np.uint64)
    start = GROWTH_FIRST_ROWS - len(GROWTH_MARKER_IDS) + (k - 2) * GROWTH_CHUNK_ROWS
    return np.arange(start, start + GROWTH_CHUNK_ROWS, dtype=np.uint64)


def growth_delta(k: int) -> SparseDelta:
    ids = np.concatenate([GROWTH_MARKER_IDS, growth_chunk(k)])
    n = len(ids)
    rows = SlotDelta(ids, np.full((n, GROWTH_SLOT.dim), float(k), np.float32), np.full(n, k, np.int64))
    return SparseDelta("grow", k, "", k, {GROWTH_SLOT.name: rows})


GROWTH_CHUNK_OF = np.concatenate([np.full(len(growth_chunk(j)), j) for j in range(1, GROWTH_DELTAS + 1)])


def check_growth_read(vectors: np.ndarray[Any, Any], unseen: np.ndarray[Any, Any], generation: int) -> str | None:
    """The marker rows read k; chunk j reads j for j <= k and is unseen for j > k. None if so, else what is wrong."""
    n_marker = len(GROWTH_MARKER_IDS)
    marker = vectors[:n_marker]
    k = int(marker[0, 0])
    if not (marker == k).all():
        return f"marker rows mixed: {np.unique(marker)[:6].tolist()}"
    if k != generation:
        return f"marker reads {k} at generation {generation}"
    chunk_of = GROWTH_CHUNK_OF
    rows, rows_unseen = vectors[n_marker:, 0], unseen[n_marker:]
    written = chunk_of <= k
    if not (rows[written] == chunk_of[written]).all() or rows_unseen[written].any():
        return f"state {k}: a row of a chunk <= {k} does not read its chunk's value"
    if not rows_unseen[~written].all() or rows[~written].any():
        return f"state {k}: rows of a chunk after {k} are visible"
    return None


def run_growth_round(path: Path, all_ids: np.ndarray[Any, np.dtype[np.uint64]]) -> tuple[list[str], int]:
    """One fresh store: two reader threads look up ``all_ids`` while the growth stream is applied."""
    done = threading.Event()
    problems: list[str] = []
    reads = [0, 0]
    with EmbeddingStore.open(path, slots=[GROWTH_SLOT], map_size_bytes=VIS_MAP_SIZE_BYTES) as store:

        def read(i: int) -> None:
            while not done.is_set() and not problems:
                try:
                    got = store.lookup_many({GROWTH_SLOT.name: all_ids})
                except Exception as exc:
                    problems.append(f"lookup_many raised {exc!r}")
                    return
                slot = got.slots[GROWTH_SLOT.name]
                problem = check_growth_read(slot.vectors, slot.unseen, got.generation)
                if problem:
                    problems.append(f"{problem} (source {got.source})")
                reads[i] += 1

        threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            for k in range(1, GROWTH_DELTAS + 1):
                store.apply(growth_delta(k))
                # Two more reads each (so one started after this apply) before the next delta: reads overlap the
                # whole stream on any machine.
                before = list(reads)
                wait_until(
                    lambda before=before: bool(problems) or all(r >= b + 2 for r, b in zip(reads, before, strict=True)),
                    f"both readers reading after delta {k}",
                )
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a reader thread hung"
        final = store.lookup_many({GROWTH_SLOT.name: all_ids})
        slot = final.slots[GROWTH_SLOT.name]
        assert check_growth_read(slot.vectors, slot.unseen, final.generation) is None
        assert final.generation == GROWTH_DELTAS
    return problems, sum(reads)


def test_readers_during_tier_growth_never_fail_or_see_a_partial_delta(tmp_path: Path) -> None:
    """Each delta rewrites a marker group and adds a chunk of fresh rows; readers look up every row the stream will
    ever write. Whenever the tier regrows its arrays, a reader still holding the old ones must retry or fall back
    to LMDB, not fail and not see half a delta. Several fresh stores, since regrowth happens a few times per store."""
    all_ids = np.concatenate([GROWTH_MARKER_IDS, *(growth_chunk(j) for j in range(1, GROWTH_DELTAS + 1))])
    total_reads = 0
    for round_ in range(GROWTH_ROUNDS):
        problems, reads = run_growth_round(tmp_path / f"store-{round_}", all_ids)
        assert not problems, f"round {round_}: {problems[0]}"
        total_reads += reads
    assert total_reads >= GROWTH_ROUNDS * GROWTH_DELTAS * 4, f"only {total_reads} reads overlapped the writes"
