"""The user side split out of the first layer: the split graph computes what the unsplit one does (within 1e-5)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from liverank.exporter.split import split_user_side
from liverank.exporter.synthetic import build_dense_model, synthetic_manifest
from liverank.store.manifest import Manifest


def _run(model: onnx.ModelProto, manifest: Manifest, user: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run([h.output for h in manifest.heads], {"user": user, "candidates": candidates})
    return np.stack([np.asarray(o).reshape(len(candidates)) for o in outputs], axis=1)


def _assert_split_equals_unsplit(model: onnx.ModelProto, manifest: Manifest, *, expect_split: int) -> None:
    split, n_split = split_user_side(model)
    assert n_split == expect_split
    ops = [node.op_type for node in split.graph.node]
    assert ops.count("Add") > [node.op_type for node in model.graph.node].count("Add")  # the broadcast adds
    rng = np.random.default_rng(11)
    for n_rows in (1, 7, 500):
        user = rng.standard_normal((1, manifest.user_width), dtype=np.float32)
        candidates = rng.standard_normal((n_rows, manifest.candidate_width), dtype=np.float32)
        want = _run(model, manifest, user, candidates)
        got = _run(split, manifest, user, candidates)
        assert np.max(np.abs(got - want)) <= 1e-5


@pytest.mark.parametrize("preset", ["tiny", "w500"])
def test_the_split_synthetic_graph_equals_the_unsplit_one(preset: str) -> None:
    manifest = synthetic_manifest(preset, dim=8 if preset == "tiny" else 32)
    hidden = (32, 16) if preset == "tiny" else (512, 256, 128)
    model = build_dense_model(manifest, hidden=hidden, seed=4)
    _assert_split_equals_unsplit(model, manifest, expect_split=1)


def test_the_split_torch_tower_equals_the_unsplit_one() -> None:
    pytest.importorskip("torch")
    from liverank.exporter.onnx_export import export_onnx
    from liverank.trainer.features import short_video_manifest
    from liverank.trainer.model import DenseTower

    manifest = short_video_manifest(dim=8)
    tower = DenseTower.from_manifest(manifest, hidden=(32, 16))
    model = onnx.load_from_string(export_onnx(tower, manifest))
    # The first layer and DeepFM's wide part both read the concatenated rows.
    _assert_split_equals_unsplit(model, manifest, expect_split=2)


def test_a_graph_without_the_broadcast_is_left_as_it_was() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph)
    same, n_split = split_user_side(model)
    assert n_split == 0
    assert same is model


def test_the_split_field_tower_with_numeric_features_equals_the_unsplit_one() -> None:
    pytest.importorskip("torch")
    from liverank.exporter.onnx_export import export_onnx
    from liverank.store.manifest import Feature, Head, build_manifest
    from liverank.store.slots import SlotConfig
    from liverank.trainer.generic import FieldTower

    manifest = build_manifest(
        model="numeric",
        version="1",
        slots=[SlotConfig(name="user_id", dim=4), SlotConfig(name="item_id", dim=4)],
        features=[
            Feature("user_id", "user", "id", "user_id"),
            Feature("age", "user", "numeric"),
            Feature("item_id", "candidate", "id", "item_id"),
            Feature("price", "candidate", "numeric"),
        ],
        heads=[Head("click", "p_click", 1.0)],
        created_at_ms=0,
    )
    model = onnx.load_from_string(export_onnx(FieldTower(manifest, hidden=(16,)), manifest))
    _assert_split_equals_unsplit(model, manifest, expect_split=2)
