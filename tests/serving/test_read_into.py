"""The one-pass read (``read_inputs_direct``: the shared tier straight into the input buffers) gives exactly what the
general path gives (``lookup_many`` + assembly + ages), bit for bit, over random slots, dims, storage dtypes, TTLs,
defaults, id and pooled id-list features, unseen, deleted and expired ids and empty lists; and it declines (the
general path answers) where it must."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverank.benchmarks.w500 import RequestMaker, fill_chunks, make_tables
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving import ranker as ranker_module
from liverank.serving.bundle import load_bundle_dir
from liverank.serving.model_slot import LiveModel, ModelSlot
from liverank.serving.ranker import Inputs, Ranker, _input_buffer, read_inputs, read_inputs_direct, read_inputs_general
from liverank.serving.request import Limits, RankRequest, parse_rank_request
from liverank.serving.runner import OnnxRunner
from liverank.store import EmbeddingStore, SlotConfig
from liverank.store.hash_index import _kernel as kernel
from liverank.store.manifest import Feature, Head, Manifest, build_manifest
from liverank.store.shared_tier import SharedTierWriter, SlotChange, TierEpoch

NOW_MS = 1_700_000_000_000
TTL_S = 100.0
LIMITS = Limits(max_candidates=1000, max_list_ids=300, max_k=1000)
MAX_LIST = 300


@dataclass
class Scenario:
    slots: list[SlotConfig]
    user: list[tuple[str, int, str | None]]  # (kind, slot index, pooling)
    candidate: list[tuple[str, int, str | None]]
    n_candidates: int
    long_lists: bool
    seed: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    slots = []
    for i in range(draw(st.integers(1, 3))):
        dim = draw(st.integers(1, 24))
        default = draw(st.none() | st.lists(st.floats(-2, 2, width=32), min_size=dim, max_size=dim).map(tuple))
        slots.append(
            SlotConfig(
                f"s{i}",
                dim,
                draw(st.sampled_from(["float32", "float16"])),
                ttl_s=draw(st.sampled_from([None, TTL_S])),
                default=default,
            )
        )
    feature = st.tuples(
        st.sampled_from(["id", "id_list", "numeric"]),
        st.integers(0, len(slots) - 1),
        st.sampled_from(["sum", "mean"]),
    ).map(lambda t: (t[0], t[1], t[2] if t[0] == "id_list" else None))
    return Scenario(
        slots,
        draw(st.lists(feature, max_size=3)),
        draw(st.lists(feature, min_size=1, max_size=4)),
        draw(st.integers(1, 12)),
        draw(st.booleans()),
        draw(st.integers(0, 2**32 - 1)),
    )


@dataclass
class Tier:
    """One slot's ids by what they read as: present (fresh), expired (older than the TTL), deleted, absent."""

    present: np.ndarray[Any, Any]
    expired: np.ndarray[Any, Any]
    deleted: np.ndarray[Any, Any]
    absent: np.ndarray[Any, Any]

    def draw(self, rng: np.random.Generator, n: int) -> list[int]:
        pools = [p for p in (self.present, self.present, self.expired, self.deleted, self.absent) if len(p)]
        return [int(rng.choice(pools[rng.integers(len(pools))])) for _ in range(n)]


