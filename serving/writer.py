"""The writer process: applies queued deltas to LMDB outside the serving process.

Why a process: py-lmdb gives up and re-takes the GIL around every row it writes (and every key it reads). In a
server whose request threads keep the GIL busy, a 10,000-row delta that takes ~50 ms alone took 0.4-2.6 s (measured:
BENCHMARKS.md), so push-to-visible and ranking tails grew with load. Here the LMDB work runs in its own interpreter;
the serving process only follows the changelog into its RAM tier (a few vectorised numpy calls per delta).

The child runs the ``Updater`` loop (drain the inbox, flush, sweep) and publishes its state as the store's
``writer_status`` record, which the server's follower reads for readiness and metrics. No other code writes deltas
to LMDB.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from liverank.serving.delta_source import DeltaSource
from liverank.serving.freshness import Freshness
from liverank.serving.memory import release_free_memory
from liverank.serving.metrics import Metrics, add_new
from liverank.serving.settings import Settings
from liverank.serving.status_file import write_record
from liverank.serving.updater import Updater
from liverank.store import EmbeddingStore, Inbox
from liverank.store.doorbell import Doorbell

log = logging.getLogger(__name__)

STATUS_RECORD = "writer_status"  # a standalone app's writer: an LMDB app record
# A server's writer: a file beside the shared tier (``status_file``), so that reporting never waits on LMDB.
STATUS_FILE = "writer-status.json"
_STATUS_INTERVAL_S = 0.25


@dataclass(frozen=True)
class WriterConfig:
    """What the writer process needs (plain values: it crosses a process boundary)."""

    store_path: str
    map_size_bytes: int
    durability: str
    inbox_max_depth: int
    poll_s: float
    flush_interval_s: float
    sweep_interval_s: float
    log_level: int
    shared_tier_dir: str | None = None  # set: this writer builds and publishes the shared RAM tier there
    ram_budget_rows: int = 0
    log: dict[str, Any] | None = None  # replicated mode: a LogConfig's fields (the writer reads the shared log)
    lmdb_nice: int = 0  # the nice value of the writer's thread that writes published deltas into LMDB


def writer_config(settings: Settings, *, shared_tier: bool) -> WriterConfig:
    """The writer's configuration from the server's settings; ``shared_tier``: it publishes the shared RAM tier
    (a ``liverank serve`` server), else it only writes LMDB (a standalone app follows it into its own tier)."""
    return WriterConfig(
        store_path=str(settings.store_path),
        map_size_bytes=settings.map_size_bytes,
        durability=settings.durability,
        inbox_max_depth=settings.inbox_max_depth,
        poll_s=settings.updater_poll_s,
        flush_interval_s=settings.flush_interval_s,
        sweep_interval_s=settings.sweep_interval_s,
        log_level=logging.getLogger().getEffectiveLevel(),
        shared_tier_dir=str(settings.tier_path) if shared_tier else None,
        ram_budget_rows=settings.ram_budget_rows,
        log=_log_fields(settings),
        lmdb_nice=settings.writer_lmdb_nice,
    )


def status_path(tier_dir: str | os.PathLike[str]) -> Path:
    """Where a server's writer leaves its status record."""
    return Path(tier_dir) / STATUS_FILE


def _log_fields(settings: Settings) -> dict[str, Any] | None:
    """Replicated mode: the ``LogConfig`` the writer reads the shared log with, as plain values (nats is imported
    only then)."""
    if settings.log is None:
        return None
    from liverank.serving.replication.link import log_config_from  # noqa: PLC0415 - the replication extra

    return asdict(log_config_from(settings))


def _writer_main(config: dict[str, Any], stop: Connection, token: int, parent_pid: int) -> None:
    cfg = WriterConfig(**config)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s writer %(name)s: %(message)s")
    store = EmbeddingStore.open(
        cfg.store_path,
        map_size_bytes=cfg.map_size_bytes,
        durability=cfg.durability,  # type: ignore[arg-type]
        tier="publish" if cfg.shared_tier_dir else "none",
        shared_tier_dir=cfg.shared_tier_dir,
        ram_budget_rows=cfg.ram_budget_rows,
        lmdb_nice=cfg.lmdb_nice,
    )
    release_free_memory()  # the heap the shared tier's build used (LMDB rows read in chunks) goes back to the OS
    source: DeltaSource | None = None
    doorbell: Doorbell | None = None
    try:
        source = _open_source(cfg, store)
        if isinstance(source, Inbox):  # the log (replicated mode) wakes its consumer itself
            doorbell = Doorbell.bind(source.doorbell_address)
        updater = Updater(
            store,
            source,
            poll_s=cfg.poll_s,
            flush_interval_s=cfg.flush_interval_s,
            sweep_interval_s=cfg.sweep_interval_s,
            doorbell=doorbell,
        )
        updater.start()
        # A server's writer (shared tier) reports what it applied in the server's metrics itself: it is where
        # deltas become visible to every worker. A standalone app's follower does that in the app's process.
        mirror = WriterMetrics(store) if store.publisher is not None else None
        report_lock = threading.Lock()

        def report() -> None:
            """The status record (and, for a server, the metrics): every 0.25 s, and at once after deltas applied
            (``?wait=visible`` in a worker waits for this report, so its figures include the delta)."""
            with report_lock:
                if store.publisher is not None:
                    updater.publish_window_s = store.publisher.last_publish_window_s
                extra = mirror.update(updater) if mirror is not None else {}
                record = {**updater.status_record(), **extra, "token": token}
                if cfg.shared_tier_dir:
                    write_record(status_path(cfg.shared_tier_dir), record)
                else:
                    store.lmdb.put_app_record(STATUS_RECORD, record)

        if mirror is not None:
            updater.on_applied = report
        # ``stop`` is the read end of a pipe: readable when the server asks us to stop, or at EOF when the server
        # is gone. (A multiprocessing.Event would not do: a process killed while holding its lock blocks it.)
        while not stop.poll(_STATUS_INTERVAL_S):
            if os.getppid() != parent_pid:
                # The server died without stopping us (SIGKILL): a writer must not outlive its server, whose
                # restart starts a writer of its own.
                log.error("the server process is gone; the writer exits")
                break
            report()
            if not updater.alive:
                log.error("the writer's updater thread stopped; the writer exits so that the server restarts it")
                break
            if store.applier is not None and not store.applier.alive:
                log.error("the writer's LMDB thread stopped; the writer exits so that the server restarts it")
                break
        updater.stop()
    finally:
        stop_source = getattr(source, "stop", None)  # the log's connection (the inbox has nothing to stop)
        if stop_source is not None:
            stop_source()
        if doorbell is not None:
            doorbell.close()
        store.close()


