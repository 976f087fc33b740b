"""The user side computed once per request: a graph rewrite of the dense tower's first layer(s).

A bundle's graph broadcasts the single user row to the N candidate rows and concatenates them
(``x = Concat(Expand(user_row), candidates)``), then multiplies ``x`` by the first layer's weights. Every one of
the N rows carries the same user part, so N - 1 of those products are wasted work. Splitting the weight matrix by
rows, ``x @ W + b == candidates @ W_c + (user_row @ W_u + b)``, computes the user part once ([1, H]) and
broadcasts it in the add. The rewrite does this for every ``Gemm`` or ``MatMul`` that reads ``x`` with constant
weights (the tower's first layer, and the wide part of a DeepFM); other readers of ``x`` (the second-order term)
keep reading it. The result equals the unsplit graph up to float rounding (a test holds it to 1e-5).

Works on both bundle sources: the torch exporter (``user.expand(...)``, ``torch.cat``) and the hand-built synthetic
graphs produce this pattern. A graph without it, or whose user side has no columns, is returned unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Broadcast:
    """``x = Concat(Expand(user_row, shape), candidates)``: the tensor names and the user side's width."""

    x: str
    user_row: str
    candidates: str
    user_width: int


def split_user_side(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose layers reading the broadcast user row compute its part once; and how many
    layers were split (0: the model is returned as it was)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    broadcast = _find_broadcast(out)
    if broadcast is None or broadcast.user_width == 0:
        return model, 0
    initializers = {init.name: init for init in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    split = 0
    for node in graph.node:
        weights = _splittable_weights(node, broadcast.x, initializers)
        if weights is None:
            new_nodes.append(node)
            continue
        new_nodes.extend(_split_node(node, weights, broadcast, graph))
        split += 1
    if not split:
        return model, 0
    replace_nodes(out, new_nodes)
    log.debug("split %d layer(s) reading the broadcast user row (user width %d)", split, broadcast.user_width)
    return out, split


def replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Make ``nodes`` the graph's nodes, drop the initializers no node reads any more, and check the model."""
    graph = model.graph
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)


def _find_broadcast(model: onnx.ModelProto) -> _Broadcast | None:
    graph = model.graph
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        if node.op_type != "Concat" or len(node.input) != 2 or _attr(node, "axis", 0) not in (1, -1):
            continue
        expand = producers.get(node.input[0])
        if expand is None or expand.op_type != "Expand":
            continue
        width = _static_width(model, expand.input[0])
        if width is None:
            log.warning("the broadcast user row %r has no static width; the graph is left unsplit", expand.input[0])
            return None
        return _Broadcast(x=node.output[0], user_row=expand.input[0], candidates=node.input[1], user_width=width)
    return None


def _static_width(model: onnx.ModelProto, name: str) -> int | None:
    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.name == name:
            dims = info.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None


def _splittable_weights(node: onnx.NodeProto, x: str, initializers: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The constant weight matrix of a ``Gemm``/``MatMul`` that multiplies ``x`` (as its left operand)."""
    if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[0] != x:
        return None
    init = initializers.get(node.input[1])
    if init is None:
        return None
    if node.op_type == "Gemm" and (
        _attr(node, "transA", 0) != 0 or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0
    ):
        return None
    weights = numpy_helper.to_array(init)
    return weights if weights.ndim == 2 else None


def _split_node(
    node: onnx.NodeProto, weights: np.ndarray, broadcast: _Broadcast, graph: onnx.GraphProto
) -> list[onnx.NodeProto]:
    """``user_row @ W_u (+ b)`` once, ``candidates @ W_c`` per row, added with broadcasting."""
    name = node.name or node.output[0]
    width = broadcast.user_width
    trans_b = node.op_type == "Gemm" and _attr(node, "transB", 0) == 1
    user_w, cand_w = (weights[:, :width], weights[:, width:]) if trans_b else (weights[:width], weights[width:])
    user_w_name, cand_w_name = f"{node.input[1]}__user", f"{node.input[1]}__candidates"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(user_w), user_w_name),
            numpy_helper.from_array(np.ascontiguousarray(cand_w), cand_w_name),
        ]
    )
    user_out, cand_out = f"{node.output[0]}__user", f"{node.output[0]}__candidates"
    if node.op_type == "Gemm":
        bias = list(node.input[2:3])
        user_node = helper.make_node(
            "Gemm", [broadcast.user_row, user_w_name, *bias], [user_out], name=f"{name}/user", transB=int(trans_b)
        )
        cand_node = helper.make_node(
            "Gemm", [broadcast.candidates, cand_w_name], [cand_out], name=f"{name}/candidates", transB=int(trans_b)
        )
    else:
        user_node = helper.make_node("MatMul", [broadcast.user_row, user_w_name], [user_out], name=f"{name}/user")
        cand_node = helper.make_node(
            "MatMul", [broadcast.candidates, cand_w_name], [cand_out], name=f"{name}/candidates"
        )
    add = helper.make_node("Add", [cand_out, user_out], [node.output[0]], name=f"{name}/broadcast_user")
    return [user_node, cand_node, add]


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return float(value) if isinstance(value, int | float) else default
    return default
