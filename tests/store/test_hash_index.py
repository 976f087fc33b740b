"""The compiled probe kernel against the numpy reference, and the index's growth."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from liverank.store.hash_index import HashIndex, capacity_for, kernel_available, probe_numpy

u64 = st.integers(min_value=0, max_value=2**64 - 1)


def test_the_compiled_kernel_is_built_by_the_install() -> None:
    assert kernel_available(), "liverank.store._kernel is missing: `pip install -e .` builds it (needs a C compiler)"


@given(st.lists(u64, unique=True, max_size=600), st.lists(u64, max_size=200))
@settings(max_examples=150, deadline=None)
def test_kernel_and_numpy_probe_agree(present: list[int], absent: list[int]) -> None:
    index = HashIndex()
    for chunk in range(0, len(present), 100):  # growing in steps exercises rehashing
        ids = np.asarray(present[chunk : chunk + 100], dtype=np.uint64)
        if index.needs_growth(len(ids)):
            index = index.grown(len(ids))
        index.insert(ids, np.arange(chunk, chunk + len(ids), dtype=np.int64))
    query = np.asarray(present + absent, dtype=np.uint64)
    expected = {v: i for i, v in enumerate(present)}
    want = np.asarray([expected.get(v, -1) for v in present + absent], dtype=np.int64)
    assert np.array_equal(index.find(query), want)
    assert np.array_equal(probe_numpy(index.keys, index.rows, query), want)
    assert index.count == len(present)
    assert 2 * index.count <= index.capacity


def test_inserting_an_existing_id_moves_it_to_the_new_row() -> None:
    index = HashIndex()
    index.insert(np.asarray([5, 6], np.uint64), np.asarray([0, 1], np.int64))
    index.insert(np.asarray([5], np.uint64), np.asarray([7], np.int64))
    assert index.find(np.asarray([5, 6, 8], np.uint64)).tolist() == [7, 1, -1]
    assert index.count == 2


def test_sequential_and_clustered_ids_probe_short() -> None:
    # ids that differ only in high bits would all collide under a "low bits" hash; mixing spreads them.
    ids = (np.arange(10_000, dtype=np.uint64) << np.uint64(40)) | np.uint64(7)
    index = HashIndex(32768)
    index.insert(ids, np.arange(10_000, dtype=np.int64))
    occupied = np.flatnonzero(index.rows >= 0)
    runs = np.split(occupied, np.flatnonzero(np.diff(occupied) != 1) + 1)
    assert max(len(r) for r in runs) < 64
    assert np.array_equal(index.find(ids), np.arange(10_000))


@given(st.lists(u64, unique=True, min_size=1, max_size=300), st.lists(u64, max_size=100), st.sampled_from(["f4", "f2"]))
@settings(max_examples=80, deadline=None)
def test_the_compiled_gather_copies_exactly_what_find_and_take_give(
    present: list[int], absent: list[int], dtype: str
) -> None:
    index = HashIndex(capacity_for(len(present)))
    index.insert(np.asarray(present, np.uint64), np.arange(len(present), dtype=np.int64))
    vectors = np.arange(len(present) * 3, dtype=dtype).reshape(len(present), 3)
    updated = np.arange(len(present), dtype=np.int64) * 10
    query = np.asarray(present[::-1] + absent, dtype=np.uint64)
    gathered = index.gather(query, vectors, updated)
    assert gathered is not None
    rows, got_vectors, got_updated = gathered
    want_rows = index.find(query)
    hit = want_rows >= 0
    assert np.array_equal(rows, want_rows)
    assert np.array_equal(got_vectors[hit], vectors[want_rows[hit]])
    assert (got_vectors[~hit] == 0).all()
    assert np.array_equal(got_updated[hit], updated[want_rows[hit]])
    assert (got_updated[~hit] == np.iinfo(np.int64).min).all()


def test_gather_treats_rows_past_the_arrays_as_missing() -> None:
    # A writer can grow the index past the arrays a reader still holds; that read is discarded, it must not fault.
    index = HashIndex()
    index.insert(np.asarray([1, 2], np.uint64), np.asarray([0, 5], np.int64))
    gathered = index.gather(np.asarray([1, 2], np.uint64), np.ones((2, 4), np.float32), np.zeros(2, np.int64))
    assert gathered is not None
    assert gathered[0].tolist() == [0, -1]