class WriterMetrics:
    """The writer of a multi-process server: its updater's progress into the server's (multiprocess) metrics."""

    def __init__(self, store: EmbeddingStore) -> None:
        self._metrics = Metrics()
        self._freshness = Freshness(store, self._metrics)
        self._failures_seen: dict[str, int] = {}
        self._expired_seen: dict[str, int] = {}
        self._visible_seq: dict[str, int] = {}

    def update(self, updater: Updater) -> dict[str, Any]:
        """Record what was applied since the last call; returns status-record fields (push-to-visible summary)."""
        m = self._metrics
        while updater.applied_log:
            producer, seq, rows, received_at_ms, visible_at_ms = updater.applied_log.popleft()
            if received_at_ms > 0:
                self._freshness.visible(received_at_ms, visible_at_ms)
            m.applied_sequence.labels(producer=producer).set(seq)
            self._visible_seq[producer] = seq
            m.deltas_applied.inc()
            m.delta_rows_applied.inc(rows)
        add_new(dict(updater.failures), self._failures_seen, m.updater_failures, "kind")
        add_new(dict(updater.expired_by_slot), self._expired_seen, m.rows_expired, "slot")
        return {"push_to_visible": self._freshness.summary(), "visible_seq": dict(self._visible_seq)}


def _open_source(cfg: WriterConfig, store: EmbeddingStore) -> DeltaSource:
    """The embedded inbox, or in replicated mode the shared log (nats is imported only then)."""
    if cfg.log is None:
        return Inbox(store.lmdb, cfg.inbox_max_depth)
    from liverank.serving.replication.consumer import LogSource  # noqa: PLC0415 - the replication extra
    from liverank.serving.replication.link import LogConfig  # noqa: PLC0415

    source = LogSource(store, LogConfig(**{**cfg.log, "servers": tuple(cfg.log["servers"])}))
    source.start()
    return source


class WriterProcess:
    """Starts, watches and stops the writer child (spawned: LMDB handles must not cross a fork)."""

    def __init__(self, config: WriterConfig) -> None:
        self._config = config
        self._context = multiprocessing.get_context("spawn")
        self._stop_sender: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self.token = 0  # tells this writer's status records from any earlier writer's (random per start)
        self.restarts = 0
        self._next_restart = 0.0

    def start(self) -> None:
        self.token = secrets.randbits(62)
        receiver, self._stop_sender = self._context.Pipe(duplex=False)
        self._process = self._context.Process(
            target=_writer_main,
            args=(asdict(self._config), receiver, self.token, os.getpid()),
            name="liverank-writer",
            daemon=True,
        )
        self._process.start()
        receiver.close()  # the child has its own copy
        if self._config.shared_tier_dir:
            # Operators (and the kill -9 series) find the writer of a multi-process server here.
            pid_file = Path(self._config.shared_tier_dir) / "writer.pid"
            pid_file.write_text(f"{self._process.pid}\n")

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def restart(self) -> bool:
        """Start a dead writer again, backing off (1 s, doubling, at most 30 s) if it keeps dying."""
        now = time.monotonic()
        if now < self._next_restart:
            return False
        log.error("the writer process exited (code %s); starting it again", self._process and self._process.exitcode)
        self.restarts += 1
        self._next_restart = now + min(30.0, 2.0 ** min(self.restarts - 1, 5))
        self.stop()
        self.start()
        return True

    def stop(self, timeout_s: float = 15.0) -> None:
        process, sender = self._process, self._stop_sender
        if process is None:
            return
        if sender is not None:
            with contextlib.suppress(OSError):  # the writer may already be gone
                sender.send_bytes(b"stop")
            sender.close()
            self._stop_sender = None
        process.join(timeout_s)
        if process.is_alive():
            process.terminate()
            process.join(5)
        self._process = None
