"""The writer process: it applies deltas, is restarted if it dies, and never outlives its server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from liverank.trainer.servers import LiverankServer
from tests.serving.conftest import ADMIN, LiveServer, delta_bytes, manifest_of, settings_for


def _children(pid: int) -> list[int]:
    """Writer processes started by ``pid`` (spawned interpreters; not multiprocessing's resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes() if int(fields[1]) == pid else b""
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                out.append(int(entry.name))
    return out


def _wait(predicate: object, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_a_killed_writer_is_restarted_and_deltas_keep_flowing(tmp_path: Path, tiny_bundle: Path) -> None:
    server = LiveServer(settings_for(tmp_path / "d", tiny_bundle)).start()
    try:
        schema = manifest_of(server).schema_hash
        with server.client() as client:
            first = client.post(
                "/admin/deltas?wait=visible", content=delta_bytes(schema, 1, "item_id", [1], 1.0), headers=ADMIN
            )
            assert first.json()["status"] == "visible"
            writers = _children(os.getpid())
            assert len(writers) == 1, writers
            os.kill(writers[0], signal.SIGKILL)
            again = client.post(
                "/admin/deltas?wait=visible", content=delta_bytes(schema, 2, "item_id", [2], 2.0), headers=ADMIN
            )
            assert again.status_code == 200, again.text
            assert again.json()["epoch"]["sparse_seq"] == {"trainer": 2}
            metrics = client.get("/metrics").text
        assert 'liverank_updater_failures_total{kind="writer_restart"}' in metrics
        assert _children(os.getpid()) != writers
    finally:
        server.stop()


@pytest.mark.slow
def test_the_writer_exits_when_its_server_is_killed(tmp_path: Path, tiny_bundle: Path) -> None:
    server = LiverankServer("victim", tmp_path / "data", tiny_bundle, tmp_path).start()
    assert server.pid is not None
    writers = _children(server.pid)
    assert writers, "the server started no writer process"
    os.kill(server.pid, signal.SIGKILL)
    server.stop()
    assert _wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in writers)), "an orphaned writer kept running"
    # and a restarted server works on the same data
    again = LiverankServer("again", tmp_path / "data", tiny_bundle, tmp_path).start()
    try:
        with httpx.Client(base_url=again.url) as client:
            assert client.get("/readyz").status_code == 200
    finally:
        again.stop()
