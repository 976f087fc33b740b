"""Synthetic model bundles, built with ``onnx.helper`` and numpy only (no torch).

The dense network follows W-500 (``/work/shared/WORKLOADS.md``): the user row is broadcast to the N candidate
rows and concatenated with them, then an MLP with ReLU gives one logit per head, a DeepFM-style second-order
term over the embedding fields is added to every logit, and a sigmoid turns each logit into a probability.
Weights are seeded, so one seed gives byte-identical ``dense.onnx`` files.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from liverank.exporter.archive import write_bundle
from liverank.exporter.parity import random_rows
from liverank.exporter.precision import finish_dense
from liverank.store.manifest import Feature, Head, Manifest, build_manifest
from liverank.store.slots import SlotConfig

logger = logging.getLogger(__name__)

Preset = Literal["w500", "tiny"]
PRESETS: tuple[str, ...] = ("w500", "tiny")
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"w500": (512, 256, 128), "tiny": (32, 16)}
HEADS: tuple[tuple[str, float], ...] = (("click", 0.6), ("finish", 0.3), ("like", 0.1))
# Opset 17 / IR 8 load in every onnxruntime this project supports (>= 1.17).
OPSET = 17
IR_VERSION = 8
# Parity of a synthetic int8 bundle: 16 blocks of 500 random candidate rows, 4 users each (64 requests).
PARITY_BLOCKS = 16
PARITY_CANDIDATES = 500
PARITY_USERS = 4


def preset_features(preset: str) -> tuple[Feature, ...]:
    """The features of a preset, in ONNX input order (user side first, then candidate side)."""
    if preset == "tiny":
        return (
            Feature("user_id", "user", "id", "user_id"),
            Feature("hist_item_ids", "user", "id_list", "item_id", "mean", 10),
            Feature("item_id", "candidate", "id", "item_id"),
            Feature("author_id", "candidate", "id", "author_id"),
            Feature("tags", "candidate", "id_list", "tags", "mean", 5),
        )
    if preset == "w500":
        user_ids = ("device", "country", "hour_bucket", "user_age_bucket")
        candidate_ids = (
            "category",
            "language",
            "duration_bucket",
            "age_bucket_item",
            *(f"item_f{i}" for i in range(12)),
        )
        return (
            Feature("user_id", "user", "id", "user_id"),
            Feature("hist_item_ids", "user", "id_list", "item_id", "mean", 50),
            *(Feature(name, "user", "id", name) for name in user_ids),
            Feature("item_id", "candidate", "id", "item_id"),
            Feature("author_id", "candidate", "id", "author_id"),
            Feature("music_id", "candidate", "id", "music_id"),
            Feature("tags", "candidate", "id_list", "tags", "mean", 5),
            *(Feature(name, "candidate", "id", name) for name in candidate_ids),
        )
    raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")


def synthetic_manifest(preset: str, *, dim: int = 32, version: str = "1", created_at_ms: int | None = None) -> Manifest:
    """The manifest of a synthetic bundle: one int-id fp32 slot per distinct slot name, three heads."""
    features = preset_features(preset)
    slot_names = list(dict.fromkeys(f.slot for f in features if f.slot is not None))
    return build_manifest(
        model=f"synthetic-{preset}",
        version=version,
        slots=[SlotConfig(name=name, dim=dim) for name in slot_names],
        features=features,
        heads=[Head(name, f"p_{name}", weight) for name, weight in HEADS],
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
    )


def build_dense_model(manifest: Manifest, *, hidden: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    """The dense network of ``manifest`` as an ONNX model with seeded random weights.

    Every feature must be an embedding field of one shared dim (the second-order term reshapes the
    concatenated input to [N, fields, dim]).
    """
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden layer sizes must be positive, got {hidden}")
    dims = {manifest.feature_width(f) for f in manifest.features if f.kind != "numeric"}
    if len(dims) != 1 or any(f.kind == "numeric" for f in manifest.features):
        raise ValueError("the synthetic network needs embedding features that all share one dim")
    (dim,) = dims
    n_fields = len(manifest.features)
    user_width, candidate_width = manifest.user_width, manifest.candidate_width
    n_heads = len(manifest.heads)
    rng = np.random.default_rng(seed)
    initializers: list[TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    def xavier(fan_in: int, fan_out: int) -> np.ndarray:
        scale = math.sqrt(2.0 / (fan_in + fan_out))
        return (rng.standard_normal((fan_in, fan_out)) * scale).astype(np.float32)

    u, c = manifest.user_input, manifest.candidate_input
    nodes = [
        # Broadcast the single user row to the N candidate rows, then concatenate along the features.
        helper.make_node("Shape", [c], ["cand_shape"]),
        helper.make_node("Slice", ["cand_shape", constant("at_0", _i64([0])), constant("at_1", _i64([1]))], ["n_rows"]),
        helper.make_node("Concat", ["n_rows", constant("user_width", _i64([user_width]))], ["user_shape"], axis=0),
        helper.make_node("Expand", [u, "user_shape"], ["user_rows"]),
        helper.make_node("Concat", ["user_rows", c], ["x"], axis=1),
    ]
    layer_in, width = "x", user_width + candidate_width
    for i, size in enumerate(hidden):
        w = constant(f"mlp{i}_w", xavier(width, size))
        b = constant(f"mlp{i}_b", np.zeros(size, dtype=np.float32))
        nodes.append(helper.make_node("Gemm", [layer_in, w, b], [f"mlp{i}_z"]))
        nodes.append(helper.make_node("Relu", [f"mlp{i}_z"], [f"mlp{i}_h"]))
        layer_in, width = f"mlp{i}_h", size
    head_w = constant("heads_w", xavier(width, n_heads))
    head_b = constant("heads_b", (rng.standard_normal(n_heads) * 0.1).astype(np.float32))
    nodes.append(helper.make_node("Gemm", [layer_in, head_w, head_b], ["mlp_logits"]))

    # Second order: 0.5 * sum_d((sum_f v)^2 - sum_f v^2). Its spread grows like fields * sqrt(dim) on
    # unit-variance embeddings, so each head's scale divides that out to keep the sigmoid unsaturated.
    fm_scale = rng.uniform(0.5, 1.0, size=(1, n_heads)) / (n_fields * math.sqrt(dim))
    axis1 = "at_1"
    nodes += [
        helper.make_node("Reshape", ["x", constant("fields_shape", _i64([-1, n_fields, dim]))], ["fields"]),
        helper.make_node("ReduceSum", ["fields", axis1], ["field_sum"], keepdims=0),
        helper.make_node("Mul", ["field_sum", "field_sum"], ["sum_sq"]),
        helper.make_node("Mul", ["fields", "fields"], ["fields_sq"]),
        helper.make_node("ReduceSum", ["fields_sq", axis1], ["sq_sum"], keepdims=0),
        helper.make_node("Sub", ["sum_sq", "sq_sum"], ["fm_diff"]),
        helper.make_node("ReduceSum", ["fm_diff", axis1], ["fm_total"], keepdims=1),
        helper.make_node("Mul", ["fm_total", constant("half", np.array(0.5, dtype=np.float32))], ["fm"]),
        helper.make_node("Mul", ["fm", constant("fm_scale", fm_scale.astype(np.float32))], ["fm_logits"]),
        helper.make_node("Add", ["mlp_logits", "fm_logits"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
    ]
    outputs = []
    for i, head in enumerate(manifest.heads):
        index = constant(f"head{i}_index", np.array(i, dtype=np.int64))
        nodes.append(helper.make_node("Gather", ["probs", index], [head.output], axis=1))
        outputs.append(helper.make_tensor_value_info(head.output, TensorProto.FLOAT, ["n"]))

    graph = helper.make_graph(
        nodes,
        f"{manifest.model}_dense",
        [
            helper.make_tensor_value_info(u, TensorProto.FLOAT, [1, user_width]),
            helper.make_tensor_value_info(c, TensorProto.FLOAT, ["n", candidate_width]),
        ],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="liverank-exporter")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_synthetic_bundle(
    out_dir: str | Path,
    *,
    preset: str = "w500",
    dim: int = 32,
    version: str = "1",
    seed: int = 0,
    hidden: tuple[int, ...] | None = None,
    created_at_ms: int | None = None,
    precision: str = "fp32",
    split: bool = True,
) -> Manifest:
    """Write a synthetic bundle (``manifest.json`` + ``dense.onnx``) into ``out_dir`` and return its manifest.

    The graph's user side is split out (``split``) and brought to ``precision`` by ``liverank.exporter.precision``;
    parity is measured on seeded unit-normal rows (no labels, so an int8 report has no AUC).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    manifest = synthetic_manifest(preset, dim=dim, version=version, created_at_ms=created_at_ms)
    layers = DEFAULT_HIDDEN[preset] if hidden is None else hidden
    model = build_dense_model(manifest, hidden=layers, seed=seed)
    rows = random_rows(manifest, n_rows=PARITY_BLOCKS * PARITY_CANDIDATES, seed=seed + 1)
    dense = finish_dense(model, manifest, precision=precision, rows=rows, split=split, users_per_block=PARITY_USERS)
    path = write_bundle(out_dir, dense.manifest, dense.onnx_bytes)
    logger.info(
        "wrote synthetic bundle %s (preset %s, version %s, %s, %d layers split, %d onnx bytes, schema %s)",
        path,
        preset,
        version,
        precision,
        dense.layers_split,
        len(dense.onnx_bytes),
        manifest.schema_hash[:12],
    )
    return dense.manifest


def _i64(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)
