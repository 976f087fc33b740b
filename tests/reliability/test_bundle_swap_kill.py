"""Bundles and crashes: a server SIGKILLed while ``POST /admin/bundles`` is in flight, what such a kill can leave on
disk, and a live bundle damaged on disk while the server was stopped.

After every kill the restarted server must be ready with the old or the new bundle live, never a broken one, and
an upload acknowledged with 200 before the kill must be the live one. ``LIVERANK_SWAP_TRIALS`` raises the count.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from liverank.exporter.archive import archive_bundle
from tests.reliability.conftest import ADMIN, ServerProcess, build_bundle

SWAP_TRIALS = int(os.environ.get("LIVERANK_SWAP_TRIALS", "10"))
KILL_DELAY_S = (0.002, 0.4)
RANK = {
    "user": {"user_id": 1, "hist_item_ids": [1, 2, 3]},
    "candidates": {"item_id": [1, 2, 3], "author_id": [4, 5, 6], "tags": [[1], [], [2, 3]]},
    "k": 2,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two dense snapshots of the tiny schema (other weights), as upload archives."""
    root = tmp_path_factory.mktemp("swap-bundles")
    return {
        version: archive_bundle(build_bundle(root / version, version, seed=seed))
        for version, seed in (("a", 1), ("b", 2))
    }


def _live_version(client: httpx.Client) -> str:
    answer = client.get("/v1/model")
    assert answer.status_code == 200, answer.text
    version: str = answer.json()["manifest"]["version"]
    return version


def _check_serving(server: ServerProcess) -> tuple[str, list[str]]:
    """The restarted server: ready, ranking with the live bundle, no unloadable bundle in its history."""
    bad: list[str] = []
    with server.client() as client:
        version = _live_version(client)
        if client.get("/readyz").status_code != 200:
            bad.append("not ready")
        ranked = client.post("/v1/rank", json=RANK)
        if ranked.status_code != 200 or ranked.json()["epoch"]["dense_version"] != version:
            bad.append(f"rank answered {ranked.status_code} {ranked.text[:200]}")
        status = client.get("/admin/status", headers=ADMIN).json()
        broken = [entry for entry in status["bundles"] if "error" in entry]
        if broken:
            bad.append(f"bundle history holds unloadable bundles: {broken}")
    leftovers = sorted(p.name for p in (server.data_dir / "bundles").glob(".incoming-*"))
    if leftovers:
        bad.append(f"incoming directories left after restart: {leftovers}")
    return version, bad


class _Upload(threading.Thread):
    def __init__(self, url: str, payload: bytes) -> None:
        super().__init__(name="upload", daemon=True)
        self.url = url
        self.payload = payload
        self.status: int | None = None
        self.body: Any = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=60) as client:
                answer = client.post("/admin/bundles", content=self.payload, headers=ADMIN)
            self.status, self.body = answer.status_code, answer.json()
        except httpx.TransportError:
            pass  # killed mid-request: no answer


def test_sigkill_during_bundle_upload_leaves_the_old_or_the_new_bundle_live(
    make_server: Callable[..., ServerProcess], archives: dict[str, bytes]
) -> None:
    rng = random.Random(4242)
    server = make_server().start()
    with server.client() as client:
        assert _live_version(client) == "1"
    upload = _Upload(server.url, archives["a"])
    upload.run()
    assert upload.status == 200, upload.body
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    live = "a"
    for trial in range(SWAP_TRIALS):
        new = "b" if live == "a" else "a"
        upload = _Upload(server.url, archives[new])
        # Log-uniform from 2 to 400 ms after sending: an upload into a fresh process takes ~50-150 ms here, so kills
        # land before it arrives, while it is unpacked, built and warmed, around the swap, and after the answer.
        delay_s = math.exp(rng.uniform(math.log(KILL_DELAY_S[0]), math.log(KILL_DELAY_S[1])))
        upload.start()
        time.sleep(delay_s)
        server.kill()
        upload.join(60)
        # The upload unpacks into bundles/.incoming-*, then renames it: one left behind means the kill hit mid-install.
        mid_install = any((server.data_dir / "bundles").glob(".incoming-*"))
        server.start()
        version, bad = _check_serving(server)
        acked = upload.status == 200
        if upload.status not in (None, 200):
            bad.append(f"the upload was answered {upload.status} {upload.body}")
        if version not in (live, new):
            bad.append(f"version {version!r} is live, neither the old {live!r} nor the new {new!r}")
        if acked and version != new:
            bad.append(f"the upload of {new!r} was acknowledged, yet {version!r} is live after the restart")
        outcomes[
            ("new" if version == new else "old")
            + (" (acked)" if acked else "")
            + (", mid-install" if mid_install else "")
        ] += 1
        failures += [f"trial {trial} (delay {delay_s * 1000:.1f} ms): {b}" for b in bad]
        live = version
    server.stop()
    assert not failures, failures
    assert sum(outcomes.values()) == SWAP_TRIALS
    print(f"swap kills: {dict(outcomes)}")


