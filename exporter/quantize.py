"""int8 dense towers: ONNX Runtime's dynamic quantization of the tower's matrix products.

The method was chosen by measurement on this machine class (BENCHMARKS.md, dense tower precision): dynamic
quantization (int8 weights per output channel, activations quantized per run from their own range) ran the W-500
tower about 3x faster than fp32 with the best parity; static QDQ with calibration rows was no faster with u8
activations, 1-2x slower with s8, and its ranges fixed at calibration gave larger differences. Dynamic quantization
needs no calibration rows, so a bundle's int8 graph depends only on its fp32 graph.

ONNX Runtime's dynamic quantizer covers ``MatMul`` but not ``Gemm``, so every ``Gemm`` with constant weights is
first rewritten as ``MatMul`` + ``Add`` (exact). The layers that produce the logits (a weight with at most as many
outputs as the model has heads: the head projection, a DeepFM's wide part) stay fp32: they are a sliver of the
work and sit directly under the scores.

This module imports onnxruntime (the exporter otherwise never does): the quantizer is part of it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from liverank.exporter.split import replace_nodes

log = logging.getLogger(__name__)

METHOD = "onnxruntime dynamic int8: MatMul weights per output channel, activations per run; logit layers fp32"


def quantize_int8(model: onnx.ModelProto, *, n_heads: int) -> onnx.ModelProto:
    """The int8 version of ``model`` (see the module docstring for what is quantized and what stays fp32)."""
    prepared = gemm_as_matmul(model)
    keep_fp32 = logit_layers(prepared, n_heads=n_heads)
    with tempfile.TemporaryDirectory(prefix="liverank-quantize-") as tmp:
        source, shaped, target = Path(tmp) / "fp32.onnx", Path(tmp) / "shaped.onnx", Path(tmp) / "int8.onnx"
        onnx.save(prepared, source)
        # Shape inference only: ONNX Runtime's graph optimisations would fuse MatMul + Add back into Gemm, which the
        # dynamic quantizer skips. The pre-processing mark also keeps the quantizer from warning on the root logger.
        quant_pre_process(str(source), str(shaped), skip_optimization=True)
        quantize_dynamic(
            shaped,
            target,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_fp32,
        )
        quantized = onnx.load(target)
    log.debug("quantized to int8; kept fp32: %s", keep_fp32)
    return quantized


def gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each plain ``Gemm`` (constant weights, alpha = beta = 1, no transA) written as
    ``MatMul`` (+ ``Add`` of its bias)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        weights = initializers.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if weights is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights)
        if attrs.get("transB", 0):
            w = w.T
        name = node.name or f"gemm{index}"
        w_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        if len(node.input) > 2 and node.input[2]:
            product = f"{node.output[0]}__product"
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [product], name=f"{name}/matmul"))
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{name}/bias"))
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [node.output[0]], name=f"{name}/matmul"))
    replace_nodes(out, nodes)
    return out


def logit_layers(model: onnx.ModelProto, *, n_heads: int) -> list[str]:
    """Names of the ``MatMul`` nodes whose constant weights have at most ``n_heads`` output columns."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type.lower()}{index}"
        shape = shapes.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if shape is not None and len(shape) == 2 and shape[1] <= n_heads:
            names.append(node.name)
    return names
