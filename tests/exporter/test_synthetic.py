"""Synthetic bundles: presets, the ONNX contract, the network's arithmetic, the archive, and the CLI."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from onnx import numpy_helper

from liverank.exporter.archive import archive_bundle
from liverank.exporter.cli import main
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.store.errors import ManifestInvalid
from liverank.store.manifest import Manifest, manifest_from_json


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _check_contract(bundle_dir: Path, manifest: Manifest) -> onnx.ModelProto:
    assert manifest_from_json((bundle_dir / "manifest.json").read_bytes()) == manifest
    model = onnx.load_model(str(bundle_dir / "dense.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: _dims(i) for i in model.graph.input}
    assert inputs == {
        manifest.user_input: [1, manifest.user_width],
        manifest.candidate_input: ["n", manifest.candidate_width],
    }
    assert [o.name for o in model.graph.output] == [h.output for h in manifest.heads]
    assert all(_dims(o) == ["n"] for o in model.graph.output)
    return model


def test_tiny_preset(tmp_path: Path) -> None:
    manifest = build_synthetic_bundle(tmp_path, preset="tiny", dim=8, version="v7")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.onnx", "manifest.json"]
    assert [f.name for f in manifest.user_features] == ["user_id", "hist_item_ids"]
    assert [f.name for f in manifest.candidate_features] == ["item_id", "author_id", "tags"]
    assert manifest.version == "v7"
    assert (manifest.user_width, manifest.candidate_width) == (16, 24)
    _check_contract(tmp_path, manifest)


def test_w500_preset_follows_the_workload(tmp_path: Path) -> None:
    manifest = build_synthetic_bundle(tmp_path, preset="w500")
    assert [f.name for f in manifest.user_features] == [
        "user_id",
        "hist_item_ids",
        "device",
        "country",
        "hour_bucket",
        "user_age_bucket",
    ]
    candidates = [f.name for f in manifest.candidate_features]
    assert len(candidates) == 20
    assert candidates[:8] == [
        "item_id",
        "author_id",
        "music_id",
        "tags",
        "category",
        "language",
        "duration_bucket",
        "age_bucket_item",
    ]
    assert candidates[8:] == [f"item_f{i}" for i in range(12)]
    hist = manifest.user_features[1]
    assert (hist.kind, hist.slot, hist.pooling, hist.max_len) == ("id_list", "item_id", "mean", 50)
    tags = manifest.candidate_features[3]
    assert (tags.kind, tags.slot, tags.pooling, tags.max_len) == ("id_list", "tags", "mean", 5)
    assert len(manifest.slots) == 25  # 26 features, hist_item_ids shares item_id
    assert all((s.dim, s.dtype, s.id_kind) == (32, "float32", "int") for s in manifest.slots)
    assert [(h.name, h.weight) for h in manifest.heads] == [("click", 0.6), ("finish", 0.3), ("like", 0.1)]
    assert (manifest.user_width, manifest.candidate_width) == (6 * 32, 20 * 32)
    model = _check_contract(tmp_path, manifest)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert [weights[f"mlp{i}_w"].shape[1] for i in range(3)] == [512, 256, 128]


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        build_synthetic_bundle(tmp_path / name, preset="tiny", seed=seed, created_at_ms=0)
    onnx_bytes = {name: (tmp_path / name / "dense.onnx").read_bytes() for name in "abc"}
    assert onnx_bytes["a"] == onnx_bytes["b"]
    assert onnx_bytes["a"] != onnx_bytes["c"]


def _reference_probabilities(
    model: onnx.ModelProto, manifest: Manifest, user: np.ndarray, cand: np.ndarray
) -> np.ndarray:
    """The network as the module docstring describes it, in float64 numpy."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    x = np.concatenate([np.repeat(user, len(cand), axis=0), cand], axis=1).astype(np.float64)
    h = x
    for i in range(len([k for k in w if k.startswith("mlp") and k.endswith("_w")])):
        h = np.maximum(h @ w[f"mlp{i}_w"] + w[f"mlp{i}_b"], 0.0)
    fields = x.reshape(len(x), len(manifest.features), -1)
    fm = 0.5 * ((fields.sum(axis=1) ** 2) - (fields**2).sum(axis=1)).sum(axis=1, keepdims=True)
    logits = h @ w["heads_w"] + w["heads_b"] + fm * w["fm_scale"]
    return np.asarray(1.0 / (1.0 + np.exp(-logits)))


