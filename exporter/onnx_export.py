"""Exporting a PyTorch dense tower to a model bundle, with a parity check (the train extra: this module imports torch).

The tower's ``forward(user, candidates)`` follows the bundle's ONNX contract (store/manifest.py): ``user`` is
[1, user_width], ``candidates`` [N, candidate_width], one [N] probability per head, in manifest head order. After
export, the ONNX graph is run with onnx's reference evaluator (pure Python: the exporter must not depend on ONNX
Runtime) on a seeded sample batch; if any output differs from PyTorch's by more than ``tolerance``, the export is
refused with ``ExportParityError`` and nothing is written.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from liverank.errors import LiverankError
from liverank.exporter.archive import write_bundle
from liverank.store.manifest import Manifest

log = logging.getLogger(__name__)

OPSET = 17
DEFAULT_TOLERANCE = 1e-4


class ExportParityError(LiverankError):
    """The exported graph does not compute what the PyTorch tower computes."""

    code = "export_parity"

    def __init__(self, max_abs_diff: float, tolerance: float, head: str) -> None:
        super().__init__(
            f"ONNX export differs from PyTorch by {max_abs_diff:.3g} on head {head!r} (tolerance {tolerance:g})"
        )
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


def export_onnx(tower: torch.nn.Module, manifest: Manifest) -> bytes:
    """The ONNX bytes of ``tower``, with N dynamic."""
    tower.eval()
    user = torch.zeros(1, manifest.user_width)
    candidates = torch.zeros(4, manifest.candidate_width)
    outputs = [head.output for head in manifest.heads]
    with tempfile.TemporaryDirectory(prefix="liverank-export-") as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the torch.export one, which needs onnxscript, takes
        # seconds per export, and itself warns from torch's internals on this release. Both raise deprecation
        # warnings from inside torch, scoped to this call; the parity check below is what guards the result.
        # Revisit when the new exporter is quiet and fast.
        warnings.simplefilter("ignore", DeprecationWarning)
        path = Path(tmp) / "dense.onnx"
        torch.onnx.export(
            tower,
            (user, candidates),
            str(path),
            input_names=[manifest.user_input, manifest.candidate_input],
            output_names=outputs,
            dynamic_axes={manifest.candidate_input: {0: "n"}, **{name: {0: "n"} for name in outputs}},
            opset_version=OPSET,
            dynamo=False,
        )
        return path.read_bytes()


def check_parity(
    tower: torch.nn.Module,
    manifest: Manifest,
    onnx_bytes: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> float:
    """Max abs difference between PyTorch and the ONNX graph on a seeded batch; raises past ``tolerance``."""
    rng = np.random.default_rng(seed)
    user = rng.standard_normal((1, manifest.user_width)).astype(np.float32)
    candidates = rng.standard_normal((37, manifest.candidate_width)).astype(np.float32)
    with torch.no_grad():
        expected = tower(torch.from_numpy(user), torch.from_numpy(candidates))
    expected = [np.asarray(t.detach().numpy(), dtype=np.float32).reshape(-1) for t in expected]
    evaluator = ReferenceEvaluator(onnx.load_from_string(onnx_bytes))
    # onnx's reference Sigmoid evaluates both of its branches, so saturated logits (many fields, random inputs)
    # overflow in the branch it then discards; the outputs compared below are still exact.
    with np.errstate(over="ignore", invalid="ignore"):
        got = evaluator.run(None, {manifest.user_input: user, manifest.candidate_input: candidates})
    worst = 0.0
    for head, want, have in zip(manifest.heads, expected, got, strict=True):
        diff = float(np.max(np.abs(np.asarray(have, dtype=np.float32).reshape(-1) - want)))
        if not np.isfinite(diff) or diff > tolerance:
            raise ExportParityError(diff, tolerance, head.name)
        worst = max(worst, diff)
    return worst


def export_bundle(
    tower: torch.nn.Module,
    manifest: Manifest,
    out_dir: str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> Path:
    """Export ``tower`` and write the bundle (manifest + ONNX) to ``out_dir`` once the parity check passes."""
    onnx_bytes = export_onnx(tower, manifest)
    worst = check_parity(tower, manifest, onnx_bytes, tolerance=tolerance, seed=seed)
    path = write_bundle(out_dir, manifest, onnx_bytes)
    log.info("exported %s version %s (max abs diff %.2g) to %s", manifest.model, manifest.version, worst, path)
    return path
