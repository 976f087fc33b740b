"""``liverank.client`` against real servers: typed answers, the same ranking as /v1/rank, pushes with gap recovery,
bundles, and errors under the project's error tree (sync and async)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from liverank.client import (
    AsyncClient,
    BundleRejected,
    Client,
    DeltaRejected,
    ServerRejected,
    ServerUnavailable,
)
from liverank.errors import LiverankError
from liverank.exporter.deltas import DeltaBuilder
from liverank.store.format import SparseDelta
from tests.serving.conftest import DIM, TOKEN, LiveServer, manifest_of, rank_body, settings_for


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, token=TOKEN) as live:
        yield live


def deltas(server: LiveServer, n: int) -> list[SparseDelta]:
    builder = DeltaBuilder("trainer", manifest_of(server))
    return [
        builder.build(
            {"item_id": (np.asarray([i], np.uint64), np.full((1, DIM), float(i), np.float32), np.asarray([1_000]))}
        )
        for i in range(1, n + 1)
    ]


def test_rank_answers_what_v1_rank_answers(server: LiveServer, client: Client) -> None:
    body = rank_body(n=25, k=6, seed=2)
    ranking = client.rank(body["user"], body["candidates"], k=6, blend={"click": 1.0, "finish": 0.5})
    with server.client() as http:
        expected = http.post("/v1/rank", json={**body, "blend": {"click": 1.0, "finish": 0.5}}).json()
    assert [it.index for it in ranking.items] == [it["index"] for it in expected["items"]]
    assert [it.score for it in ranking.items] == [it["score"] for it in expected["items"]]
    assert [it.id for it in ranking.items] == [it["id"] for it in expected["items"]]
    assert ranking.epoch.dense_version == expected["epoch"]["dense_version"]
    assert set(ranking.items[0].heads) == {h.name for h in manifest_of(server).heads}


def test_rank_takes_numpy_columns(client: Client) -> None:
    body = rank_body(n=10, k=3)
    candidates = {**body["candidates"], "item_id": np.arange(10, dtype=np.int64)}
    assert len(client.rank(body["user"], candidates, k=3).items) == 3


def test_model_and_status_are_typed(server: LiveServer, client: Client) -> None:
    model = client.model()
    assert model.manifest == manifest_of(server)
    assert model.bundle_id
    status = client.status()
    assert status.ready
    assert status.epoch.dense_version == model.manifest.version
    assert "store" in status.raw


def test_push_delta_then_rank_sees_its_epoch(client: Client, server: LiveServer) -> None:
    first, second = deltas(server, 2)
    assert client.push_delta(first, wait_visible=True).status == "visible"
    assert client.push_delta(first).status == "duplicate"
    result = client.push_delta(second, wait_visible=True)
    assert result.epoch == {"dense_version": "1", "sparse_seq": {"trainer": 2}}
    body = rank_body(n=5, k=2)
    assert client.rank(body["user"], body["candidates"], k=2).epoch.sparse_seq == {"trainer": 2}


def test_server_refusals_keep_the_servers_code_under_liverank_error(client: Client, server: LiveServer) -> None:
    body = rank_body(n=5)
    with pytest.raises(ServerRejected) as caught:
        client.rank({**body["user"], "age": 3}, body["candidates"])
    assert isinstance(caught.value, LiverankError)
    assert (caught.value.status, caught.value.code) == (422, "unknown_feature")
    assert "age" in caught.value.detail
    with pytest.raises(BundleRejected) as bundle:
        client.push_bundle(b"not a tar archive")
    assert bundle.value.status == 422
    with Client(server.url, token="wrong") as intruder, pytest.raises(DeltaRejected) as denied:
        intruder.push_delta(deltas(server, 1)[0])
    assert (denied.value.status, denied.value.code) == (403, "forbidden")
    with Client(server.url) as anonymous, pytest.raises(ServerRejected) as no_token:
        anonymous.status()
    assert no_token.value.status == 401


def test_an_unreachable_server_is_server_unavailable_after_the_retries(free_tcp_port: int) -> None:
    with Client(f"http://127.0.0.1:{free_tcp_port}", max_attempts=2, backoff_s=0.01) as client:
        with pytest.raises(ServerUnavailable, match="after 2 attempts") as caught:
            client.model()
        assert caught.value.code == "server_unavailable"


def test_async_client_ranks_pushes_and_closes_a_gap_on_a_fresh_replica(tmp_path: Path, tiny_bundle: Path) -> None:
    first = LiveServer(settings_for(tmp_path / "a", tiny_bundle)).start()
    fresh: LiveServer | None = None
    try:
        pushed = deltas(first, 3)

        async def scenario() -> None:
            nonlocal fresh
            async with AsyncClient(first.url, token=TOKEN) as client:
                body = rank_body(n=8, k=4)
                ranking = await client.rank(body["user"], body["candidates"], k=4)
                assert len(ranking.items) == 4
                assert (await client.model()).manifest.model == "synthetic-tiny"
                for delta in pushed[:2]:
                    await client.push_delta(delta)
                first.stop()
                # A fresh replica has none of 1..2: the client resends them from its window, then 3.
                fresh = LiveServer(settings_for(tmp_path / "b", tiny_bundle)).start()
                client._http.base_url = httpx.URL(fresh.url)
                result = await client.push_delta(pushed[2], wait_visible=True)
                assert (result.status, result.resent) == ("visible", 2)
                assert (await client.status()).epoch.sparse_seq == {"trainer": 3}
                with pytest.raises(ServerRejected) as caught:
                    await client.rank({}, body["candidates"])
                assert caught.value.code == "missing_feature"

        asyncio.run(scenario())
    finally:
        first.stop()
        if fresh is not None:
            fresh.stop()
