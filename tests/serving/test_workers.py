"""``liverank serve --workers 2``: real processes on one port, one writer, one shared RAM tier.

A client hammers ranking while deltas (``?wait=visible``) and bundle swaps land; both workers answer (told apart by
``X-Liverank-Worker``) and agree on the epoch after ``?wait=visible`` and on the bundle after a swap; metrics count
every worker's requests once; a worker SIGKILLed under load is replaced, no acknowledged delta is lost, and nothing
fails on the other worker nor after the replacement is ready.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from liverank.exporter.archive import archive_bundle
from liverank.serving.rank_slots import RankSlots
from tests.reliability.conftest import (
    ADMIN,
    PRODUCER,
    ServerProcess,
    build_bundle,
    stream_delta,
)

pytestmark = pytest.mark.slow

WORKER = "x-liverank-worker"


def rank_body(client: httpx.Client) -> dict[str, Any]:
    manifest = client.get("/v1/model").json()["manifest"]
    user: dict[str, Any] = {}
    candidates: dict[str, Any] = {}
    for feature in manifest["features"]:
        value: Any = [1, 2] if feature["kind"] == "id_list" else 1
        if feature["kind"] == "numeric":
            value = 0.5
        if feature["side"] == "user":
            user[feature["name"]] = value
        else:
            candidates[feature["name"]] = [value, value, value]
    return {"user": user, "candidates": candidates, "k": 2}


class Hammer(threading.Thread):
    """Ranks in a loop; records every answer's worker and failures (with the time they happened)."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.stop_flag = threading.Event()
        self.by_worker: Counter[str] = Counter()
        self.failures: list[tuple[float, str]] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            # A new connection every few requests: the kernel spreads connections over the workers.
            with httpx.Client(base_url=self.url, timeout=30) as client:
                for _ in range(5):
                    try:
                        answer = client.post("/v1/rank", json=self.body)
                    except httpx.TransportError as exc:
                        self.failures.append((time.monotonic(), repr(exc)))
                        break
                    if answer.status_code != 200:
                        self.failures.append((time.monotonic(), f"{answer.status_code} {answer.text[:200]}"))
                    else:
                        self.by_worker[answer.headers[WORKER]] += 1

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(60)


