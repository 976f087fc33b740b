"""The compiled per-request path (id columns, pooling into reused input buffers, one-pass answer) gives exactly the
answers of the plain numpy reference (``liverank.benchmarks.rank_reference``, the path as it was before), on a real
store and a real ONNX Runtime session; and the kernel's helpers agree with their numpy fallbacks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from liverank.benchmarks import rank_reference
from liverank.benchmarks.w500 import RequestMaker, fill_chunks, make_tables
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving import columns
from liverank.serving.bundle import load_bundle_dir
from liverank.serving.errors import LimitExceeded, WrongType
from liverank.serving.model_slot import LiveModel, ModelSlot
from liverank.serving.ranker import Ranker, _ages, _input_buffer
from liverank.serving.request import Limits, parse_rank_request
from liverank.serving.runner import OnnxRunner
from liverank.store import EmbeddingStore, Lookup, SlotDelta, SlotLookup, SparseDelta
from liverank.store.manifest import Manifest
from tests.serving.conftest import LiveServer, rank_body

DIM = 16
Setup = tuple[Ranker, LiveModel, EmbeddingStore, RequestMaker]
LIMITS = Limits(max_candidates=1000, max_list_ids=100, max_k=500)


@pytest.fixture(scope="module")
def w500(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A small W-500 store (every slot, 3,000 rows in the largest) and the W-500 network, as the server has them."""
    root = tmp_path_factory.mktemp("fast-path")
    manifest = build_synthetic_bundle(root / "bundle", preset="w500", dim=DIM, seed=3)
    tables = make_tables(manifest, 3_000, 1.1, seed=11)
    store = EmbeddingStore.open(root / "store", slots=manifest.slots, map_size_bytes=256 * 1024**2)
    store.bind_schema(manifest.schema_hash)
    for seq, (slot, ids, vectors) in enumerate(fill_chunks(tables, DIM, 2_000), start=1):
        updated = np.full(len(ids), 1_000, dtype=np.int64)
        store.apply(SparseDelta("fill", seq, manifest.schema_hash, 1_000, {slot: SlotDelta(ids, vectors, updated)}))
    bundle = load_bundle_dir(root / "bundle")
    live = LiveModel("b1", bundle, OnnxRunner.build(bundle), 0)
    model_slot = ModelSlot()
    model_slot.replace(live)
    yield Ranker(store, model_slot, LIMITS), live, store, RequestMaker(manifest, tables, stream=5)
    store.close()


def _without_ages(answer: dict[str, Any]) -> dict[str, Any]:
    stats = dict(answer["stats"])
    stats.pop("embedding_age_s")
    return {**answer, "stats": stats}


def test_answers_match_the_numpy_reference(w500: Setup) -> None:
    ranker, live, store, maker = w500
    for n_candidates, k in ((500, 50), (37, 37), (1, 1), (200, 500)):
        doc = maker.make(n_candidates=n_candidates, k=k)
        # Unseen ids (new to the store: the slot default) and empty tag lists take the edge paths too.
        doc["candidates"]["item_id"][0] = 2**63 + 12345
        doc["candidates"]["tags"][-1] = []
        expected, user, candidates = rank_reference.rank(live, store.lookup_many, doc)
        got = ranker.rank(doc)
        # The reused input buffers hold the reference's inputs bit for bit (the sign of zeros included).
        for side, n_rows, width, reference in (
            ("user", 1, live.manifest.user_width, user),
            ("candidate", n_candidates, live.manifest.candidate_width, candidates),
        ):
            assert np.array_equal(_input_buffer(side, n_rows, width).view(np.uint32), reference.view(np.uint32))
        assert orjson.dumps(_without_ages(got.to_json())) == orjson.dumps(expected)


def test_pooling_matches_reduceat_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 6, 300).astype(np.int64)
    lengths[[3, 10, 11, 12]] = (50, 300, 9, 8)  # numpy sums runs of 8+ and 128+ rows pairwise: so must the kernel
    rows = rng.standard_normal((int(lengths.sum()), 16), dtype=np.float32)
    rows[::7] = -0.0
    for mean in (True, False):
        expected = columns.pool_numpy(rows, lengths, mean)
        got = np.full((300, 40), np.nan, dtype=np.float32)
        columns.pool_into(got, 20, rows, lengths, mean=mean)
        assert np.array_equal(got[:, 20:36].view(np.uint32), expected.view(np.uint32))
        assert np.isnan(got[:, :20]).all()  # nothing outside its columns
        assert np.isnan(got[:, 36:]).all()
        with monkeypatch.context() as patched:
            patched.setattr(columns, "_kernel", None)
            fallback = np.full((300, 40), np.nan, dtype=np.float32)
            columns.pool_into(fallback, 20, rows, lengths, mean=mean)
        np.testing.assert_array_equal(fallback, got)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "numpy"])
