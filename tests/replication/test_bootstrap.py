"""Snapshots and bootstrap: a late replica and a replica stopped past the stream's retention both start from a
snapshot another replica published, replay the log from its tagged position, and converge."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from liverank.serving.replication.local_nats import NatsCluster
from tests.replication.conftest import Producer, Replica, assert_identical, converged, schema_of, wait_for

pytestmark = pytest.mark.slow


def _snapshot_at_least(replica: Replica, position: int) -> bool:
    published = replica.status()["log"].get("snapshot_published_position")
    return published is not None and published >= position


def test_a_late_replica_bootstraps_from_a_snapshot_and_converges(
    nats_single: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    a = replicas("a", nats_single.urls, snapshot_interval_s=0.5)
    producer = Producer([a], schema_of(a))
    for seq in range(1, 21):
        producer.push(seq)
    wait_for(lambda: _snapshot_at_least(a, 20), what="a snapshot at position 20")
    for seq in range(21, 31):
        producer.push(seq)  # after the snapshot: the late replica replays these from the log
    late = replicas("late", nats_single.urls)
    wait_for(lambda: converged([a, late], 30), what="the late replica at seq 30")
    assert_identical([a, late], 30)
    assert late.status()["log"]["bootstrapped_from_position"] >= 20


def test_a_replica_stopped_past_retention_bootstraps_again(
    nats_single: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    retention = {"stream_max_age_s": 4, "snapshot_interval_s": 0.5}
    a = replicas("a", nats_single.urls, **retention)
    b = replicas("b", nats_single.urls, **retention)
    producer = Producer([a], schema_of(a))
    for seq in range(1, 11):
        producer.push(seq)
    wait_for(lambda: converged([a, b], 10), what="both at seq 10")
    b.stop()
    for seq in range(11, 21):
        producer.push(seq)
    # the stream drops what b has not read: its next record is gone from the log
    wait_for(lambda: a.status()["log"]["stream_first_position"] > 11, what="records 11.. aged out of the stream")
    producer.push(21)
    wait_for(lambda: _snapshot_at_least(a, 21), what="a snapshot at position 21")
    b.start()
    wait_for(lambda: converged([a, b], 21), what="b at seq 21 again")
    assert_identical([a, b], 21)
    assert b.status()["log"]["bootstrapped_from_position"] >= 20
