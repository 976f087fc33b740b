"""A 3-node JetStream cluster (stream replicas 3) under 3 liverank replicas: convergence, and faults with nothing
acknowledged lost and nothing applied twice."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from liverank.serving.replication.local_nats import NatsCluster
from tests.replication.conftest import Producer, Replica, assert_identical, converged, schema_of, wait_for
from tests.serving.conftest import rank_body

pytestmark = pytest.mark.slow


def _three(nats: NatsCluster, replicas: Callable[..., Replica]) -> list[Replica]:
    return [replicas(name, nats.urls, stream_replicas=3, log_timeout_s=2) for name in ("r1", "r2", "r3")]


def test_replicas_converge_to_identical_rows_and_answers(
    nats_cluster: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    group = _three(nats_cluster, replicas)
    producer = Producer(group, schema_of(group[0]))
    for seq in range(1, 41):
        producer.push(seq)
    wait_for(lambda: converged(group, 40), what="every replica at seq 40")
    assert_identical(group, 40)
    answers = []
    for replica in group:
        with replica.client() as client:
            answer = client.post("/v1/rank", json=rank_body(n=30, k=10)).json()
            answers.append(answer)
    assert all(a["epoch"] == answers[0]["epoch"] for a in answers), answers
    assert all(a["items"] == answers[0]["items"] for a in answers), answers
    for replica in group:
        log = replica.status()["log"]
        assert log["state"] == "following"
        assert log["lag_records"] == 0


def test_a_nats_node_killed_and_restarted_mid_stream_loses_nothing(
    nats_cluster: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    group = _three(nats_cluster, replicas)
    producer = Producer(group, schema_of(group[0]))
    for seq in range(1, 16):
        producer.push(seq)
    victim = nats_cluster.nodes[0]
    victim.kill()
    for seq in range(16, 31):
        producer.push(seq)  # two of three nodes keep the quorum: pushes go on (a few may be retried)
    victim.start().wait_healthy()
    for seq in range(31, 46):
        producer.push(seq)
    wait_for(lambda: converged(group, 45), timeout_s=120, what="every replica at seq 45")
    assert_identical(group, 45)


def test_a_replica_killed_and_restarted_resumes_from_its_own_store(
    nats_cluster: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    group = _three(nats_cluster, replicas)
    producer = Producer(group[:2], schema_of(group[0]))
    for seq in range(1, 16):
        producer.push(seq)
    wait_for(lambda: converged(group, 15), what="every replica at seq 15")
    pushing = threading.Thread(target=lambda: [producer.push(seq) for seq in range(16, 41)])
    pushing.start()
    group[2].kill()  # mid-stream: the other two keep taking pushes
    pushing.join(300)
    assert producer.acknowledged == 40
    group[2].start()
    wait_for(lambda: converged(group, 40), timeout_s=120, what="every replica at seq 40")
    assert_identical(group, 40)


def test_losing_the_log_quorum_refuses_pushes_and_ranking_goes_on(
    nats_cluster: NatsCluster, replicas: Callable[..., Replica]
) -> None:
    group = _three(nats_cluster, replicas)
    producer = Producer(group, schema_of(group[0]))
    for seq in range(1, 11):
        producer.push(seq)
    wait_for(lambda: converged(group, 10), what="every replica at seq 10")
    nats_cluster.nodes[1].kill()
    nats_cluster.nodes[2].kill()
    with group[0].client() as client:
        refused = client.post("/admin/deltas", content=producer_body(producer, 11))
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "log_unavailable"
        assert refused.headers["Retry-After"]
        ranked = client.post("/v1/rank", json=rank_body())
        assert ranked.status_code == 200, ranked.text
        assert ranked.json()["epoch"]["sparse_seq"] == {"trainer": 10}
    for node in nats_cluster.nodes[1:]:
        node.start()
    for node in nats_cluster.nodes[1:]:
        node.wait_healthy()
    for seq in range(11, 21):
        producer.push(seq)
    wait_for(lambda: converged(group, 20), timeout_s=120, what="every replica at seq 20")
    assert_identical(group, 20)
    with httpx.Client() as client:
        for replica in group:  # readiness follows the log's state: back once the replica reads the log again
            wait_for(lambda url=replica.url: client.get(f"{url}/readyz").status_code == 200, what="ready again")


def producer_body(producer: Producer, seq: int) -> bytes:
    from tests.replication.conftest import small_delta

    return small_delta(producer.schema_hash, seq, producer=producer.name)
