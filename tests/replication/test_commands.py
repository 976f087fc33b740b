"""``liverank snapshot`` and ``liverank cluster up`` as users run them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from liverank.server_process import process_tree
from liverank.serving.replication.snapshot_cli import main as snapshot_main
from liverank.store import EmbeddingStore
from tests.store.conftest import MAP_BYTES, SLOTS, make_delta


def test_snapshot_command_copies_a_store_with_its_tags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with EmbeddingStore.open(tmp_path / "data" / "store", slots=SLOTS, map_size_bytes=MAP_BYTES) as store:
        for seq in range(1, 6):
            store.apply(make_delta(seq, {"item": ([seq], 1.0)}), log_position=seq + 10)
        digest = store.rows_checksum()["rows_digest"]
        # the server keeps its store open; the command opens it beside (another process in real use)
    out = tmp_path / "snap"
    assert (
        snapshot_main(["--data-dir", str(tmp_path / "data"), "--out", str(out), "--map-size-bytes", str(MAP_BYTES)])
        == 0
    )
    tags = orjson.loads((out / "snapshot.json").read_bytes())
    assert tags["applied_seq"] == {"trainer": 5}
    assert tags["log_position"] == 15
    with EmbeddingStore.open(out, map_size_bytes=MAP_BYTES, ram_tier=False) as copy:
        assert copy.rows_checksum()["rows_digest"] == digest
    assert "copying" in capsys.readouterr().out
    assert snapshot_main(["--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 2  # not empty: refused
    assert snapshot_main(["--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


@contextlib.contextmanager
def sigint_default_in_children() -> Iterator[None]:
    """Children started inside get Ctrl-C's default action (Python: KeyboardInterrupt), even when this process was
    started with SIGINT ignored, as a shell does for a background job without job control (``make test &`` in a
    script): an ignored signal stays ignored across exec, and ``cluster up`` would never see the Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a handled signal is reset to SIG_DFL by exec
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_cluster_up_starts_prints_urls_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with sigint_default_in_children():
        process = subprocess.Popen(
            [sys.executable, "-m", "liverank.cli", "cluster", "up", "--dir", str(tmp_path), "--nats-nodes", "1",
             "--replicas", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
    assert process.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert "Ctrl-C stops everything" in text, text
        assert "replica r2:" in text
        assert "NATS (--log):  nats://127.0.0.1:" in text
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # failed above: stop the cluster and its children, close the pipe
            for pid in reversed(process_tree(process.pid)):  # children first
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, text + rest
    assert "stopped." in rest
    for pid_dir in Path("/proc").iterdir():  # no nats-server of this cluster is left running
        if pid_dir.name.isdigit() and pid_dir.name != str(os.getpid()):
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            assert not (b"nats-server" in cmdline and str(tmp_path).encode() in cmdline)
