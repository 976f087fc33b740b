"""From an fp32 dense graph to the graph a bundle ships: the user side split out, then the chosen precision.

Both bundle sources end here (the torch exporter and the synthetic builder):

1. **Split** (``liverank.exporter.split``): the first layer's user part is computed once per request. The split
   graph is checked against the unsplit one with ONNX Runtime on held-out rows; past ``SPLIT_TOLERANCE`` the export
   is refused.
2. **Precision**: ``fp32`` ships the split graph. ``int8`` quantizes it (``liverank.exporter.quantize``) and
   measures its parity against the unsplit fp32 graph (``liverank.exporter.parity``); the report goes into the
   manifest, and serving refuses the bundle if the report is outside its bounds. The exporter writes the bundle
   either way (the report says what it is) and warns when the default bounds would refuse it.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx

from liverank.errors import LiverankError
from liverank.exporter.parity import ParityRows, max_abs_diff, measure_parity
from liverank.exporter.quantize import METHOD, quantize_int8
from liverank.exporter.split import split_user_side
from liverank.store.manifest import Manifest
from liverank.store.parity import PRECISIONS, parity_violations

log = logging.getLogger(__name__)

SPLIT_TOLERANCE = 1e-5
# The bounds serving applies by default (LIVERANK_PARITY_*); the exporter warns with the same numbers.
DEFAULT_MIN_TOPK_OVERLAP = 0.95
DEFAULT_MAX_AUC_DIFF = 0.002


class ExportParityError(LiverankError):
    """The exported (or rewritten) graph does not compute what its source computes."""

    code = "export_parity"

    def __init__(
        self, max_abs_diff: float, tolerance: float, head: str, *, what: str = "ONNX export", source: str = "PyTorch"
    ) -> None:
        super().__init__(
            f"{what} differs from {source} by {max_abs_diff:.3g} on head {head!r} (tolerance {tolerance:g})"
        )
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


@dataclasses.dataclass(frozen=True)
class DenseGraph:
    """What a bundle ships: the graph's bytes and the manifest carrying its precision and parity report."""

    onnx_bytes: bytes
    manifest: Manifest
    layers_split: int


def finish_dense(
    model: onnx.ModelProto,
    manifest: Manifest,
    *,
    precision: str,
    rows: ParityRows,
    split: bool = True,
    users_per_block: int | None = None,
) -> DenseGraph:
    """Split ``model``'s user side (unless ``split`` is False) and bring it to ``precision``; see the module."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    graph, layers_split = split_user_side(model) if split else (model, 0)
    if layers_split:
        worst = max_abs_diff(model, graph, manifest, rows)
        if worst > SPLIT_TOLERANCE:
            raise ExportParityError(
                worst, SPLIT_TOLERANCE, "any", what="the user-side split graph", source="the unsplit graph"
            )
    if precision == "fp32":
        fp32 = dataclasses.replace(manifest, precision="fp32", parity=None)
        return DenseGraph(graph.SerializeToString(), fp32, layers_split)
    quantized = quantize_int8(graph, n_heads=len(manifest.heads))
    target = dataclasses.replace(manifest, precision=precision, parity=None)
    report = measure_parity(model, quantized, target, rows, method=METHOD, users_per_block=users_per_block)
    problems = parity_violations(
        precision, report, min_topk_overlap=DEFAULT_MIN_TOPK_OVERLAP, max_auc_diff=DEFAULT_MAX_AUC_DIFF
    )
    for problem in problems:
        log.warning(
            "%s version %s: serving with default bounds will refuse it: %s", manifest.model, manifest.version, problem
        )
    return DenseGraph(quantized.SerializeToString(), dataclasses.replace(target, parity=report), layers_split)