def _publish(writer: SharedTierWriter, configs: list[SlotConfig], rng: np.random.Generator) -> dict[str, Tier]:
    """A tier built whole, then one publish that rewrites, expires and deletes rows (copy-on-write paths)."""
    tiers: dict[str, Tier] = {}
    chunks = []
    changes = []
    for config in configs:
        ids = np.unique(rng.integers(0, 2**64 - 1, 60, dtype=np.uint64, endpoint=True))
        rng.shuffle(ids)
        n = len(ids)
        vectors = rng.normal(0, 3, (n, config.dim)).astype(config.np_dtype)
        times = NOW_MS - rng.integers(0, 50_000, n)
        chunks.append((config.name, ids, vectors, times))
        present, rewritten, expired, deleted = ids[:20], ids[20:30], ids[30:45], ids[45:]
        new_vectors = rng.normal(0, 3, (25, config.dim)).astype(config.np_dtype)
        new_times = np.concatenate([NOW_MS - rng.integers(0, 50_000, 10), NOW_MS - rng.integers(150_000, 900_000, 15)])
        changes.append(SlotChange(config, ids[20:45], new_vectors, new_times.astype(np.int64), deleted))
        absent = rng.integers(0, 2**64 - 1, 10, dtype=np.uint64, endpoint=True)
        absent = absent[~np.isin(absent, ids)]
        tiers[config.name] = Tier(np.concatenate([present, rewritten]), expired, deleted, absent)
    writer.build(
        {c.name: c for c in configs},
        {c.name: 60 for c in configs},
        chunks,
        TierEpoch(1, {"p": 1}, {}, {}),
    )
    writer.publish(changes, 2, {"p": 2})
    return tiers


def _manifest(scenario: Scenario) -> Manifest:
    features = []
    for side, specs in (("user", scenario.user), ("candidate", scenario.candidate)):
        for i, (kind, slot, pooling) in enumerate(specs):
            name = f"{side}_{i}"
            if kind == "numeric":
                features.append(Feature(name, side, "numeric"))  # type: ignore[arg-type]
            elif kind == "id":
                features.append(Feature(name, side, "id", scenario.slots[slot].name))  # type: ignore[arg-type]
            else:
                features.append(
                    Feature(name, side, "id_list", scenario.slots[slot].name, pooling, MAX_LIST)  # type: ignore[arg-type]
                )
    return build_manifest(
        model="t",
        version="1",
        slots=scenario.slots,
        features=features,
        heads=[Head("click", "p_click", 1.0)],
        created_at_ms=0,
    )


def _list_length(rng: np.random.Generator, long_lists: bool) -> int:
    if long_lists and rng.random() < 0.3:
        return int(rng.integers(8, MAX_LIST + 1))  # numpy's pairwise sums: blocks of 8, halves past 128
    return int(rng.integers(0, 6))


def _request(scenario: Scenario, manifest: Manifest, tiers: dict[str, Tier], rng: np.random.Generator) -> RankRequest:
    user: dict[str, Any] = {}
    candidates: dict[str, Any] = {}
    n = scenario.n_candidates
    for feature in manifest.features:
        tier = tiers[feature.slot] if feature.slot is not None else None
        if feature.side == "user":
            if feature.kind == "numeric":
                user[feature.name] = float(rng.normal())
            elif feature.kind == "id":
                assert tier is not None
                user[feature.name] = tier.draw(rng, 1)[0]
            else:
                assert tier is not None
                user[feature.name] = tier.draw(rng, _list_length(rng, scenario.long_lists))
        elif feature.kind == "numeric":
            candidates[feature.name] = rng.normal(size=n).tolist()
        elif feature.kind == "id":
            assert tier is not None
            candidates[feature.name] = tier.draw(rng, n)
        else:
            assert tier is not None
            candidates[feature.name] = [tier.draw(rng, _list_length(rng, scenario.long_lists)) for _ in range(n)]
    return parse_rank_request({"user": user, "candidates": candidates, "k": n}, manifest, LIMITS)


@contextmanager
def _mapped_store(
    configs: list[SlotConfig], budget_rows: int = 10_000
) -> Iterator[tuple[EmbeddingStore, SharedTierWriter]]:
    """A serving worker's store (``map``) over a shared tier this test publishes itself; its LMDB only declares the
    slots (every slot is complete in the tier: the general path never reads LMDB rows here)."""
    with tempfile.TemporaryDirectory(prefix="liverank-read-into-") as root:
        writer = SharedTierWriter(Path(root) / "tier", budget_rows=budget_rows)
        store = EmbeddingStore.open(
            Path(root) / "lmdb", slots=configs, map_size_bytes=16 << 20, tier="map", shared_tier_dir=Path(root) / "tier"
        )
        try:
            yield store, writer
        finally:
            store.close()
            writer.close()


