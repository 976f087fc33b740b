"""Dense bundles through the log: an upload to one replica goes live on every replica, a rollback too, and a
replica started later catches up on both."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.replication.local_nats import NatsCluster
from tests.replication.conftest import DIM, Replica, wait_for


@pytest.fixture(scope="module")
def bundle_v2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("bundle") / "v2"
    build_synthetic_bundle(path, preset="tiny", dim=DIM, version="2", seed=7)
    return archive_bundle(path)


def _dense_version(replica: Replica) -> str | None:
    version: str | None = replica.status()["epoch"]["dense_version"]
    return version


def _worker_versions(replica: Replica) -> list[str]:
    """The bundle version each worker of the replica serves (its status records)."""
    return sorted(str(worker["version"]) for worker in replica.status()["workers"])


def test_upload_and_rollback_reach_every_replica(
    nats_single: NatsCluster, replicas: Callable[..., Replica], bundle_v2: bytes, tmp_path: Path
) -> None:
    # two workers each: a record is carried out once per server, and every worker of it swaps
    a = replicas("a", nats_single.urls, workers=2)
    b = replicas("b", nats_single.urls, workers=2)
    with a.client() as client:
        bad = client.post("/admin/bundles", content=b"not a tar archive")
        assert bad.status_code == 422, bad.text  # refused before anything is published
        uploaded = client.post("/admin/bundles", content=bundle_v2)
        assert uploaded.status_code == 200, uploaded.text
    wait_for(lambda: _dense_version(a) == _dense_version(b) == "2", what="both replicas serving bundle 2")
    wait_for(lambda: _worker_versions(a) == _worker_versions(b) == ["2", "2"], what="every worker on bundle 2")
    assert a.status()["log"]["bundle_record_done"] == b.status()["log"]["bundle_record_done"]
    with b.client() as client:
        rolled = client.post("/admin/rollback")
        assert rolled.status_code == 200, rolled.text
    wait_for(lambda: _dense_version(a) == _dense_version(b) == "1", what="both replicas back on bundle 1")
    wait_for(lambda: _worker_versions(a) == _worker_versions(b) == ["1", "1"], what="every worker on bundle 1")
    late = replicas("late", nats_single.urls)
    # it carries out both records in order (upload, then rollback), and ends where the others are
    last_record = b.status()["log"]["bundle_record_done"]  # b published the rollback: the last record
    wait_for(lambda: a.status()["log"]["bundle_record_done"] == last_record, what="a done with the rollback")
    wait_for(lambda: late.status()["log"]["bundle_record_done"] == last_record, what="the late replica's bundles")
    assert _dense_version(late) == "1"
    assert [entry["version"] for entry in late.status()["bundles"]] == ["1"]
    for replica in (a, b, late):
        assert replica.status()["log"]["bundle_sync_error"] is None