def test_id_columns_convert_exactly_or_name_the_bad_element(kernel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not kernel:
        monkeypatch.setattr(columns, "_kernel", None)
    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 42]
    assert columns.int_ids(values).tolist() == values
    assert columns.int_ids([]).dtype == np.uint64
    for bad in (True, False, -1, 2**64, 1.0, "3", None, [1]):
        with pytest.raises(columns.BadId) as caught:
            columns.int_ids([5, 6, bad, 7])
        assert caught.value.index == 2
        assert caught.value.value is bad
    rows: list[Any] = [[1, 2], [], [2**64 - 1]]
    lengths = columns.id_list_lengths(rows)
    assert lengths.tolist() == [2, 0, 1]
    assert columns.flat_int_ids(rows, lengths).tolist() == [1, 2, 2**64 - 1]
    with pytest.raises(columns.NotAList) as not_list:
        columns.id_list_lengths([[1], 2, [3]])
    assert not_list.value.index == 1
    with pytest.raises(columns.BadId) as bad_flat:
        columns.flat_int_ids([[1], [2, True]], np.asarray([1, 2], dtype=np.int64))
    assert (bad_flat.value.index, bad_flat.value.value) == (2, True)


def test_bad_ids_in_a_request_are_clear_4xx_errors(w500: Setup) -> None:
    _, live, _, maker = w500
    manifest: Manifest = live.manifest
    for feature, bad, error in (
        ("item_id", True, WrongType),
        ("item_id", -3, WrongType),
        ("item_id", 2**64, WrongType),
        ("item_id", 4.0, WrongType),
        ("item_id", "x" * 10_000, WrongType),
        ("tags", [1, False], WrongType),
        ("tags", 7, WrongType),
        ("tags", list(range(6)), LimitExceeded),  # tags take at most 5 ids per candidate
    ):
        doc = maker.make(n_candidates=10, k=5)
        doc["candidates"][feature][4] = bad
        with pytest.raises(error) as caught:
            parse_rank_request(doc, manifest, LIMITS)
        assert feature in str(caught.value)
        assert len(str(caught.value)) < 300  # a huge bad value is not echoed whole


def test_the_server_counts_its_cpu_time_inside_onnx_runtime(server: LiveServer) -> None:
    def onnx_cpu_s(client: httpx.Client) -> float:
        text = client.get("/metrics").text
        (line,) = [x for x in text.splitlines() if x.startswith("liverank_onnx_cpu_seconds_total ")]
        return float(line.split()[1])

    with server.client() as client:
        before = onnx_cpu_s(client)
        for seed in range(3):
            assert client.post("/v1/rank", json=rank_body(n=200, seed=seed)).status_code == 200
        spent = onnx_cpu_s(client) - before
    assert 0 < spent < time.process_time()  # some, and no more than the whole process has used


def test_answer_ages_are_the_max_median_and_per_slot_oldest_of_the_seen_rows() -> None:
    rng = np.random.default_rng(4)
    slots = {}
    for name, n in (("a", 7), ("b", 12), ("none_seen", 3)):
        updated = rng.integers(0, 50_000, n).astype(np.int64)
        unseen = rng.random(n) < 0.3 if name != "none_seen" else np.ones(n, dtype=bool)
        slots[name] = SlotLookup(np.zeros((n, 2), dtype=np.float32), updated, unseen)
    now_ms = 60_000
    age_max, age_median, by_slot = _ages(Lookup(1, slots, "ram", {}), now_ms)
    seen = {name: got.updated_at_ms[~got.unseen] for name, got in slots.items()}
    every = (now_ms - np.concatenate(list(seen.values()))) / 1000.0
    assert age_max == float(every.max())
    assert age_median == pytest.approx(float(np.median(every)), abs=1e-9)  # now - median(updated): rounding only
    assert by_slot == {name: float(((now_ms - s) / 1000.0).max()) for name, s in seen.items() if s.size}
    assert _ages(Lookup(1, {"none_seen": slots["none_seen"]}, "ram", {}), now_ms) == (None, None, {})