def _poisoned(manifest: Manifest, n: int) -> None:
    """NaN in this thread's input buffers, so that a column a path forgets to write shows."""
    for side, width in (("user", manifest.user_width), ("candidate", manifest.candidate_width)):
        _input_buffer(side, 1 if side == "user" else n, width)[:] = np.nan


def _summary(inputs: Inputs) -> tuple[Any, ...]:
    return (
        inputs.generation,
        inputs.applied_seq,
        inputs.source,
        list(inputs.unseen_by_slot.items()),
        list(inputs.ids_by_slot.items()),
        inputs.age_max_s,
        inputs.age_median_s,
        list(inputs.age_max_s_by_slot.items()),
    )


def _bits(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.ascontiguousarray(a).view(np.uint32).copy()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_one_pass_equals_the_general_path_bit_for_bit(scenario: Scenario) -> None:
    rng = np.random.default_rng(scenario.seed)
    manifest = _manifest(scenario)
    with _mapped_store(scenario.slots) as (store, writer):
        tiers = _publish(writer, scenario.slots, rng)
        for _ in range(3):
            request = _request(scenario, manifest, tiers, rng)
            _poisoned(manifest, request.n_candidates)
            unseen_before = store.stats().unseen_by_slot
            direct = read_inputs_direct(store, manifest, request, NOW_MS)
            assert direct is not None
            got_user, got_candidates, got = _bits(direct.user), _bits(direct.candidates), _summary(direct)
            unseen_direct = store.stats().unseen_by_slot
            _poisoned(manifest, request.n_candidates)
            general = read_inputs_general(store, manifest, request, NOW_MS)
            assert general.source == "ram"
            assert np.array_equal(got_user, _bits(general.user))
            assert np.array_equal(got_candidates, _bits(general.candidates))
            assert got == _summary(general)
            # The store's unseen counters move by the same amounts on either path.
            unseen_general = store.stats().unseen_by_slot
            for slot in unseen_general:
                assert unseen_general[slot] - unseen_direct.get(slot, 0) == unseen_direct.get(
                    slot, 0
                ) - unseen_before.get(slot, 0)


def _one_slot_setup(config: SlotConfig) -> tuple[Manifest, Scenario]:
    scenario = Scenario([config], [("id_list", 0, "mean")], [("id", 0, None)], 5, False, 7)
    return _manifest(scenario), scenario


def test_rows_missing_from_an_incomplete_slot_go_to_the_general_path() -> None:
    config = SlotConfig("s0", 4)
    manifest, _ = _one_slot_setup(config)
    with _mapped_store([config], budget_rows=20) as (store, writer):
        ids = np.arange(1, 41, dtype=np.uint64)
        vectors = np.ones((40, 4), dtype=np.float32)
        times = np.full(40, NOW_MS, dtype=np.int64)
        # 40 rows, a budget of 20: the slot is incomplete, a miss may be a row on LMDB only.
        writer.build({"s0": config}, {"s0": 40}, [("s0", ids, vectors, times)], TierEpoch(1, {}, {}, {}))
        held = parse_rank_request({"user": {"user_0": [1, 2]}, "candidates": {"candidate_0": [3, 4]}}, manifest, LIMITS)
        assert read_inputs_direct(store, manifest, held, NOW_MS) is not None
        missing = parse_rank_request(
            {"user": {"user_0": [1, 30]}, "candidates": {"candidate_0": [3, 4]}}, manifest, LIMITS
        )
        assert read_inputs_direct(store, manifest, missing, NOW_MS) is None


def test_string_id_slots_go_to_the_general_path(tmp_path: Path) -> None:
    config = SlotConfig("s0", 4, id_kind="str")
    manifest, _ = _one_slot_setup(config)
    with EmbeddingStore.open(
        tmp_path / "lmdb", slots=[config], map_size_bytes=16 << 20, tier="map", shared_tier_dir=tmp_path / "tier"
    ) as store:
        writer = SharedTierWriter(tmp_path / "tier", budget_rows=100)
        writer.build({"s0": config}, {"s0": 0}, [], TierEpoch(1, {}, {}, {}))
        request = parse_rank_request(
            {"user": {"user_0": ["a", "b"]}, "candidates": {"candidate_0": ["c"]}}, manifest, LIMITS
        )
        assert read_inputs_direct(store, manifest, request, NOW_MS) is None
        inputs = read_inputs(store, manifest, request, NOW_MS)
        assert inputs.unseen_by_slot == {"s0": 3}
        assert inputs.source == "lmdb"


def test_a_local_tier_goes_to_the_general_path(tmp_path: Path) -> None:
    config = SlotConfig("s0", 4)
    manifest, _ = _one_slot_setup(config)
    with EmbeddingStore.open(tmp_path / "lmdb", slots=[config], map_size_bytes=16 << 20) as store:
        request = parse_rank_request({"user": {"user_0": [1]}, "candidates": {"candidate_0": [3]}}, manifest, LIMITS)
        assert read_inputs_direct(store, manifest, request, NOW_MS) is None
        assert read_inputs(store, manifest, request, NOW_MS).source == "ram"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_float16_value_widens_exactly(dtype: str) -> None:
    """All 65,536 float16 bit patterns (NaN payloads, infinities, subnormals) as numpy widens them."""
    assert kernel is not None
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    dim = 16
    stored = bits.view(np.float16).reshape(-1, dim) if dtype == "float16" else np.arange(64, dtype=np.float32)[:, None]
    n = len(stored)
    keys = np.zeros(1 << 14, dtype=np.uint64)
    rows = np.full(1 << 14, -1, dtype=np.int64)
    ids = np.arange(100, 100 + n, dtype=np.uint64)
    kernel.insert(keys, rows, ids, np.arange(n, dtype=np.int64))
    updated = np.full(n, NOW_MS, dtype=np.int64)
    out = np.empty((n, stored.shape[1]), dtype=np.float32)
    seen = np.empty(n, dtype=np.int64)
    default = np.zeros(stored.shape[1], dtype=np.float32)
    counts = kernel.gather_into(keys, rows, ids, stored, updated, default, -(2**63), out, 0, None, False, seen, 0)
    assert counts == (n, NOW_MS, 0, 0)
    assert np.array_equal(out.view(np.uint32), stored.astype(np.float32).view(np.uint32))


def _read_only(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    a.flags.writeable = False
    return a


MISFITS: dict[str, dict[str, Any]] = {
    "columns past the width": {"col": 3},
    "out not C-contiguous": {"out": np.zeros((10, 3), dtype=np.float32).T},
    "out read-only": {"out": _read_only(np.zeros((3, 10), dtype=np.float32))},
    "out float64": {"out": np.zeros((3, 10))},
    "ids int64": {"ids": np.arange(3, dtype=np.int64)},
    "vectors float64": {"vectors": np.zeros((4, 8))},
    "default too short": {"default": np.zeros(4, dtype=np.float32)},
    "lengths do not add up": {"lengths": np.array([1, 1, 0], dtype=np.int64)},
    "negative length": {"lengths": np.array([4, -1, 0], dtype=np.int64)},
    "one id per row": {"ids": np.arange(2, dtype=np.uint64)},
    "seen too small": {"seen_at": 1},
    "index not a power of two": {"keys": np.zeros(12, dtype=np.uint64), "rows": np.full(12, -1, dtype=np.int64)},
}


@pytest.mark.parametrize("misfit", [None, *MISFITS])
def test_gather_into_refuses_buffers_that_do_not_fit(misfit: str | None) -> None:
    args: dict[str, Any] = {
        "keys": np.zeros(16, dtype=np.uint64),
        "rows": np.full(16, -1, dtype=np.int64),
        "ids": np.arange(3, dtype=np.uint64),
        "vectors": np.zeros((4, 8), dtype=np.float32),
        "updated": np.zeros(4, dtype=np.int64),
        "default": np.zeros(8, dtype=np.float32),
        "cutoff": 0,
        "out": np.zeros((3, 10), dtype=np.float32),
        "col": 0,
        "lengths": None,
        "mean": False,
        "seen": np.zeros(3, dtype=np.int64),
        "seen_at": 0,
    }
    assert kernel is not None
    if misfit is None:
        assert kernel.gather_into(*args.values()) == (0, 2**63 - 1, 3, 3)  # every id missing: the default
        return
    args.update(MISFITS[misfit])
    with pytest.raises(ValueError, match="gather_into"):
        kernel.gather_into(*args.values())


def test_a_worker_ranker_answers_as_the_general_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Ranker.rank`` in a serving worker (a store over the shared tier, a real ONNX Runtime session, W-500 with
    unseen ids and empty lists): the one-pass answer is the general path's, field by field."""
    manifest = build_synthetic_bundle(tmp_path / "bundle", preset="w500", dim=16, seed=3)
    tables = make_tables(manifest, 3_000, 1.1, seed=11)
    chunks = [
        (slot, ids, vectors, np.full(len(ids), NOW_MS, dtype=np.int64))
        for slot, ids, vectors in fill_chunks(tables, 16, 2_000)
    ]
    counts: dict[str, int] = {}
    for slot, ids, _, _ in chunks:
        counts[slot] = counts.get(slot, 0) + len(ids)
    writer = SharedTierWriter(tmp_path / "tier", budget_rows=1_000_000)
    writer.build({c.name: c for c in manifest.slots}, counts, chunks, TierEpoch(5, {"fill": 9}, {}, {}))
    bundle = load_bundle_dir(tmp_path / "bundle")
    model_slot = ModelSlot()
    model_slot.replace(LiveModel("b1", bundle, OnnxRunner.build(bundle), 0))
    maker = RequestMaker(manifest, tables, stream=5)
    with EmbeddingStore.open(
        tmp_path / "lmdb", slots=manifest.slots, map_size_bytes=64 << 20, tier="map", shared_tier_dir=tmp_path / "tier"
    ) as store:
        ranker = Ranker(store, model_slot, LIMITS)
        for n_candidates, k in ((500, 50), (3, 3)):
            doc = maker.make(n_candidates=n_candidates, k=k)
            doc["candidates"]["item_id"][0] = 2**63 + 12345
            doc["candidates"]["tags"][-1] = []
            direct = ranker.rank(doc)
            with monkeypatch.context() as patch:
                patch.setattr(ranker_module, "read_inputs_direct", lambda *args: None)
                general = ranker.rank(doc)
            assert direct.source == general.source == "ram"
            assert (direct.generation, direct.sparse_seq) == (general.generation, general.sparse_seq)
            assert (direct.generation, direct.sparse_seq) == (5, {"fill": 9})
            assert direct.unseen_by_slot == general.unseen_by_slot
            assert direct.unseen_by_slot["item_id"] == 1
            assert list(direct.ids_by_slot.items()) == list(general.ids_by_slot.items())
            assert np.array_equal(direct.top, general.top)
            assert np.array_equal(direct.scores.view(np.uint32), general.scores.view(np.uint32))
            for head, values in general.heads.items():
                assert np.array_equal(direct.heads[head].view(np.uint32), values.view(np.uint32))
            assert direct.ids == general.ids
            # Ages: both measured from their own "now" (milliseconds apart).
            assert list(direct.embedding_age_max_s_by_slot) == list(general.embedding_age_max_s_by_slot)
            assert direct.embedding_age_median_s is not None
            assert general.embedding_age_median_s is not None
            assert abs(direct.embedding_age_median_s - general.embedding_age_median_s) < 5
    writer.close()


@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=200))
def test_the_median_in_place_is_numpys(values: list[int]) -> None:
    times = np.asarray(values, dtype=np.int64)
    expected = float(np.median(times))
    assert ranker_module._median_in_place(times.copy()) == expected
