"""End to end under traffic: ranking never fails or goes back in time while deltas and bundles arrive."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.settings import Settings
from liverank.store import EmbeddingStore, Inbox, SlotDelta, SparseDelta
from tests.serving.conftest import ADMIN, DIM, LiveServer, delta_bytes, manifest_of, rank_body, settings_for


class RankingClient(threading.Thread):
    """Ranks in a loop and records every status and epoch it sees."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seed = seed
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.epochs: list[tuple[int, int]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                answer = client.post("/v1/rank", json=rank_body(n=50, k=10, seed=self.seed))
                self.statuses.append(answer.status_code)
                if answer.status_code != 200:
                    self.errors.append(answer.text)
                    continue
                epoch = answer.json()["epoch"]
                self.epochs.append((int(epoch["dense_version"]), epoch["sparse_seq"].get("trainer", 0)))


@pytest.fixture(scope="module")
def bundle_archives(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = []
    for version in (2, 3, 4):
        path = tmp_path_factory.mktemp("bundles") / str(version)
        build_synthetic_bundle(path, preset="tiny", dim=DIM, version=str(version), seed=version)
        out.append(archive_bundle(path))
    return out


def _last_seq(client: RankingClient) -> int:
    return client.epochs[-1][1] if client.epochs else 0


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.01)


def _score_of(client: httpx.Client, index: int) -> tuple[float, dict[str, Any]]:
    body = client.post("/v1/rank", json=rank_body(n=50, k=50, seed=99)).json()
    return next(i["score"] for i in body["items"] if i["index"] == index), body["epoch"]


def test_100_deltas_and_3_bundles_under_ranking_traffic(server: LiveServer, bundle_archives: list[bytes]) -> None:
    schema = manifest_of(server).schema_hash
    clients = [RankingClient(server.url, seed) for seed in range(3)]
    for c in clients:
        c.start()
    try:
        # Every client ranks before the first push and after the last delta is visible (the last push waits for
        # visibility): what each saw covers the whole run however fast or slow the machine is.
        _wait_until(lambda: all(c.epochs or c.errors for c in clients), "every client's first answer")
        changed_scores = _push_deltas_and_bundles(server, schema, bundle_archives)
        _wait_until(lambda: all(_last_seq(c) >= 100 or c.errors for c in clients), "every client seeing delta 100")
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(30)
    assert changed_scores >= 5
    for c in clients:
        assert c.statuses, "a client made no requests"
        assert set(c.statuses) == {200}, c.errors[:3]
        assert c.epochs == sorted(c.epochs), "a client saw the epoch go backwards"
    seen_versions = {dense for c in clients for dense, _ in c.epochs}
    assert seen_versions >= {1, 4}, seen_versions
    assert all(_last_seq(c) == 100 for c in clients), [c.epochs[-1:] for c in clients]


def _push_deltas_and_bundles(server: LiveServer, schema: str, bundle_archives: list[bytes]) -> int:
    changed_scores = 0
    with server.client() as admin:
        for seq in range(1, 101):
            if seq in (25, 50, 75):
                swap = admin.post("/admin/bundles", content=bundle_archives[seq // 25 - 1], headers=ADMIN)
                assert swap.status_code == 200, swap.text
            item = seq % 50
            wait = seq % 10 == 0
            before, before_epoch = _score_of(admin, item) if wait else (0.0, {})
            answer = admin.post(
                "/admin/deltas" + ("?wait=visible" if wait else ""),
                content=delta_bytes(schema, seq, "item_id", [item, 100 + seq], seq / 10.0),  # a new value every time
                headers=ADMIN,
            )
            assert answer.status_code == (200 if wait else 202), answer.text
            if wait:
                assert answer.json()["epoch"]["sparse_seq"]["trainer"] >= seq
                after, after_epoch = _score_of(admin, item)
                assert after_epoch["sparse_seq"]["trainer"] >= seq  # wait=visible means visible
                if after_epoch["dense_version"] == before_epoch["dense_version"]:
                    assert after != before, f"item {item}'s score did not change after delta {seq}"
                    changed_scores += 1
    return changed_scores


def test_restart_applies_pending_deltas_in_order_exactly_once(tmp_path: Path, tiny_bundle: Path) -> None:
    settings = settings_for(tmp_path / "data", tiny_bundle)
    first = LiveServer(settings).start()
    schema = manifest_of(first).schema_hash
    first.stop()
    # Deltas acknowledged into the inbox, but the server went down before applying them.
    with EmbeddingStore.open(settings.store_path, map_size_bytes=settings.map_size_bytes) as store:
        inbox = Inbox(store.lmdb, 100)
        for seq in range(1, 21):
            ids = np.asarray([seq, 1000], dtype=np.uint64)  # row 1000 is rewritten by every delta: order shows
            values = np.full((2, DIM), float(seq), dtype=np.float32)
            delta = SparseDelta("trainer", seq, schema, seq, {"item_id": SlotDelta(ids, values, np.full(2, seq))})
            assert inbox.enqueue(delta, received_at_ms=0).status == "queued"
        generation_before = store.stats().generation
    second = LiveServer(Settings(**{**settings.model_dump(), "bundle": None})).start()
    try:
        with second.client() as client:
            assert client.get("/readyz").status_code == 200
            status = client.get("/admin/status", headers=ADMIN).json()
        stats = second.services.store.stats()
        assert status["applied_seq"] == {"trainer": 20}
        assert status["inbox_depth"] == 0
        assert stats.generation == generation_before + 20  # each applied once
        rows = second.services.store.lookup("item_id", [*list(range(1, 21)), 1000])
        assert rows.vectors[:, 0].tolist() == [float(s) for s in range(1, 21)] + [20.0]
        assert status["bundles"][0]["version"] == "1"  # the live bundle came back without --bundle
    finally:
        second.stop()
