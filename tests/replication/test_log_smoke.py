"""One NATS node, two replicas: a push through either is applied by both."""

from __future__ import annotations

from collections.abc import Callable

from liverank.serving.replication.local_nats import NatsCluster
from tests.replication.conftest import Replica, schema_of, small_delta, wait_for


def test_a_push_through_one_replica_is_applied_by_every_replica(
    nats_single: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    a = replicas("a", nats_single.urls)
    b = replicas("b", nats_single.urls)
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
