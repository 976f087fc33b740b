"""Real ``nats-server`` processes (one node, or a 3-node JetStream cluster, each with its own store dir on loopback
ports) and real ``liverank serve --log`` replicas on top of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.replication.local_nats import NatsCluster
from liverank.store import SlotDelta, SparseDelta, encode_delta
from liverank.trainer.servers import LiverankServer

DIM = 8


@pytest.fixture
def nats_single(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", size=1) as cluster:
        yield cluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "v1"
    build_synthetic_bundle(path, preset="tiny", dim=DIM, version="1")
    return path


class Replica(LiverankServer):
    """One ``liverank serve --log ...`` with its own data dir; it can be SIGKILLed and started again on it."""

    def __init__(self, name: str, root: Path, bundle: Path, log: str, **settings: Any) -> None:
        env = {
            "LIVERANK_LOG": log,
            "LIVERANK_STREAM": "deltas",
            "LIVERANK_MAP_SIZE_BYTES": str(256 * 1024**2),
            "LIVERANK_WORKERS": "1",  # the default: one worker each (a test asks for more)
        }
        env.update({f"LIVERANK_{key.upper()}": str(value) for key, value in settings.items()})
        super().__init__(name, root / name, bundle, root, extra_env=env)

    def client(self, timeout_s: float = 30.0) -> httpx.Client:
        """With the admin token."""
        return httpx.Client(base_url=self.url, timeout=timeout_s, headers={"Authorization": f"Bearer {self.token}"})

    def status(self) -> dict[str, Any]:
        with self.client() as client:
            body: dict[str, Any] = client.get("/admin/status").json()
            return body

    def checksum(self) -> dict[str, Any]:
        with self.client() as client:
            body: dict[str, Any] = client.get("/admin/checksum").json()
            return body


@pytest.fixture
def replicas(tmp_path: Path, bundle: Path) -> Iterator[Callable[..., Replica]]:
    """A factory: ``replicas(name, log_urls, **settings)`` starts one; all are stopped at the end."""
    started: list[Replica] = []

    def start(name: str, log: str, **settings: Any) -> Replica:
        replica = Replica(name, tmp_path, bundle, log, **settings)
        started.append(replica)
        replica.start()
        return replica

    yield start
    for replica in started:
        replica.stop()


def schema_of(replica: Replica) -> str:
    with replica.client() as client:
        return str(client.get("/admin/status").json()["bundles"][0]["schema_hash"])


def small_delta(schema_hash: str, seq: int, *, producer: str = "trainer", rows: int = 64) -> bytes:
    """Delta ``seq`` of a D-10k-shaped stream, scaled down: ``rows`` item rows (fresh and rewritten ids) and one user
    row, every value a function of (producer, seq), so replicas that applied the same deltas hold the same bytes."""
    rng = np.random.default_rng([seq, len(producer)])
    items = np.unique(rng.integers(0, 5_000, rows).astype(np.uint64))
    item_values = rng.standard_normal((len(items), DIM)).astype(np.float32)
    users = np.asarray([seq % 97], dtype=np.uint64)
    slots = {
        "item_id": SlotDelta(items, item_values, np.full(len(items), seq, dtype=np.int64)),
        "user_id": SlotDelta(users, np.full((1, DIM), float(seq), dtype=np.float32), np.asarray([seq], np.int64)),
    }
    return encode_delta(SparseDelta(producer, seq, schema_hash, seq, slots))


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Producer:
    """Pushes one producer's deltas through the replicas in turn, retrying a seq until the log acknowledges it
    (a 503 or a lost connection means "not accepted": the same seq is sent again). Records what was acknowledged."""

    def __init__(self, replicas: list[Replica], schema_hash: str, *, name: str = "trainer") -> None:
        self.replicas = replicas
        self.schema_hash = schema_hash
        self.name = name
        self.acknowledged = 0  # the highest seq answered 202/200 (queued, visible or duplicate)
        self.refusals: list[dict[str, Any]] = []  # 503 answers seen (code, detail)
        self._turn = 0

    def push(self, seq: int, timeout_s: float = 120.0) -> None:
        body = small_delta(self.schema_hash, seq, producer=self.name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            replica = self.replicas[self._turn % len(self.replicas)]
            self._turn += 1
            if not replica.running:
                continue
            try:
                with httpx.Client(base_url=replica.url, timeout=30) as client:
                    answer = client.post(
                        "/admin/deltas", content=body, headers={"Authorization": f"Bearer {replica.token}"}
                    )
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if answer.status_code in (200, 202):
                assert answer.json()["seq"] == seq
                self.acknowledged = seq
                return
            assert answer.status_code == 503, answer.text
            self.refusals.append(answer.json())
            time.sleep(0.2)
        raise AssertionError(f"delta {self.name}/{seq} was not acknowledged within {timeout_s:.0f} s")


def converged(replicas: list[Replica], seq: int, *, producer: str = "trainer") -> bool:
    """Every replica applied exactly ``seq`` deltas of ``producer`` (a gap or a replay would show)."""
    try:
        return all(replica.checksum()["applied_seq"].get(producer) == seq for replica in replicas)
    except (httpx.TransportError, ValueError):
        return False


def assert_identical(replicas: list[Replica], seq: int, *, producer: str = "trainer") -> None:
    sums = [replica.checksum() for replica in replicas]
    for replica, checksum in zip(replicas, sums, strict=True):
        assert checksum["applied_seq"] == {producer: seq}, (replica.name, checksum)
        # each apply bumps the generation once: a delta applied twice (or one lost) would show here
        assert checksum["generation"] == seq, (replica.name, checksum)
    assert len({s["rows_digest"] for s in sums}) == 1, sums
    assert len({s["log_position"] for s in sums}) == 1, sums
