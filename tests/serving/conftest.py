"""A real liverank server on 127.0.0.1 (uvicorn in a background thread of the test process)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.api.app import create_app
from liverank.serving.services import Services
from liverank.serving.settings import Settings
from liverank.store import SlotDelta, SparseDelta, encode_delta
from liverank.store.manifest import Manifest

TOKEN = "test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DIM = 8


class LiveServer:
    """uvicorn serving ``create_app(settings)`` on a free port until ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        # The writer process starts beside the server; tests begin once it has drained what was queued.
        if not self.services.follower.drained_at_start.wait(60):
            raise RuntimeError("the test server's writer did not report in")
        return self

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def settings_for(data_dir: Path, bundle: Path | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "bundle": bundle,
        "admin_token": TOKEN,
        "map_size_bytes": 512 * 1024**2,
        "gc_freeze": False,  # tests start many apps in one process
        "flush_interval_s": 0.5,
        "max_bundle_bytes": 4 * 1024**2,  # small limits keep the oversize cases cheap
        "max_delta_body_bytes": 8 * 1024**2,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "v1"
    build_synthetic_bundle(path, preset="tiny", dim=DIM, version="1")
    return path


@pytest.fixture(scope="session")
def tiny_bundle_v2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Same schema, other weights: a new dense snapshot, as an upload archive."""
    path = tmp_path_factory.mktemp("bundle") / "v2"
    build_synthetic_bundle(path, preset="tiny", dim=DIM, version="2", seed=7)
    return archive_bundle(path)


@pytest.fixture
def server(tmp_path: Path, tiny_bundle: Path) -> Iterator[LiveServer]:
    live = LiveServer(settings_for(tmp_path / "data", tiny_bundle)).start()
    yield live
    live.stop()


@pytest.fixture
def fast_server(tmp_path: Path, tiny_bundle: Path) -> Iterator[LiveServer]:
    """A server whose status-page history samples every 0.2 s."""
    live = LiveServer(settings_for(tmp_path / "data", tiny_bundle, status_interval_s=0.2)).start()
    yield live
    live.stop()


def manifest_of(server: LiveServer) -> Manifest:
    return server.services.model_slot.current().manifest


def rank_body(n: int = 20, k: int = 5, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "user": {"user_id": 7, "hist_item_ids": [int(x) for x in rng.integers(0, 100, 5)]},
        "candidates": {
            "item_id": list(range(n)),
            "author_id": [int(x) for x in rng.integers(0, 50, n)],
            "tags": [[int(t) for t in rng.integers(0, 30, int(rng.integers(0, 4)))] for _ in range(n)],
        },
        "k": k,
    }


def delta_bytes(
    schema_hash: str, seq: int, slot: str, ids: list[int], value: float, *, producer: str = "trainer"
) -> bytes:
    vectors = np.full((len(ids), DIM), value, dtype=np.float32)
    slot_delta = SlotDelta(np.asarray(ids, dtype=np.uint64), vectors, np.full(len(ids), 1_000, dtype=np.int64))
    return encode_delta(SparseDelta(producer, seq, schema_hash, 1_000, {slot: slot_delta}))


def delta_json(schema_hash: str, seq: int, slot: str, ids: list[Any], values: list[list[float]], **extra: Any) -> bytes:
    # The standard library's encoder, not orjson: tests need ids past 64 bits and NaN on the wire.
    return json.dumps(
        {
            "producer": "trainer",
            "seq": seq,
            "schema_hash": schema_hash,
            "slots": {slot: {"ids": ids, "values": values}},
            **extra,
        }
    ).encode()
