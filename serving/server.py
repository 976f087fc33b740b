"""One server on one machine: the master process, one writer process and N worker processes on one port.

The master (``liverank serve``) prepares what is per server, then hands the port to uvicorn's own process manager
(``uvicorn.supervisors.Multiprocess``: it restarts a worker that dies and, on SIGTERM, lets every worker drain its
in-flight requests):

1. the live bundle: restored or installed once here (N workers starting at once must not each install it);
2. a fresh ``PROMETHEUS_MULTIPROC_DIR`` (metrics of every worker and of the writer, aggregated at each scrape);
3. the writer process (``serving/writer.py``), which builds the shared RAM tier from LMDB, publishes it, then
   applies the inbox and publishes every delta; a thread here restarts it (backing off) if it dies;
4. the workers: spawned interpreters (LMDB opened after the fork), ``LIVERANK_ROLE=worker``: they map the shared
   tier read-only, never write rows, never follow deltas (``serving/worker_sync.py``).

Replicated mode (``--log``): the master restores a snapshot first if the store cannot follow the log on from where it
is, the writer reads the JetStream log instead of the LMDB inbox (one consumer per server), and any worker appends
pushes and bundle records to the log (serving/replication/replica.py).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from liverank.serving.bundles import BundleManager
from liverank.serving.model_slot import ModelSlot
from liverank.serving.services import connect_replication
from liverank.serving.settings import Settings
from liverank.serving.writer import STATUS_RECORD, WriterProcess, writer_config
from liverank.store import EmbeddingStore
from liverank.store.shared_tier import read_control

log = logging.getLogger(__name__)

WORKER_APP = "liverank.serving.api.app:create_worker_app"
_WATCH_S = 0.5


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """uvicorn's bound socket (it logs the port line ``liverank.server_process`` reads), declared as TCP.

    ``Config.bind_socket`` makes the socket with protocol 0, and asyncio sets TCP_NODELAY on an accepted connection
    only where the socket says IPPROTO_TCP: without it, a response written in two segments (headers, body) waits for
    the client's delayed ACK, 40-45 ms per keep-alive request (measured on /healthz: 44 ms against 0.2 ms).
    The worker processes receive this socket object, protocol included.
    """
    bound = config.bind_socket()
    sock = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    sock.set_inheritable(True)
    return sock


def prepare_server(settings: Settings) -> str | None:
    """Make the bundle live once for the whole server (and check the store opens). Returns the live bundle id.

    Replicated mode (``--log``): a new replica, or one behind what the log still holds, restores a snapshot here,
    before the writer builds the shared tier from the store."""
    open_store = functools.partial(
        EmbeddingStore.open,
        settings.store_path,
        map_size_bytes=settings.map_size_bytes,
        durability=settings.durability,
        tier="none",
    )
    replication = connect_replication(settings)
    if replication is None:
        store = open_store()
    else:
        try:
            store = replication.open_store(open_store)
        finally:
            replication.close()
    try:
        bundles = BundleManager(
            settings.bundles_path,
            store,
            ModelSlot(),
            onnx_threads=settings.onnx_threads,
            keep=settings.bundle_history,
            max_bundle_bytes=settings.max_bundle_bytes,
            parity_min_topk_overlap=settings.parity_min_topk_overlap,
            parity_max_auc_diff=settings.parity_max_auc_diff,
        )
        live = bundles.restore()
        if live is None and settings.bundle is not None:
            live = bundles.install_dir(settings.bundle)
        store.lmdb.put_app_record(STATUS_RECORD, {})  # a previous server's writer must not look alive or drained
        return None if live is None else live.bundle_id
    finally:
        store.close()


def _watch_writer(writer: WriterProcess, stop: threading.Event) -> None:
    while not stop.wait(_WATCH_S):
        if not writer.alive:
            writer.restart()


def _log_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus the root logger (liverank's and libraries' loggers), applied in every
    worker (spawned interpreters do not inherit the master's ``logging.basicConfig``)."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["liverank"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["liverank"] = {
        "formatter": "liverank",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["liverank"], "level": log_level.upper()}  # as ``logging.basicConfig`` does
    return config


def _fresh_metrics_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="liverank-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def run_server(settings: Settings, log_level: str) -> int:
    """Run the whole server until SIGTERM/SIGINT. The environment carries the settings to the workers."""
    metrics_dir = _fresh_metrics_dir()
    tier = settings.tier_path
    tier.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(settings.workers_path, ignore_errors=True)
    settings.workers_path.mkdir(parents=True)
    os.environ["LIVERANK_ROLE"] = "worker"
    os.environ["LIVERANK_MASTER_PID"] = str(os.getpid())
    os.environ["LIVERANK_SHARED_TIER_DIR"] = str(tier)
    if settings.workers > 1:
        # All workers accept on one socket, and libuv (uvloop) takes every pending connection on each wake-up: a
        # client pool opening its keep-alive connections in a burst could land wholly on one worker while the others
        # idle (measured, 2 workers, 16 clients: all 16 on one worker in 1 run of 3, 1.46 instead of 1.85 server
        # cores). libuv's single-accept mode yields after each accept, so idle workers take their share.
        os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    before = read_control(tier)
    writer = WriterProcess(writer_config(settings, shared_tier=True))
    writer.start()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_writer, args=(writer, stop), name="liverank-writer-watch", daemon=True)
    watcher.start()
    try:
        _wait_for_tier(tier, before)
        config = uvicorn.Config(
            WORKER_APP,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            # By name, not "auto": a missing C parser or loop must fail the start, not silently cost 0.8 ms of CPU
            # per request (h11 + asyncio, measured in BENCHMARKS.md).
            http="httptools",
            loop="uvloop",
            log_level=log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=30,
            log_config=_log_config(log_level),
        )
        sock = listening_socket(config)
        # Listening from now on: connections wait in the backlog until a worker accepts them, not refused while
        # the workers start.
        sock.listen(config.backlog)
        # uvicorn's supervisor even for one worker (``uvicorn.run`` would serve one in this process): the worker is
        # replaced if it dies, and the master stays a small process that only supervises.
        Multiprocess(config, sockets=[sock]).run()
    finally:
        stop.set()
        watcher.join(5)
        writer.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        # The tier lives in memory (/dev/shm): a stopped server must not keep it. The next start rebuilds it.
        for leftover in [*tier.glob("seg-*"), tier / "control", tier / "writer.pid"]:
            leftover.unlink(missing_ok=True)
        shutil.rmtree(settings.workers_path, ignore_errors=True)
        with contextlib.suppress(OSError):
            tier.rmdir()  # only if nothing else is left in it
    return 0


def _wait_for_tier(tier: Path, before: int, timeout_s: float = 3600.0) -> None:
    """Workers start once the writer published the tier (a 10M-row warm-up takes a while)."""
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    next_note = started + 10
    while read_control(tier) <= before:
        if time.monotonic() > deadline:
            raise TimeoutError("the writer did not publish the shared tier")
        if time.monotonic() > next_note:
            log.info("waiting for the writer to build the shared tier (%.0f s)", time.monotonic() - started)
            next_note += 10
        time.sleep(0.05)