def worker_environ(pid: str) -> dict[str, str]:
    """The environment a worker process started with (the master sets the server-wide variables before it)."""
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def answers_from_each_worker(client: httpx.Client, path: str, n_workers: int, **kwargs: Any) -> dict[str, Any]:
    """One answer of ``path`` per worker (new connections until every worker answered)."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while len(seen) < n_workers:
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
        with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
            answer = fresh.get(path, **kwargs)
        assert answer.status_code == 200, answer.text
        seen[answer.headers[WORKER]] = answer.json()
    return seen


@pytest.fixture
def server(tmp_path: Path) -> Any:
    bundle = build_bundle(tmp_path / "bundle-1", "1")
    with ServerProcess(tmp_path / "data", bundle, log_path=tmp_path / "server.log", args=["--workers", "2"]) as proc:
        proc.start()
        yield proc


def test_two_workers_rank_take_deltas_and_swap_under_load(server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as client:
        schema = client.get("/v1/model").json()["manifest"]["schema_hash"]
        hammer = Hammer(server.url, rank_body(client))
        hammer.start()
        try:
            for seq in range(1, 11):
                answer = client.post("/admin/deltas?wait=visible", content=stream_delta(schema, seq), headers=ADMIN)
                assert answer.status_code == 200, answer.text
                assert answer.json()["epoch"]["sparse_seq"] == {PRODUCER: seq}
                # Visible means visible in the shared tier: every worker serves it now.
                epochs = answers_from_each_worker(client, "/v1/model", 2)
                assert {str(e["epoch"]["sparse_seq"]) for e in epochs.values()} == {str({PRODUCER: seq})}, epochs
            archive = archive_bundle(build_bundle(tmp_path / "bundle-2", "2", seed=1))
            swapped = client.post("/admin/bundles", content=archive, headers=ADMIN)
            assert swapped.status_code == 200, swapped.text
            models = answers_from_each_worker(client, "/v1/model", 2)
            assert {m["epoch"]["dense_version"] for m in models.values()} == {"2"}, models
            rolled = client.post("/admin/rollback", headers=ADMIN)
            assert rolled.status_code == 200, rolled.text
            models = answers_from_each_worker(client, "/v1/model", 2)
            assert {m["epoch"]["dense_version"] for m in models.values()} == {"1"}, models
            status = answers_from_each_worker(client, "/admin/status", 2, headers=ADMIN)
            for pid, body in status.items():
                assert body["worker"] == int(pid)
                assert sorted(w["pid"] for w in body["workers"]) == sorted(int(p) for p in status)
                assert body["epoch"] == {"dense_version": "1", "sparse_seq": {PRODUCER: 10}}
        finally:
            hammer.stop()
        assert not hammer.failures, hammer.failures[:3]
        assert len(hammer.by_worker) == 2, hammer.by_worker
        # Every request counted once across workers: the scrape sums both workers' files. A worker writes its
        # requests' tallies at its next beat (serving/metrics.py), so the other worker's may be a beat late.
        hammered = sum(hammer.by_worker.values())
        deadline = time.monotonic() + 30.0
        while True:
            metrics = client.get("/metrics").text
            ranked = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("liverank_request_duration_seconds_count")
                and 'route="/v1/rank"' in line
                and 'status="200"' in line
            )
            if ranked >= hammered or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ranked == hammered
        # Deltas are counted once, by the writer (where they become visible to every worker).
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line[:1] != "#"
        }
        assert values["liverank_deltas_applied_total"] == 10
        assert values["liverank_push_to_visible_seconds_count"] == 10
        assert values[f'liverank_applied_sequence{{producer="{PRODUCER}"}}'] == 10
        # Complete tier, every delta published whole: no lookup fell back to LMDB.
        assert values.get("liverank_shared_tier_fallbacks_total", 0) == 0
        assert values.get('liverank_lookups_total{source="lmdb"}', 0) == 0
        assert values['liverank_lookups_total{source="ram"}'] == sum(hammer.by_worker.values())


def test_a_killed_worker_is_replaced_and_loses_nothing(server: ServerProcess) -> None:
    with server.client() as client:
        schema = client.get("/v1/model").json()["manifest"]["schema_hash"]
        hammer = Hammer(server.url, rank_body(client))
        hammer.start()
        try:
            workers = answers_from_each_worker(client, "/healthz", 2)
            victim, survivor = sorted(workers)
            acked = []
            for seq in range(1, 6):
                assert client.post("/admin/deltas", content=stream_delta(schema, seq), headers=ADMIN).status_code in (
                    200,
                    202,
                )
                acked.append(seq)
            killed_at = time.monotonic()
            os.kill(int(victim), signal.SIGKILL)
            # The replacement: a third pid answers, and the survivor kept answering.
            deadline = time.monotonic() + 90
            while True:
                assert time.monotonic() < deadline, "the killed worker was not replaced"
                pids = set(answers_from_each_worker(client, "/readyz", 2))
                if victim not in pids and len(pids) == 2:
                    break
            replaced_at = time.monotonic()
            # The master reaped the victim: its "live" gauges (inbox depth, store rows...) left the scrape.
            metrics_dir = Path(worker_environ(survivor)["PROMETHEUS_MULTIPROC_DIR"])
            assert list(metrics_dir.glob(f"gauge_live*_{survivor}.db"))
            assert not list(metrics_dir.glob(f"gauge_live*_{victim}.db"))
            for seq in range(6, 11):
                answer = client.post("/admin/deltas?wait=visible", content=stream_delta(schema, seq), headers=ADMIN)
                assert answer.status_code == 200, answer.text
                acked.append(seq)
            epochs = answers_from_each_worker(client, "/v1/model", 2)
            assert {str(e["epoch"]["sparse_seq"]) for e in epochs.values()} == {str({PRODUCER: 10})}
        finally:
            hammer.stop()
    # Requests in flight on the victim may fail (between the kill and its replacement being ready); none other.
    late = [f for f in hammer.failures if not killed_at <= f[0] <= replaced_at]
    assert not late, late[:3]
    assert hammer.by_worker[survivor] > 0


def test_workers_run_uvloop_and_httptools_and_accept_one_connection_at_a_time(server: ServerProcess) -> None:
    """The mechanisms behind the per-request CPU and the spread of connections over workers (BENCHMARKS.md): each
    worker runs libuv's loop and the C HTTP parser, and takes one pending connection per wake-up, so a client pool
    opening its connections at once does not land on one worker."""
    with server.client() as client:
        status = answers_from_each_worker(client, "/admin/status", 2, headers=ADMIN)
    for pid in status:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"UV_TCP_SINGLE_ACCEPT=1" in environ
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "uvloop" in maps
        assert "httptools" in maps


def test_the_workers_share_one_count_of_rankings_that_the_server_removes_at_stop(server: ServerProcess) -> None:
    """``serving/rank_slots.py``: every worker ranks in the slots of one semaphore the master made, with one slot
    per usable core, all free when nothing ranks; a stopped server leaves no semaphore behind."""
    with server.client() as client:
        status = answers_from_each_worker(client, "/admin/status", 2, headers=ADMIN)
        ranked = client.post("/v1/rank", json=rank_body(client))
    assert ranked.status_code == 200, ranked.text
    ids = {worker_environ(pid)["LIVERANK_RANK_SLOTS_ID"] for pid in status}
    assert len(ids) == 1, ids
    slots = RankSlots(int(ids.pop()))
    cores = len(os.sched_getaffinity(0))
    deadline = time.monotonic() + 30
    while slots.free() != cores:
        assert time.monotonic() < deadline, f"{slots.free()} of {cores} slots free with nothing to rank"
        time.sleep(0.01)
    server.stop()
    with pytest.raises(OSError, match=r"semctl\(GETVAL\)"):
        slots.free()


def test_client_connections_spread_evenly_over_the_workers(server: ServerProcess) -> None:
    """16 keep-alive clients: the kernel places their connections by a hash, often unevenly; a worker above its
    share closes connections (``Connection: close`` after a whole answer) until each worker holds 8. No request
    fails: the clients reconnect."""
    clients = [httpx.Client(base_url=server.url, limits=httpx.Limits(max_connections=1)) for _ in range(16)]
    last_worker: list[str] = [""] * len(clients)
    failures: list[str] = []
    stop = threading.Event()

    def keep_asking(i: int) -> None:
        while not stop.is_set():
            try:
                answer = clients[i].get("/healthz")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if answer.status_code != 200:
                failures.append(f"{answer.status_code}: {answer.text}")
            last_worker[i] = answer.headers[WORKER]

    threads = [threading.Thread(target=keep_asking, args=(i,), daemon=True) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 90
        spread: Counter[str] = Counter()
        while time.monotonic() < deadline:
            spread = Counter(last_worker)
            if "" not in spread and len(spread) == 2 and max(spread.values()) == 8:
                break
            time.sleep(0.2)
        assert "" not in spread, spread
        assert sorted(spread.values()) == [8, 8], spread
        with server.client() as admin:
            workers = admin.get("/admin/status", headers=ADMIN).json()["workers"]
        assert all("connections" in w for w in workers), workers
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for client in clients:
            client.close()
    assert failures == []
