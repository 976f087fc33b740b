"""`liverank serve` refuses to start with one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVERANK_")}
    return subprocess.run(
        [sys.executable, "-m", "liverank.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert lines, "no error message"
    return lines[-1]


def test_no_admin_token_refuses_to_start(tmp_path: Path) -> None:
    result = _serve("--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "LIVERANK_ADMIN_TOKEN" in _one_line(result)


def test_open_admin_is_refused_off_loopback(tmp_path: Path) -> None:
    result = _serve("--data-dir", str(tmp_path), "--open-admin", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "loopback" in _one_line(result)


def test_a_foreign_store_directory_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "notes.txt").write_text("not a store")
    result = _serve("--data-dir", str(tmp_path), env={"LIVERANK_ADMIN_TOKEN": "t"})
    assert result.returncode == 1
    assert "not a liverank store" in _one_line(result)


def test_a_damaged_store_file_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "data.mdb").write_bytes(b"\x00garbage" * 1000)
    result = _serve("--data-dir", str(tmp_path), env={"LIVERANK_ADMIN_TOKEN": "t"})
    assert result.returncode == 1
    assert "data.mdb" in _one_line(result)


def test_a_broken_startup_bundle_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    (bundle / "dense.onnx").write_bytes(b"x")
    result = _serve("--data-dir", str(tmp_path / "data"), "--bundle", str(bundle), env={"LIVERANK_ADMIN_TOKEN": "t"})
    assert result.returncode == 1
    assert "manifest.json" in _one_line(result)


def test_the_dispatcher_lists_commands_and_rejects_unknown_ones() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "liverank.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0
    assert "serve" in listed.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "liverank.cli", "frobnicate"], capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2
    assert "unknown command" in unknown.stderr


def test_serve_does_not_load_torch() -> None:
    code = "import sys, liverank.cli, serving.cli; assert 'torch' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "ok", result.stderr