def test_a_directory_left_by_an_interrupted_upload_does_not_block_the_next_upload(
    make_server: Callable[..., ServerProcess], archives: dict[str, bytes], tmp_path: Path
) -> None:
    """A kill after the upload's directory got its final name but before the record named it leaves that
    directory behind; uploading the same snapshot again (what a producer does after a failed upload) must work."""
    server = make_server().start()
    server.stop()
    orphan = server.data_dir / "bundles" / "000002-a"
    build_bundle(orphan, "a", seed=1)
    server.start()
    with server.client() as client:
        answer = client.post("/admin/bundles", content=archives["a"], headers=ADMIN)
        assert answer.status_code == 200, answer.text
        assert _live_version(client) == "a"
    server.stop()
    server.start()
    version, bad = _check_serving(server)
    assert (version, bad) == ("a", [])
    server.stop()


def test_a_directory_left_by_an_interrupted_first_install_does_not_block_start_up(
    make_server: Callable[..., ServerProcess], bundle_v1: Path
) -> None:
    """A kill during the very first start-up (the start-up bundle copied, the record not yet written)."""
    server = make_server()
    build_bundle(server.data_dir / "bundles" / "000001-1", "1")
    server.start()
    version, bad = _check_serving(server)
    assert (version, bad) == ("1", [])
    server.stop()


def _garbage_onnx(bundle: Path) -> None:
    (bundle / "dense.onnx").write_bytes(b"\x08\x07not an onnx model")


def _truncated_onnx(bundle: Path) -> None:
    data = (bundle / "dense.onnx").read_bytes()
    (bundle / "dense.onnx").write_bytes(data[: len(data) // 2])


def _empty_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").write_bytes(b"")


def _deleted(bundle: Path) -> None:
    shutil.rmtree(bundle)


DAMAGE = [
    pytest.param(_garbage_onnx, id="garbage-onnx"),
    pytest.param(_truncated_onnx, id="truncated-onnx"),
    pytest.param(_empty_manifest, id="empty-manifest"),
    pytest.param(_deleted, id="deleted"),
]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_live_bundle_damaged_on_disk_falls_back_to_the_previous_one(
    make_server: Callable[..., ServerProcess], archives: dict[str, bytes], damage: Callable[[Path], None]
) -> None:
    server = make_server().start()
    with server.client() as client:
        answer = client.post("/admin/bundles", content=archives["a"], headers=ADMIN)
        assert answer.status_code == 200, answer.text
        broken_id = answer.json()["bundle_id"]
    server.stop()
    damage(server.data_dir / "bundles" / broken_id)
    server.start()
    with server.client() as client:
        assert _live_version(client) == "1"
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/rank", json=RANK).status_code == 200
        history = client.get("/admin/status", headers=ADMIN).json()["bundles"]
    # The damaged bundle stays in the history (not live), for the operator to see.
    assert [(e["bundle_id"], e["live"]) for e in history] == [("000001-1", True), (broken_id, False)]
    server.stop()
    assert f"bundle {broken_id} cannot go live again" in server.log_text()


@pytest.mark.parametrize("damage", [DAMAGE[0], DAMAGE[3]])
def test_the_only_bundle_damaged_on_disk(
    make_server: Callable[..., ServerProcess],
    archives: dict[str, bytes],
    damage: Callable[[Path], None],
    bundle_v1: Path,
) -> None:
    """No earlier bundle to fall back to: without ``--bundle`` the server starts unready (503 with the reason) and
    takes a new upload; with ``--bundle`` it makes that bundle live again."""
    server = make_server(bundle=None, name="no-startup-bundle")
    with server.start(ready=False).client() as client:
        assert client.post("/admin/bundles", content=archives["a"], headers=ADMIN).status_code == 200
    server.stop()
    damage(server.data_dir / "bundles" / "000001-a")
    server.start(ready=False)
    with server.client() as client:
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["code"]) == (503, "not_ready")
        assert "no bundle is live" in ready.json()["detail"]
        ranked = client.post("/v1/rank", json=RANK)
        assert (ranked.status_code, ranked.json()["code"]) == (503, "no_bundle")
        assert client.post("/admin/bundles", content=archives["b"], headers=ADMIN).status_code == 200
        assert _live_version(client) == "b"
        # Ready once the writer process (started beside the server) has reported in: poll, do not race it.
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200
    server.stop()
    assert "bundle 000001-a cannot go live again" in server.log_text()

    with_startup = make_server(bundle=bundle_v1, name="startup-bundle").start()
    with_startup.stop()
    damage(with_startup.data_dir / "bundles" / "000001-1")
    with_startup.start()
    with with_startup.client() as client:
        assert _live_version(client) == "1"
        assert client.post("/v1/rank", json=RANK).status_code == 200
        live = [e["bundle_id"] for e in client.get("/admin/status", headers=ADMIN).json()["bundles"] if e["live"]]
    with_startup.stop()
    assert live == ["000002-1"]  # installed again from --bundle, beside the damaged 000001-1