def test_network_computes_mlp_plus_second_order_term(tmp_path: Path) -> None:
    manifest = build_synthetic_bundle(tmp_path, preset="tiny", dim=8, seed=3)
    model = onnx.load_model(str(tmp_path / "dense.onnx"))
    rng = np.random.default_rng(0)
    user = rng.standard_normal((1, manifest.user_width), dtype=np.float32)
    cand = rng.standard_normal((7, manifest.candidate_width), dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([h.output for h in manifest.heads], {"user": user, "candidates": cand})
    expected = _reference_probabilities(model, manifest, user, cand)
    np.testing.assert_allclose(np.stack(got, axis=1), expected, rtol=1e-4, atol=1e-5)
    # Unit-variance inputs must not saturate the sigmoid: the scores have to spread out.
    assert expected.std() > 0.01
    assert expected.min() > 0.02
    assert expected.max() < 0.98


def test_archive_holds_exactly_the_two_files_and_is_reproducible(tmp_path: Path) -> None:
    build_synthetic_bundle(tmp_path / "b", preset="tiny")
    payload = archive_bundle(tmp_path / "b")
    assert payload == archive_bundle(tmp_path / "b")
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["manifest.json", "dense.onnx"]
        assert all(m.isreg() and m.uid == 0 and m.mode == 0o644 for m in members)
        for member in members:
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == (tmp_path / "b" / member.name).read_bytes()


def test_archive_refuses_an_incomplete_or_invalid_bundle(tmp_path: Path) -> None:
    build_synthetic_bundle(tmp_path, preset="tiny")
    doc = orjson.loads((tmp_path / "manifest.json").read_bytes())
    doc["heads"] = []
    (tmp_path / "manifest.json").write_bytes(orjson.dumps(doc))
    with pytest.raises(ManifestInvalid, match="no heads"):
        archive_bundle(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        archive_bundle(tmp_path)


def test_cli_builds_and_archives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    assert main(["synthetic", "--out", str(out), "--preset", "tiny", "--dim", "4", "--version", "9"]) == 0
    manifest = manifest_from_json((out / "manifest.json").read_bytes())
    assert (manifest.version, manifest.slot("item_id").dim) == ("9", 4)
    assert f"schema_hash {manifest.schema_hash}" in capsys.readouterr().out
    archive = tmp_path / "bundle.tar.gz"
    assert main(["archive", "--bundle", str(out), "--out", str(archive)]) == 0
    assert archive.read_bytes() == archive_bundle(out)


def test_liverank_command_dispatches_export(tmp_path: Path) -> None:
    from liverank.cli import main as liverank_main

    assert liverank_main(["export", "synthetic", "--out", str(tmp_path), "--preset", "tiny"]) == 0
    assert (tmp_path / "dense.onnx").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param([], "required: command", id="no-command"),
        pytest.param(["publish"], "invalid choice", id="unknown-command"),
        pytest.param(["synthetic"], "required: --out", id="no-out"),
        pytest.param(["synthetic", "--out", "x", "--preset", "w9"], "invalid choice", id="bad-preset"),
        pytest.param(["synthetic", "--out", "x", "--dim", "0"], "must be in 1..", id="dim-zero"),
        pytest.param(["synthetic", "--out", "x", "--dim", "big"], "not an integer", id="dim-text"),
        pytest.param(["synthetic", "--out", "x", "--seed", "-1"], "must be non-negative", id="seed-negative"),
        pytest.param(["synthetic", "--out", "x", "--version", ""], "must not be empty", id="empty-version"),
        pytest.param(["archive", "--out", "x.tar.gz"], "required: --bundle", id="no-bundle"),
        pytest.param(["archive", "--bundle", "/nonexistent", "--out", "x"], "not a directory", id="no-dir"),
    ],
)
def test_cli_bad_arguments_exit_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_invalid_bundle_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").write_bytes(b"{}")
    (tmp_path / "dense.onnx").write_bytes(b"\x08\x08")
    from liverank.cli import main as liverank_main

    assert liverank_main(["export", "archive", "--bundle", str(tmp_path), "--out", str(tmp_path / "a.tgz")]) == 1
    assert "missing field" in capsys.readouterr().err
    assert not (tmp_path / "a.tgz").exists()


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synthetic", "--help"]) == 0
    assert "--preset" in capsys.readouterr().out
