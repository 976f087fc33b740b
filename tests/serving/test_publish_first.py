"""A server's writer publishes a delta from its durable inbox first and writes LMDB behind it
(``liverank.store.lmdb_applier``). Real ``liverank serve --workers 2``: deltas are served while LMDB does not hold
them yet; a writer SIGKILLed then loses none of them, and no answer goes back to an earlier state while its
successor catches LMDB up from the inbox and publishes again."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from liverank.store.lmdb_applier import HOLD_ENV
from tests.reliability.conftest import ADMIN, PRODUCER, ServerProcess, build_bundle, stream_delta
from tests.serving.test_workers import WORKER, rank_body

pytestmark = pytest.mark.slow


class EpochWatcher(threading.Thread):
    """Ranks in a loop; records each answer's sparse sequence per worker, and every failure."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.stop_flag = threading.Event()
        self.seqs: dict[str, list[int]] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            with httpx.Client(base_url=self.url, timeout=30) as client:  # new connections: both workers answer
                for _ in range(5):
                    answer = client.post("/v1/rank", json=self.body)
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code} {answer.text[:200]}")
                        continue
                    seq = int(answer.json()["epoch"]["sparse_seq"].get(PRODUCER, 0))
                    self.seqs.setdefault(answer.headers[WORKER], []).append(seq)

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(60)


def _wait(condition: Any, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_deltas_are_served_before_lmdb_holds_them_and_a_killed_writer_loses_none(tmp_path: Path) -> None:
    hold = tmp_path / "hold-lmdb"
    hold.touch()  # the writer's LMDB thread writes nothing while this exists
    bundle = build_bundle(tmp_path / "bundle-1", "1")
    with ServerProcess(
        tmp_path / "data", bundle, log_path=tmp_path / "server.log", args=["--workers", "2"], env={HOLD_ENV: str(hold)}
    ) as server:
        server.start()
        with server.client() as client:
            schema = client.get("/v1/model").json()["manifest"]["schema_hash"]
            watcher = EpochWatcher(server.url, rank_body(client))
            watcher.start()
            try:
                for seq in (1, 2, 3):
                    answer = client.post("/admin/deltas?wait=visible", content=stream_delta(schema, seq), headers=ADMIN)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["status"] == "visible"
                    assert answer.json()["epoch"]["sparse_seq"] == {PRODUCER: seq}

                # Served by every worker, yet LMDB holds none of them: they wait in the writer's LMDB queue and
                # stay in the inbox.
                def status() -> dict[str, Any]:
                    body: dict[str, Any] = client.get("/admin/status", headers=ADMIN).json()
                    return body

                _wait(lambda: status()["writer"].get("lmdb_lag_deltas") == 3, "the writer to report 3 queued")
                held = status()
                assert held["epoch"]["sparse_seq"] == {PRODUCER: 3}  # served
                assert held["applied_seq"].get(PRODUCER, 0) == 0, held  # durable in LMDB: none yet
                assert held["inbox_depth"] == 3, held

                first_writer = server.writer_pid()
                os.kill(first_writer, signal.SIGKILL)
                # The restarted writer applies the inbox to LMDB before it publishes anything: the hold does not
                # stop that (it holds only deltas published first), so LMDB gets all 3 while the hold is still on.
                _wait(lambda: server.writer_pid() != first_writer, "a new writer")
                _wait(
                    lambda: client.get("/admin/checksum", headers=ADMIN).json()["applied_seq"] == {PRODUCER: 3},
                    "LMDB to hold the 3 deltas",
                )
                hold.unlink()
                answer = client.post("/admin/deltas?wait=visible", content=stream_delta(schema, 4), headers=ADMIN)
                assert answer.status_code == 200, answer.text
                assert answer.json()["epoch"]["sparse_seq"] == {PRODUCER: 4}
                _wait(lambda: client.get("/admin/status", headers=ADMIN).json()["inbox_depth"] == 0, "an empty inbox")
                _wait(lambda: all(seqs[-1] == 4 for seqs in watcher.seqs.values()), "every worker to serve seq 4")
            finally:
                watcher.stop()
            checksum = client.get("/admin/checksum", headers=ADMIN).json()
            assert checksum["applied_seq"] == {PRODUCER: 4}
            assert checksum["generation"] == 4  # each delta applied exactly once
    assert watcher.failures == []
    assert len(watcher.seqs) == 2, watcher.seqs  # both workers answered
    for worker, seqs in watcher.seqs.items():
        # Never back to an earlier state: not while the writer was dead, nor when its successor published again.
        assert seqs == sorted(seqs), (worker, seqs)
        assert 3 in seqs, (worker, seqs)
