"""One server on one machine: the master process, one writer process and N worker processes on one port.

The master (``liverank serve``) prepares what is per server, then hands the port to uvicorn's own process manager
(``uvicorn.supervisors.Multiprocess``: it restarts a worker that dies and, on SIGTERM, lets every worker drain its
in-flight requests):

1. the live bundle: restored or installed once here (N workers starting at once must not each install it);
2. a fresh ``PROMETHEUS_MULTIPROC_DIR`` (``<shared tier dir>/metrics``: metrics of every worker and of the writer,
   aggregated at each scrape; the master forgets a dead worker's live gauges when it replaces it);
3. the writer process (``serving/writer.py``), which builds the shared RAM tier from LMDB, publishes it, then
   applies the inbox and publishes every delta; a thread here restarts it (backing off) if it dies;
4. the server's ranking slots (``serving/rank_slots.py``): one count of rankings at once that every worker shares,
   so any worker may use every core and together they never run more rankings than the server has cores;
5. the workers: spawned interpreters (LMDB opened after the fork), ``LIVERANK_ROLE=worker``: they map the shared
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
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess, multiprocess

from liverank.serving.bundles import BundleManager
from liverank.serving.errors import ConfigInvalid
from liverank.serving.metrics import forget_process
from liverank.serving.model_slot import ModelSlot
from liverank.serving.rank_slots import ID_FILE as RANK_SLOTS_ID_FILE
from liverank.serving.rank_slots import RankSlots
from liverank.serving.services import connect_replication
from liverank.serving.settings import Settings
from liverank.serving.status_file import remove_record
from liverank.serving.writer import WriterProcess, status_path, writer_config
from liverank.store import EmbeddingStore
from liverank.store.shared_tier import read_control, tier_files

log = logging.getLogger(__name__)

WORKER_APP = "liverank.serving.api.app:create_worker_app"
_WATCH_S = 0.5


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The server's bound socket, declared as TCP and open to per-worker listeners on the same port.

    - Declared IPPROTO_TCP: asyncio sets TCP_NODELAY on an accepted connection only where the socket says so;
      without it, a response written in two segments (headers, body) waits for the client's delayed ACK, 40-45 ms
      per keep-alive request (measured on /healthz: 44 ms against 0.2 ms). (uvicorn's ``Config.bind_socket`` makes
      protocol-0 sockets.)
    - SO_REUSEPORT: each worker adds a listener of its own on this port (``WorkerWithOwnListener``).
    - It logs uvicorn's "running on" line, which ``liverank.server_process`` reads the port from.
    """
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    if config.port:
        # SO_REUSEPORT lets any socket of the same user that sets it too share the port: a second server started
        # on this port by mistake would silently take part of the traffic. A plain bind fails if anything listens
        # there (a reuse-port group included), so the second server refuses to start instead.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _bind(probe, config)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        _bind(sock, config)
    except ConfigInvalid:
        sock.close()
        raise
    sock.set_inheritable(True)
    shown = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, sock.getsockname()[1]
    )
    return sock


def _bind(sock: socket.socket, config: uvicorn.Config) -> None:
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        raise ConfigInvalid(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc


def own_listener(shared: socket.socket, backlog: int) -> socket.socket:
    """A listening socket of this worker's own on the shared socket's address (SO_REUSEPORT)."""
    own = socket.socket(shared.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    own.bind(shared.getsockname())
    own.listen(backlog)
    return own


class WorkerWithOwnListener(multiprocess.Process):
    """uvicorn's worker process, serving the shared socket and a listener of its own on the same port.

    With only the shared socket, every worker takes connections from one queue, and whichever worker wakes first
    takes a burst of them: a client pool opening its 16 keep-alive connections at once could land on one worker
    while the other idled (measured, 2 workers: 1.45 instead of 1.85 server cores in 1 of 3 runs, even with libuv's
    single-accept mode). With a listener per worker in one SO_REUSEPORT group, the kernel spreads new connections
    over the workers by a hash of their addresses. The shared socket stays in the group: it is what listens while
    the workers start (early clients wait instead of being refused) and it keeps a share of new connections that
    any worker may take.
    """

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover - runs in the worker
        shared = list(sockets or [])
        super().target([*shared, *(own_listener(sock, self.config.backlog) for sock in shared)])

    def join(self) -> None:
        """Reaped by the master (replaced after dying, or at shutdown): its "live" gauges leave the scrape."""
        super().join()
        if self.pid is not None:
            forget_process(self.pid)


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


def _fresh_metrics_dir(tier: Path) -> Path:
    """``<tier dir>/metrics``, emptied: beside the shared tier (in memory, one per store), so a server that was
    SIGKILLed leaves nothing behind once the next server on the same store starts (a fresh temporary directory per
    start leaked one directory per kill)."""
    path = tier / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def run_server(settings: Settings, log_level: str) -> int:
    """Run the whole server until SIGTERM/SIGINT. The environment carries the settings to the workers."""
    tier = settings.tier_path
    tier.mkdir(parents=True, exist_ok=True)
    metrics_dir = _fresh_metrics_dir(tier)
    shutil.rmtree(settings.workers_path, ignore_errors=True)
    settings.workers_path.mkdir(parents=True)
    os.environ["LIVERANK_ROLE"] = "worker"
    os.environ["LIVERANK_MASTER_PID"] = str(os.getpid())
    os.environ["LIVERANK_SHARED_TIER_DIR"] = str(tier)
    # One count of rankings at once for the whole server, shared by the workers (serving/rank_slots.py).
    rank_slots = RankSlots.create(tier, settings.ranking_threads)
    os.environ["LIVERANK_RANK_SLOTS_ID"] = str(rank_slots.semid)
    if settings.workers > 1:
        # Every worker also accepts on the master's shared socket (``WorkerWithOwnListener``), and libuv (uvloop)
        # takes every pending connection on a wake-up: single-accept mode yields after each accept, so a burst that
        # the kernel hashed to the shared socket is not taken by one worker alone.
        os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    remove_record(status_path(tier))  # a previous server's writer must not look alive or drained
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
        # replaced if it dies, and the master stays a small process that only supervises. It starts every worker
        # (first, replacement, or on SIGHUP) through its module's ``Process``: ours adds the worker's own listener.
        multiprocess.Process = WorkerWithOwnListener  # type: ignore[misc]
        Multiprocess(config, sockets=[sock]).run()
    finally:
        stop.set()
        watcher.join(5)
        writer.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        rank_slots.remove()
        # The tier lives in memory (/dev/shm): a stopped server must not keep it. The next start rebuilds it.
        for leftover in [*tier_files(tier), tier / "writer.pid", status_path(tier), tier / RANK_SLOTS_ID_FILE]:
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
