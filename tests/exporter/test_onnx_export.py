"""Exporting a PyTorch tower: parity with ONNX, the bundle serving loads, and a refused export."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from liverank.exporter.onnx_export import ExportParityError, export_bundle  # noqa: E402
from liverank.exporter.synthetic import synthetic_manifest  # noqa: E402
from liverank.serving.bundle import load_bundle_dir  # noqa: E402
from liverank.serving.runner import OnnxRunner  # noqa: E402

MANIFEST = synthetic_manifest("tiny", dim=8)


class Tower(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, cheat: bool = False) -> None:
        super().__init__()
        self.cheat = cheat
        self.body = torch.nn.Sequential(
            torch.nn.Linear(MANIFEST.user_width + MANIFEST.candidate_width, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )

    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.cat([user.expand(candidates.shape[0], -1), candidates], dim=1)
        logits = self.body(x)
        if self.cheat and torch.onnx.is_in_onnx_export():
            logits = logits + 1.0  # the exported graph computes something else
        probs = torch.sigmoid(logits)
        return probs[:, 0], probs[:, 1], probs[:, 2]


def test_an_exported_tower_matches_pytorch_and_serves(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tower = Tower()
    path = export_bundle(tower, MANIFEST, tmp_path / "b")
    runner = OnnxRunner.build(load_bundle_dir(path))
    runner.warm_up()
    user = torch.randn(1, MANIFEST.user_width)
    candidates = torch.randn(500, MANIFEST.candidate_width)
    got = runner.run(user.numpy(), candidates.numpy())
    with torch.no_grad():
        want = tower(user, candidates)
    for head, expected in zip(MANIFEST.heads, want, strict=True):
        assert float((torch.from_numpy(got[head.name]) - expected).abs().max()) < 1e-5


def test_an_export_that_computes_something_else_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportParityError, match="differs from PyTorch"):
        export_bundle(Tower(cheat=True), MANIFEST, tmp_path / "b")
    assert not (tmp_path / "b").exists()
