"""Start-up beside a cluster that is still forming: a stream with as many replicas as nodes cannot be placed until
every node is up and routed (JetStream error 10005). A replica waits for that within a bound, then says why."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from liverank.serving.errors import LogUnavailable
from liverank.serving.replication.link import LogConfig, NatsLink
from liverank.serving.replication.local_nats import NatsCluster

pytestmark = pytest.mark.slow


def _link(cluster: NatsCluster, up: int) -> NatsLink:
    servers = tuple(node.url for node in cluster.nodes[:up])
    config = LogConfig(servers=servers, stream="deltas", replicas=3, max_age_s=600, max_bytes=None, timeout_s=2.0)
    return NatsLink(config, "placement-test").start()


def _start_nodes(cluster: NatsCluster, count: int) -> None:
    for node in cluster.nodes[:count]:
        node.start()
    for node in cluster.nodes[:count]:
        node.wait_healthy()


def test_a_stream_that_cannot_be_placed_is_a_clear_error(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats", size=3)
    try:
        _start_nodes(cluster, 2)  # a quorum for the meta group, but not 3 peers for the stream
        link = _link(cluster, 2)
        try:
            with pytest.raises(LogUnavailable, match="could not place the log stream 'deltas' with 3 replicas"):
                link.ensure_stream(placement_wait_s=1.0)
        finally:
            link.close()
    finally:
        cluster.stop()


def test_a_replica_waits_for_the_cluster_to_place_its_stream(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="liverank.serving.replication.link")
    cluster = NatsCluster(tmp_path / "nats", size=3)
    try:
        _start_nodes(cluster, 2)
        link = _link(cluster, 2)
        errors: list[BaseException] = []

        def ensure() -> None:
            try:
                link.ensure_stream(placement_wait_s=120.0)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        waiter = threading.Thread(target=ensure)
        waiter.start()
        try:
            deadline = time.monotonic() + 60
            while "cannot place the log stream yet" not in caplog.text:  # it has been refused at least once
                assert waiter.is_alive(), errors
                assert time.monotonic() < deadline, "ensure_stream was never refused placement"
                time.sleep(0.05)
            cluster.nodes[2].start().wait_healthy()  # the third node joins: the stream can be placed now
        finally:
            waiter.join(150)
        assert not waiter.is_alive()
        assert errors == []
        info = link.run(link.js.stream_info("deltas"), 10)
        assert info.config.num_replicas == 3
        link.close()
    finally:
        cluster.stop()


def test_a_started_cluster_has_formed(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        views = [node.meta_view() for node in cluster.nodes]
        leader = views[0]["leader"]
        assert all(view["leader"] == leader for view in views)
        leader_view = next(v for n, v in zip(cluster.nodes, views, strict=True) if n.name == leader)
        assert sorted(peer["name"] for peer in leader_view["replicas"]) == sorted(
            n.name for n in cluster.nodes if n.name != leader
        )
        assert all(peer["current"] for peer in leader_view["replicas"])
