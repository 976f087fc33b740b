"""The ONNX runner: built from real bundles, checked against the manifest, warmed, run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.bundle import Bundle, load_bundle_dir
from liverank.serving.errors import BundleInvalid
from liverank.serving.runner import OnnxRunner
from liverank.store.manifest import Head, Manifest, build_manifest


@pytest.fixture(scope="module", params=["tiny", "w500"])
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    path = tmp_path_factory.mktemp(request.param)
    build_synthetic_bundle(path, preset=request.param)
    return load_bundle_dir(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    path = tmp_path_factory.mktemp("tiny8")
    build_synthetic_bundle(path, preset="tiny", dim=8)
    return load_bundle_dir(path)


def _inputs(manifest: Manifest, n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    user = rng.standard_normal((1, manifest.user_width), dtype=np.float32)
    candidates = rng.standard_normal((n_rows, manifest.candidate_width), dtype=np.float32)
    return user, candidates


def test_build_warm_run(bundle: Bundle) -> None:
    runner = OnnxRunner.build(bundle, intra_op_threads=2)
    runner.warm_up()
    for n_rows in (1, 7, 500):
        user, candidates = _inputs(bundle.manifest, n_rows)
        out = runner.run(user, candidates)
        assert list(out) == ["click", "finish", "like"]
        for scores in out.values():
            assert scores.shape == (n_rows,)
            assert scores.dtype == np.float32
            assert np.all((scores >= 0.0) & (scores <= 1.0))


def test_rows_are_scored_independently(bundle: Bundle) -> None:
    runner = OnnxRunner.build(bundle)
    user, candidates = _inputs(bundle.manifest, 50, seed=1)
    full = runner.run(user, candidates)
    part = runner.run(user, candidates[10:13])
    for head, scores in part.items():
        np.testing.assert_allclose(scores, full[head][10:13], rtol=1e-5, atol=1e-6)
    other_user, _ = _inputs(bundle.manifest, 1, seed=2)
    assert not np.allclose(runner.run(other_user, candidates)["click"], full["click"])


def test_empty_candidate_batch(tiny: Bundle) -> None:
    runner = OnnxRunner.build(tiny)
    user, candidates = _inputs(tiny.manifest, 0)
    out = runner.run(user, candidates)
    assert {head: scores.shape for head, scores in out.items()} == {"click": (0,), "finish": (0,), "like": (0,)}


@pytest.mark.parametrize(
    ("user_shape", "candidate_shape", "dtype", "match"),
    [
        pytest.param((1, 15), (4, 24), np.float32, r"user must be float32 of shape \(1, 16\)", id="user-width"),
        pytest.param((2, 16), (4, 24), np.float32, r"user must be float32 of shape \(1, 16\)", id="two-users"),
        pytest.param((1, 16), (4, 25), np.float32, r"candidates must be float32 of shape \(N, 24\)", id="cand"),
        pytest.param((1, 16), (4, 24), np.float64, "must be float32", id="float64"),
    ],
)
def test_run_refuses_wrong_arrays(
    tiny: Bundle, user_shape: tuple[int, int], candidate_shape: tuple[int, int], dtype: Any, match: str
) -> None:
    runner = OnnxRunner.build(tiny)
    with pytest.raises(ValueError, match=match):
        runner.run(np.zeros(user_shape, dtype=dtype), np.zeros(candidate_shape, dtype=dtype))


def test_threads_must_be_positive(tiny: Bundle) -> None:
    with pytest.raises(ValueError, match="intra_op_threads"):
        OnnxRunner.build(tiny, intra_op_threads=0)


# --- bundles whose network does not match the manifest ---------------------------------------------------


def _with_manifest(bundle: Bundle, **changes: Any) -> Bundle:
    m = bundle.manifest
    fields: dict[str, Any] = {
        "model": m.model,
        "version": m.version,
        "slots": m.slots,
        "features": m.features,
        "heads": m.heads,
        "user_input": m.user_input,
        "candidate_input": m.candidate_input,
        "created_at_ms": m.created_at_ms,
    }
    fields.update(changes)
    return Bundle(manifest=build_manifest(**fields), onnx_bytes=bundle.onnx_bytes, source=bundle.source)


MISMATCHES: list[Any] = [
    pytest.param(
        lambda m: {"slots": [dataclasses.replace(s, dim=4) for s in m.slots]},
        "'user' is 16 wide, the manifest's features make it 8",
        id="dim",
    ),
    pytest.param(lambda m: {"features": m.features[:-1]}, "'candidates' is 24 wide", id="feature-dropped"),
    pytest.param(lambda m: {"user_input": "u"}, "inputs are", id="input-name"),
    pytest.param(
        lambda m: {"heads": (*m.heads, Head("share", "p_share", 0.1))}, "'p_share', which dense.onnx lacks", id="head"
    ),
]


@pytest.mark.parametrize(("change", "match"), MISMATCHES)
def test_mismatching_manifest_is_refused(
    tiny: Bundle, change: Callable[[Manifest], dict[str, Any]], match: str
) -> None:
    with pytest.raises(BundleInvalid, match=match):
        OnnxRunner.build(_with_manifest(tiny, **change(tiny.manifest)))


# --- hand-built networks ---------------------------------------------------------------------------------


def _custom_bundle(
    tiny: Bundle,
    nodes: list[Any],
    *,
    outputs: dict[str, list[Any]] | None = None,
    output_type: int = TensorProto.FLOAT,
    candidate_type: int = TensorProto.FLOAT,
    candidate_rows: int | str = "n",
) -> Bundle:
    """A bundle with tiny's manifest and a network whose nodes compute ``p_click`` from the inputs."""
    m = tiny.manifest
    shapes = outputs or {"p_click": ["n"]}
    graph = helper.make_graph(
        nodes,
        "custom",
        [
            helper.make_tensor_value_info("user", TensorProto.FLOAT, [1, m.user_width]),
            helper.make_tensor_value_info("candidates", candidate_type, [candidate_rows, m.candidate_width]),
        ],
        [helper.make_tensor_value_info(name, output_type, shape) for name, shape in shapes.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    one_head = _with_manifest(tiny, heads=(Head("click", "p_click", 1.0),))
    return Bundle(manifest=one_head.manifest, onnx_bytes=model.SerializeToString(), source=tiny.source)


def _row_sums(extra: list[Any]) -> list[Any]:
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [1])
    return [
        helper.make_node("Constant", [], ["axis"], value=axis),
        helper.make_node("ReduceSum", ["candidates", "axis"], ["s"], keepdims=0),
        *extra,
    ]


@pytest.mark.parametrize(
    ("nodes", "match"),
    [
        pytest.param(
            # sqrt(-(|s| + 1)) is NaN for every row
            _row_sums(
                [
                    helper.make_node("Abs", ["s"], ["a"]),
                    helper.make_node("Constant", [], ["one"], value_float=1.0),
                    helper.make_node("Add", ["a", "one"], ["b"]),
                    helper.make_node("Neg", ["b"], ["c"]),
                    helper.make_node("Sqrt", ["c"], ["p_click"]),
                ]
            ),
            "NaN or infinite",
            id="nan",
        ),
        pytest.param(
            # 1 / (s - s) is infinite for every row
            _row_sums([helper.make_node("Sub", ["s", "s"], ["z"]), helper.make_node("Reciprocal", ["z"], ["p_click"])]),
            "NaN or infinite",
            id="inf",
        ),
        pytest.param(
            # a [1, N*C] reshape that only works while N == 1 (the declared shapes say nothing of it)
            [
                helper.make_node(
                    "Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [1], [-1])
                ),
                helper.make_node("Reshape", ["candidates", "shape"], ["flat"]),
                helper.make_node("Constant", [], ["start"], value=helper.make_tensor("b", TensorProto.INT64, [1], [0])),
                helper.make_node("Constant", [], ["stop"], value=helper.make_tensor("e", TensorProto.INT64, [1], [1])),
                helper.make_node("Slice", ["flat", "start", "stop"], ["p_click"]),
            ],
            r"has shape \(1,\) for 64 candidates",
            id="wrong-size",
        ),
    ],
)
def test_warm_up_refuses_unusable_outputs(tiny: Bundle, nodes: list[Any], match: str) -> None:
    runner = OnnxRunner.build(_custom_bundle(tiny, nodes))
    with pytest.raises(BundleInvalid, match=match):
        runner.warm_up()


def test_warm_up_refuses_a_network_that_fails_at_run_time(tiny: Bundle) -> None:
    # Reshape to [1, C]: fine for one candidate, an error for 64.
    shape = helper.make_tensor("shape_value", TensorProto.INT64, [2], [1, tiny.manifest.candidate_width])
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=shape),
        helper.make_node("Reshape", ["candidates", "shape"], ["r"]),
        *_row_sums([])[:1],
        helper.make_node("ReduceSum", ["r", "axis"], ["p_click"], keepdims=0),
    ]
    runner = OnnxRunner.build(_custom_bundle(tiny, nodes))
    with pytest.raises(BundleInvalid, match="fails on 64 candidates"):
        runner.warm_up()


