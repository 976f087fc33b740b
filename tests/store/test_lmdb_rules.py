"""The LMDB rules the store promises to keep (py-lmdb's list, see ``store/lmdb_store.py``), checked on real
environments in temporary directories and, where a rule is about processes, in real child processes.

- one environment per path per process;
- open after fork: a forked child sees the parent's handle as closed and opens its own;
- buffers are copied: what a lookup returned stays valid and unchanged after later deltas and after close;
- the map is sized up front and "map full" is a clear ``StoreFull``: nothing of the refused delta lands, and
  deletes keep working;
- readers never wait for the writer;
- a directory that is not a store raises ``NotAStore`` with a message that says why.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from liverank.store import (
    EmbeddingStore,
    NotAStore,
    SlotConfig,
    SlotDelta,
    SparseDelta,
    StoreAlreadyOpen,
    StoreClosed,
    StoreFull,
)
from tests.store._workers import (
    VIS_MAP_SIZE_BYTES,
    VIS_SLOTS,
    ChildLines,
    Observations,
    forked_child,
    start_child,
    vis_delta,
    vis_requests,
)

LIVENESS_BOUND_S = 5.0  # generous: this checks that a reader is not blocked, not how fast it is


def read_group(store: EmbeddingStore) -> int:
    """The one value the visibility group reads (asserting it is one value, at a matching generation)."""
    seen = Observations()
    k = seen.record(store.lookup_many(vis_requests()))
    assert seen.violations == []
    return k


# --- one environment per path per process --------------------------------------------------------------------------


def test_second_open_of_a_path_in_one_process_raises_store_already_open(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = EmbeddingStore.open(path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES)
    try:
        first.apply(vis_delta(1))
        with pytest.raises(StoreAlreadyOpen, match="already open"):
            EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)
        # Another spelling of the same directory is the same environment.
        (tmp_path / "alias").symlink_to(path, target_is_directory=True)
        for spelling in (tmp_path / "alias", path / ".", Path(os.path.relpath(path))):
            with pytest.raises(StoreAlreadyOpen):
                EmbeddingStore.open(spelling, map_size_bytes=VIS_MAP_SIZE_BYTES)
        # The refused opens left the first handle alone.
        assert read_group(first) == 1
        first.apply(vis_delta(2))
    finally:
        first.close()
    with pytest.raises(StoreClosed):
        first.lookup("user", [1])
    first.close()  # closing twice is harmless
    with EmbeddingStore.open(tmp_path / "alias", map_size_bytes=VIS_MAP_SIZE_BYTES) as again:
        assert read_group(again) == 2
    with EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES) as again:
        assert read_group(again) == 2


# --- open after fork -----------------------------------------------------------------------------------------------


def test_forked_child_sees_the_parents_handle_closed_and_opens_its_own(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with EmbeddingStore.open(path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES) as store:
        store.apply(vis_delta(1))
        assert read_group(store) == 1
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=forked_child, args=(store, str(path), send))
        child.start()
        send.close()
        try:
            assert receive.poll(60), "the forked child sent no report"
            report: dict[str, Any] = receive.recv()
        finally:
            receive.close()
            child.join(timeout=60)
        assert child.exitcode == 0
        child.close()
        inherited = {step: report[step] for step in ("lookup", "lookup_many", "apply", "stats", "flush")}
        assert inherited == dict.fromkeys(inherited, "StoreClosed"), report
        # With the parent still holding the path open, the child opens its own environment and writes through it.
        assert report["open"] == "ok", f"the forked child could not open the store itself: {report['open']}"
        assert (report["seen"], report["applied"], report["seen_after"]) == (1, "applied", 2), report
        # The parent's handle survived the child closing its copy, and it follows the child's delta.
        assert read_group(store) == 2
        assert store.apply(vis_delta(3)).status == "applied"
        assert read_group(store) == 3


# --- buffers are copied --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ram_budget_rows", [None, 0], ids=["ram-tier", "lmdb-reads"])
def test_lookup_results_stay_valid_after_later_deltas_and_after_close(
    tmp_path: Path, ram_budget_rows: int | None
) -> None:
    kwargs: dict[str, Any] = {} if ram_budget_rows is None else {"ram_budget_rows": ram_budget_rows}
    store = EmbeddingStore.open(tmp_path / "store", slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES, **kwargs)
    try:
        store.apply(vis_delta(1))
        first = store.lookup_many(vis_requests())
        assert first.source == ("ram" if ram_budget_rows is None else "ram+lmdb")
        kept = {name: (s.vectors.copy(), s.updated_at_ms.copy(), s.unseen.copy()) for name, s in first.slots.items()}
        store.apply(vis_delta(2))
        store.apply(vis_delta(3))
        # Scribbling on an answer changes neither the store nor other answers.
        first.slots["user"].vectors[:] = -1.0
        assert read_group(store) == 3
        first.slots["user"].vectors[:] = kept["user"][0]
    finally:
        store.close()
    for name, slot in first.slots.items():
        vectors, updated, unseen = kept[name]
        assert np.array_equal(slot.vectors, vectors)
        assert np.array_equal(slot.updated_at_ms, updated)
        assert np.array_equal(slot.unseen, unseen)
        assert (slot.vectors == 1.0).all()
    # Still readable (not views of a closed map): touch every byte.
    assert float(sum(s.vectors.sum() for s in first.slots.values())) == 2 * 1000 * 8


# --- map sized up front, "map full" is StoreFull ------------------------------------------------------------------

FULL_MAP_SIZE_BYTES = 2 << 20
FULL_RESERVE_BYTES = 256 << 10
FULL_SLOT = SlotConfig("item", 8)
FULL_ROWS_PER_DELTA = 500
FULL_TOMBSTONES_PER_DELTA = 1000


def full_delta(seq: int, ids: range = range(0), tombstones: range = range(0)) -> SparseDelta:
    n = len(ids)
    rows = SlotDelta(
        np.asarray(ids, dtype=np.uint64),
        np.full((n, FULL_SLOT.dim), float(seq), dtype=np.float32),
        np.full(n, seq, dtype=np.int64),
        tombstones=np.asarray(tombstones, dtype=np.uint64),
    )
    return SparseDelta("filler", seq, "", seq, {FULL_SLOT.name: rows})


def fill_until_full(store: EmbeddingStore) -> tuple[int, int, StoreFull]:
    """Apply deltas of fresh rows until one is refused; (applied seq, rows written, the refusal)."""
    for seq in range(10_000):
        delta = full_delta(seq + 1, range(seq * FULL_ROWS_PER_DELTA, (seq + 1) * FULL_ROWS_PER_DELTA))
        try:
            store.apply(delta)
        except StoreFull as exc:
            return seq, seq * FULL_ROWS_PER_DELTA, exc
    raise AssertionError("a 2 MiB map never filled up")


def open_small(path: Path) -> EmbeddingStore:
    return EmbeddingStore.open(
        path, slots=[FULL_SLOT], map_size_bytes=FULL_MAP_SIZE_BYTES, reserve_bytes=FULL_RESERVE_BYTES
    )


def test_map_full_is_a_clear_store_full_and_the_refused_delta_changes_nothing(tmp_path: Path) -> None:
    with open_small(tmp_path / "store") as store:
        seq, n_rows, refusal = fill_until_full(store)
        assert seq >= 5, "the map filled before it held anything: sized wrong"
        assert "map is full" in str(refusal), str(refusal)
        assert refusal.code == "store_full"
        stats = store.stats()
        assert (stats.applied_seq, stats.generation, stats.rows_by_slot) == ({"filler": seq}, seq, {"item": n_rows})
        assert stats.map_size_bytes == FULL_MAP_SIZE_BYTES
        refused_ids = np.arange(n_rows, n_rows + FULL_ROWS_PER_DELTA, dtype=np.uint64)
        assert store.lookup("item", refused_ids).unseen.all(), "rows of the refused delta are visible"
        last = store.lookup("item", np.arange(n_rows - FULL_ROWS_PER_DELTA, n_rows, dtype=np.uint64))
        assert (last.vectors == float(seq)).all()
        # Refused again, the same way: the store did not half-apply it the first time.
        with pytest.raises(StoreFull):
            store.apply(full_delta(seq + 1, range(n_rows, n_rows + FULL_ROWS_PER_DELTA)))
        assert store.applied_seq("filler") == seq
    # And so after reopening (the tier is rebuilt from LMDB).
    with EmbeddingStore.open(tmp_path / "store", map_size_bytes=FULL_MAP_SIZE_BYTES) as store:
        assert store.stats().rows_by_slot == {"item": n_rows}
        assert store.lookup("item", refused_ids).unseen.all()


def test_tombstone_only_delta_applies_when_the_map_is_full(tmp_path: Path) -> None:
    """The reserve exists so that deletes keep working when inserts are refused."""
    with open_small(tmp_path / "store") as store:
        seq, n_rows, _ = fill_until_full(store)
        # 1,000 ids: an 8 KB payload and a few dozen B-tree pages, far below the 256 KiB reserve.
        result = store.apply(full_delta(seq + 1, tombstones=range(FULL_TOMBSTONES_PER_DELTA)))
        assert (result.status, result.rows_deleted) == ("applied", FULL_TOMBSTONES_PER_DELTA)
        assert store.lookup("item", np.arange(FULL_TOMBSTONES_PER_DELTA, dtype=np.uint64)).unseen.all()
        assert store.stats().rows_by_slot == {"item": n_rows - FULL_TOMBSTONES_PER_DELTA}


def test_inserts_work_again_after_deleting_rows(tmp_path: Path) -> None:
    with open_small(tmp_path / "store") as store:
        seq, n_rows, _ = fill_until_full(store)
        deleted = 0
        step = FULL_ROWS_PER_DELTA // 2  # small tombstone deltas, so this does not depend on the reserve
        while deleted < n_rows // 2:
            seq += 1
            store.apply(full_delta(seq, tombstones=range(deleted, deleted + step)))
            deleted += step
        fresh = range(10**6, 10**6 + FULL_ROWS_PER_DELTA)
        seq += 1
        assert store.apply(full_delta(seq, fresh)).status == "applied"
        got = store.lookup("item", np.asarray(fresh, dtype=np.uint64))
        assert not got.unseen.any()
        assert (got.vectors == float(seq)).all()
        assert store.stats().rows_by_slot == {"item": n_rows - deleted + FULL_ROWS_PER_DELTA}


# --- readers never wait for the writer ----------------------------------------------------------------------------


def lookups_in_thread(store: EmbeddingStore) -> tuple[bool, float, list[object]]:
    """Run lookups in another thread; (finished within the bound, seconds taken, what it read or raised)."""
    results: list[object] = []

    def read() -> None:
        try:
            results.append(read_group(store))
            results.append(store.applied_seq("vis"))
            results.append(store.stats().generation)
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=read)
    started = time.perf_counter()
    thread.start()
    thread.join(timeout=LIVENESS_BOUND_S)
    finished = not thread.is_alive()
    elapsed = time.perf_counter() - started
    return finished, elapsed, results if finished else [thread]


def test_readers_are_not_blocked_by_an_open_write_transaction_in_this_process(tmp_path: Path) -> None:
    with EmbeddingStore.open(tmp_path / "store", slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES) as store:
        store.apply(vis_delta(1))
        txn = store.lmdb.env.begin(write=True)
        try:
            txn.put(b"scratch", b"uncommitted", db=store.lmdb.meta_db)
            finished, elapsed, results = lookups_in_thread(store)
        finally:
            txn.abort()
        if not finished:
            results[0].join(timeout=60)  # type: ignore[attr-defined]
        assert finished, f"a lookup waited more than {LIVENESS_BOUND_S} s for the writer"
        assert results == [1, 1, 1], results
        assert elapsed < LIVENESS_BOUND_S


def test_readers_are_not_blocked_by_a_write_transaction_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with EmbeddingStore.open(path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES) as store:
        store.apply(vis_delta(1))
        with start_child("hold-write", str(path)) as proc:
            lines = ChildLines(proc)
            try:
                lines.wait_for("holding", timeout_s=30)
                finished, _, results = lookups_in_thread(store)
            finally:
                assert proc.stdin is not None
                proc.stdin.close()  # the child aborts its transaction and exits
                lines.read_to_eof()
                proc.wait(timeout=30)
            if not finished:
                results[0].join(timeout=60)  # type: ignore[attr-defined]
        assert proc.returncode == 0
        assert finished, f"a lookup waited more than {LIVENESS_BOUND_S} s for another process's writer"
        assert results == [1, 1, 1], results
        # The writer lock is free again: this process can write.
        assert store.apply(vis_delta(2)).status == "applied"


# --- not a store --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 64 * 1024])
def test_garbage_data_file_raises_not_a_store(tmp_path: Path, size: int) -> None:
    path = tmp_path / "store"
    path.mkdir()
    (path / "data.mdb").write_bytes(np.random.default_rng(size).bytes(size))
    with pytest.raises(NotAStore) as exc:
        EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)
    assert str(path) in str(exc.value)
    assert "LMDB" in str(exc.value), str(exc.value)
    assert exc.value.code == "not_a_store"
    # A refused open does not hold the path: a good store can be made there once the garbage is gone.
    (path / "data.mdb").unlink()
    for leftover in path.iterdir():
        leftover.unlink()
    with EmbeddingStore.open(path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES) as store:
        assert read_group(store) == 0


def test_directory_of_unrelated_files_raises_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "photos"
    path.mkdir()
    (path / "holiday.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a store")
    with pytest.raises(NotAStore) as exc:
        EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)
    assert str(path) in str(exc.value)
    assert "not a liverank store" in str(exc.value), str(exc.value)
    assert [p.name for p in path.iterdir()] == ["holiday.jpg"], "a refused open must not write into the directory"


def test_a_file_where_the_store_directory_should_be_raises_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.write_bytes(b"just a file")
    with pytest.raises(NotAStore, match="is a file"):
        EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)


def test_store_of_another_format_raises_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    EmbeddingStore.open(path, slots=VIS_SLOTS, map_size_bytes=VIS_MAP_SIZE_BYTES).close()
    env = lmdb.open(str(path), map_size=VIS_MAP_SIZE_BYTES, max_dbs=5)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format", b"liverank-store/999", db=meta)
    finally:
        env.close()
    with pytest.raises(NotAStore, match="format"):
        EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)


def foreign_environment(path: Path, records: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 20)
    try:
        with env.begin(write=True) as txn:
            for key, value in records.items():
                txn.put(key, value)
    finally:
        env.close()


def main_db_records(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), map_size=VIS_MAP_SIZE_BYTES, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


@pytest.mark.parametrize(
    "records",
    [{b"session:42": b"{}", b"session:43": b"{}"}, {b"meta": b"an application's own key", b"user:1": b"x"}],
    ids=["other-application", "key-named-like-a-store-table"],
)
def test_lmdb_environment_of_another_application_raises_not_a_store(
    tmp_path: Path, records: dict[bytes, bytes]
) -> None:
    """An LMDB environment without liverank's format record is someone else's data: refuse it, do not adopt it."""
    path = tmp_path / "other"
    foreign_environment(path, records)
    with pytest.raises(NotAStore) as exc:
        EmbeddingStore.open(path, map_size_bytes=VIS_MAP_SIZE_BYTES)
    assert str(path) in str(exc.value)
    assert main_db_records(path) == sorted(records.items()), "a refused open must leave the environment untouched"
