"""One NATS node, two replicas: a push through either is applied by both."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from liverank.server_process import ServerExited
from liverank.serving.replication.local_nats import NatsCluster
from liverank.store import SlotDelta, SparseDelta, encode_delta
from tests.replication.conftest import DIM, Replica, schema_of, small_delta, wait_for


def test_a_push_through_one_replica_is_applied_by_every_replica(
    nats_single: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    # two workers each: any worker appends to the log; the server's one writer reads it into the shared tier
    a = replicas("a", nats_single.urls, workers=2)
    b = replicas("b", nats_single.urls, workers=2)
    schema = schema_of(a)
    with a.client() as client_a, b.client() as client_b:
        first = client_a.post("/admin/deltas?wait=visible", content=small_delta(schema, 1))
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "visible"
        second = client_b.post("/admin/deltas?wait=visible", content=small_delta(schema, 2))
        assert second.status_code == 200, second.text
        replay = client_a.post("/admin/deltas", content=small_delta(schema, 2))
        assert replay.status_code == 200, replay.text
        assert replay.json()["status"] == "duplicate"
        gap = client_b.post("/admin/deltas", content=small_delta(schema, 5))
        assert gap.status_code == 409, gap.text
        assert gap.json()["expected_seq"] == 3
    wait_for(lambda: a.checksum()["log_position"] == b.checksum()["log_position"] == 2, what="both at position 2")
    assert a.checksum()["rows_digest"] == b.checksum()["rows_digest"]
    assert a.status()["log"]["lag_records"] == 0


def test_a_delta_larger_than_a_log_message_applies_whole_everywhere(
    nats_single: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    a = replicas("a", nats_single.urls)
    b = replicas("b", nats_single.urls)
    schema = schema_of(a)
    ids = np.arange(1, 60_001, dtype=np.uint64)
    values = np.random.default_rng(3).standard_normal((len(ids), DIM)).astype(np.float32)
    big = encode_delta(
        SparseDelta("trainer", 1, schema, 1, {"item_id": SlotDelta(ids, values, np.ones(len(ids), np.int64))})
    )
    assert len(big) > 1024 * 1024  # NATS's default max message size
    with a.client() as client:
        answer = client.post("/admin/deltas?wait=visible", content=big)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "visible"
    wait_for(lambda: b.checksum()["applied_seq"] == {"trainer": 1}, what="b applied the big delta")
    sums = [a.checksum(), b.checksum()]
    assert sums[0]["rows_digest"] == sums[1]["rows_digest"]
    assert sums[0]["rows"] == sums[1]["rows"] == len(ids)
    assert sums[0]["generation"] == sums[1]["generation"] == 1  # one transaction


NATS_TOKEN = "nats-secret-token-4f1d8a"


def test_nats_credentials_work_and_are_never_shown(
    tmp_path: Path, replicas: Callable[..., Replica], bundle: Path
) -> None:
    with NatsCluster(tmp_path / "nats-auth", size=1, token=NATS_TOKEN) as nats:
        a = replicas("a", nats.urls, nats_token=NATS_TOKEN)
        schema = schema_of(a)
        with a.client() as client:
            pushed = client.post("/admin/deltas?wait=visible", content=small_delta(schema, 1))
            assert pushed.status_code == 200, pushed.text
            status = client.get("/admin/status").text
        assert NATS_TOKEN not in status
        a.stop()
        assert NATS_TOKEN not in a.log_path.read_text()
        wrong = Replica("wrong", tmp_path, bundle, nats.urls, nats_token="not-the-token")
        with pytest.raises(ServerExited) as exited:
            wrong.start(timeout_s=60)
        assert exited.value.returncode == 2
        assert "cannot reach the log" in wrong.log_path.read_text()
        assert "not-the-token" not in wrong.log_path.read_text()


def test_a_malformed_log_url_is_refused_at_start(tmp_path: Path, bundle: Path) -> None:
    bad = Replica("bad", tmp_path, bundle, "http://127.0.0.1:4222")
    with pytest.raises(ServerExited) as exited:
        bad.start(timeout_s=60)
    assert exited.value.returncode == 2
    assert "log" in bad.log_path.read_text()


def test_replicas_racing_on_one_producer_append_each_seq_once(
    nats_single: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    group = [replicas(name, nats_single.urls) for name in ("a", "b", "c")]
    schema = schema_of(group[0])
    for seq in range(1, 9):
        body = small_delta(schema, seq)
        barrier = threading.Barrier(len(group))
        answers: list[tuple[int, str]] = []

        def push(
            replica: Replica,
            body: bytes = body,
            barrier: threading.Barrier = barrier,
            answers: list[tuple[int, str]] = answers,
        ) -> None:
            with replica.client() as client:
                barrier.wait()
                answer = client.post("/admin/deltas", content=body)
                answers.append((answer.status_code, answer.json()["status"]))

        threads = [threading.Thread(target=push, args=(replica,)) for replica in group]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(answers) == [(200, "duplicate"), (200, "duplicate"), (202, "queued")], (seq, answers)
    wait_for(lambda: all(r.checksum()["applied_seq"] == {"trainer": 8} for r in group), what="all at seq 8")
    sums = [r.checksum() for r in group]
    assert {s["log_position"] for s in sums} == {8}  # one record a seq: no append was doubled
    assert {s["generation"] for s in sums} == {8}
    assert len({s["rows_digest"] for s in sums}) == 1
