"""The push client against a real server: retries, duplicates, gap recovery, bundles."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from liverank.exporter.archive import archive_bundle
from liverank.exporter.deltas import DeltaBuilder
from liverank.exporter.push import DeltaRejected, GapUnrecoverable, PushClient, ServerUnavailable
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.bundle import load_bundle_dir
from liverank.store.format import SparseDelta
from tests.serving.conftest import TOKEN, LiveServer, settings_for


class DropFirstConnections(httpx.BaseTransport):
    """Fault injection at the transport seam: the first ``n`` requests fail to connect, the rest go through."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.left > 0:
            self.left -= 1
            raise httpx.ConnectError("injected: connection refused", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("push") / "b"
    build_synthetic_bundle(path, preset="tiny", dim=4, version="1")
    return path


def _deltas(bundle_dir: Path, n: int) -> list[SparseDelta]:
    builder = DeltaBuilder("trainer", load_bundle_dir(bundle_dir).manifest)
    return [
        builder.build({"item_id": (np.asarray([i], np.uint64), np.full((1, 4), float(i), np.float32), np.asarray([i]))})
        for i in range(1, n + 1)
    ]


def test_retries_through_dropped_connections_and_duplicates_are_safe(tmp_path: Path, bundle_dir: Path) -> None:
    server = LiveServer(settings_for(tmp_path / "d", bundle_dir)).start()
    try:
        deltas = _deltas(bundle_dir, 2)
        with PushClient(server.url, TOKEN, backoff_s=0.01, transport=DropFirstConnections(3)) as client:
            assert client.push_delta(deltas[0], wait_visible=True).status == "visible"
            assert client.push_delta(deltas[0]).status == "duplicate"
            assert client.push_delta(deltas[1], wait_visible=True).epoch == {
                "dense_version": "1",
                "sparse_seq": {"trainer": 2},
            }
        transport = DropFirstConnections(5)
        with (
            PushClient(server.url, TOKEN, backoff_s=0.01, max_attempts=2, transport=transport) as client,
            pytest.raises(ServerUnavailable, match="2 attempts"),
        ):
            client.push_delta(deltas[1])
    finally:
        server.stop()


def test_a_gap_is_closed_by_resending_from_the_expected_sequence(tmp_path: Path, bundle_dir: Path) -> None:
    first = LiveServer(settings_for(tmp_path / "a", bundle_dir)).start()
    deltas = _deltas(bundle_dir, 4)
    with PushClient(first.url, TOKEN) as client:
        for delta in deltas[:3]:
            client.push_delta(delta)
        first.stop()
        # A fresh replica joins: it has none of 1..3. The client resends them from its window, then 4.
        fresh = LiveServer(settings_for(tmp_path / "b", bundle_dir)).start()
        try:
            client._http.base_url = httpx.URL(fresh.url)
            result = client.push_delta(deltas[3], wait_visible=True)
            assert (result.status, result.resent) == ("visible", 3)
            assert fresh.services.store.applied_seq("trainer") == 4
            assert fresh.services.store.lookup("item_id", [1, 2, 3, 4]).vectors[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
        finally:
            fresh.stop()


def test_a_gap_beyond_the_window_asks_for_a_snapshot(tmp_path: Path, bundle_dir: Path) -> None:
    server = LiveServer(settings_for(tmp_path / "d", bundle_dir)).start()
    try:
        with PushClient(server.url, TOKEN, window=1) as client:
            with pytest.raises(GapUnrecoverable) as info:
                client.push_delta(_deltas(bundle_dir, 3)[2])
            assert info.value.expected == 1
    finally:
        server.stop()


def test_bundles_and_rejections(tmp_path: Path, bundle_dir: Path) -> None:
    server = LiveServer(settings_for(tmp_path / "d", bundle_dir)).start()
    v2 = tmp_path / "v2"
    build_synthetic_bundle(v2, preset="tiny", dim=4, version="2", seed=3)
    try:
        with PushClient(server.url, TOKEN) as client:
            assert client.push_bundle(v2)["version"] == "2"
            assert client.push_bundle(archive_bundle(bundle_dir))["version"] == "1"
            wrong = DeltaBuilder("p", load_bundle_dir(bundle_dir).manifest)
            wrong.manifest = load_bundle_dir(bundle_dir).manifest
            delta = wrong.build({"item_id": (np.asarray([1], np.uint64), np.ones((1, 4), np.float32), np.asarray([1]))})
            bad = SparseDelta(delta.producer, delta.seq, "another-schema", delta.created_at_ms, delta.slots)
            with pytest.raises(DeltaRejected) as info:
                client.push_delta(bad)
            assert (info.value.status, info.value.code) == (409, "schema_mismatch")
        with PushClient(server.url, "wrong-token") as client, pytest.raises(DeltaRejected) as denied:
            client.push_delta(delta)
        assert denied.value.status == 403
    finally:
        server.stop()