def test_column_output_is_flattened(tiny: Bundle) -> None:
    nodes = [
        helper.make_node("ReduceMean", ["candidates"], ["m"], axes=[1], keepdims=1),  # opset 17: attribute
        helper.make_node("Sigmoid", ["m"], ["p_click"]),
    ]
    runner = OnnxRunner.build(_custom_bundle(tiny, nodes, outputs={"p_click": ["n", 1]}))
    runner.warm_up()
    user, candidates = _inputs(tiny.manifest, 5)
    scores = runner.run(user, candidates)["click"]
    expected = 1.0 / (1.0 + np.exp(-candidates.mean(axis=1)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_contract_violations_in_the_graph_are_refused_at_build(tiny: Bundle) -> None:
    identity = [helper.make_node("Identity", ["candidates"], ["p_click"])]
    wide = {"p_click": ["n", tiny.manifest.candidate_width]}
    with pytest.raises(BundleInvalid, match=r"has shape \['n', 24\]; a head gives \[N\] or \[N, 1\]"):
        OnnxRunner.build(_custom_bundle(tiny, identity, outputs=wide))
    cast = [helper.make_node("Cast", ["c"], ["p_click"], to=TensorProto.DOUBLE)]
    doubles = _row_sums([helper.make_node("Identity", ["s"], ["c"]), *cast])
    with pytest.raises(BundleInvalid, match=r"'p_click' is tensor\(double\), a head must be float32"):
        OnnxRunner.build(_custom_bundle(tiny, doubles, output_type=TensorProto.DOUBLE))
    as_float = [helper.make_node("Cast", ["candidates"], ["f"], to=TensorProto.FLOAT)]
    ints = [*as_float, helper.make_node("ReduceSum", ["f"], ["p_click"], keepdims=0)]
    with pytest.raises(BundleInvalid, match=r"'candidates' is tensor\(double\), the contract is float32"):
        OnnxRunner.build(_custom_bundle(tiny, ints, candidate_type=TensorProto.DOUBLE, outputs={"p_click": []}))
    fixed = _row_sums([helper.make_node("Identity", ["s"], ["p_click"])])
    with pytest.raises(BundleInvalid, match="fixed batch of 500; it must be dynamic"):
        OnnxRunner.build(_custom_bundle(tiny, fixed, candidate_rows=500, outputs={"p_click": [500]}))


def test_tiny_bundle_source_is_kept(tiny: Bundle) -> None:
    runner = OnnxRunner.build(tiny)
    assert runner.bundle is tiny
    assert runner.manifest.version == "1"
    assert isinstance(tiny.source, Path)
