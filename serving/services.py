"""``Services``: every long-lived part of a server, opened and closed in one place (the app's lifespan owns it),
and the serving core's one entry point per operation (rank, push a delta, install or roll back a bundle, ...).
Each operation does its own bookkeeping (metrics, the live-bundle gauge), so an HTTP route only parses the request,
calls one method and writes the answer (as MLServer's DataPlane does).

Opening order: store (LMDB + RAM tier warm-up), bundles (the last live bundle goes live again, or the configured
start-up bundle), the writer process and its follower (the writer drains what the inbox still holds, the follower
brings this process's RAM tier along). Closing runs in reverse.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest

from liverank.serving.bundles import BundleManager
from liverank.serving.conn_balance import ConnectionBalance
from liverank.serving.errors import ConfigInvalid
from liverank.serving.follower import Follower
from liverank.serving.intake import DeltaIntake
from liverank.serving.metrics import Metrics, scrape_registry
from liverank.serving.model_slot import LiveModel, ModelSlot
from liverank.serving.rank_slots import RankSlots, SlotRunner
from liverank.serving.ranker import Ranker, RankResult
from liverank.serving.request import Limits
from liverank.serving.settings import LOOPBACK_HOSTS, Settings
from liverank.serving.status_history import Observation, StatusHistory, read_samples
from liverank.serving.worker_sync import WorkerSync
from liverank.serving.writer import WriterProcess, status_path, writer_config
from liverank.store import EmbeddingStore, Inbox
from liverank.store.manifest import manifest_to_json

if TYPE_CHECKING:  # replicated mode needs the replication extra (nats-py): imported only with --log
    from liverank.serving.replication.publisher import LogIntake
    from liverank.serving.replication.replica import Replication

log = logging.getLogger(__name__)


def check_settings(settings: Settings) -> None:
    """Refuse settings that would expose the admin API without a token."""
    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        if not settings.open_admin:
            raise ConfigInvalid(
                "no admin token: set LIVERANK_ADMIN_TOKEN (or --open-admin to run /admin/* without one on localhost)"
            )
        if settings.host not in LOOPBACK_HOSTS:
            raise ConfigInvalid(f"--open-admin is allowed only on a loopback host, not on {settings.host!r}")


@dataclass(frozen=True)
class DeltaReceipt:
    """What became of a pushed delta: the answer's body, and whether it is settled (a duplicate, or visible to
    ranking) or still queued."""

    body: dict[str, Any]
    settled: bool


@dataclass
class Services:
    settings: Settings
    store: EmbeddingStore
    inbox: Inbox
    metrics: Metrics
    model_slot: ModelSlot
    bundles: BundleManager
    ranker: Ranker
    follower: Follower | WorkerSync
    intake: DeltaIntake | LogIntake
    history: StatusHistory
    started_at_ms: int
    replication: Replication | None = None  # replicated mode (--log): the shared log's parts in this process
    rank_runner: SlotRunner | None = None  # a worker of ``liverank serve``: its ranking threads, in the server's slots
    _tier_seen: tuple[int, int] = (0, 0)
    _tier_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        check_settings(settings)
        started = time.perf_counter()
        worker = settings.role == "worker"
        open_store = functools.partial(
            EmbeddingStore.open,
            settings.store_path,
            map_size_bytes=settings.map_size_bytes,
            durability=settings.durability,
            ram_budget_rows=settings.ram_budget_rows,
            tier="map" if worker else "local",
            shared_tier_dir=settings.tier_path if worker else None,
        )
        replication = connect_replication(settings)
        try:
            # Replicated mode: a new replica, or one behind what the log still holds, restores a snapshot first.
            # In a ``liverank serve`` server the master did that before the writer built the shared tier.
            bootstrap = replication.open_store if replication is not None and not worker else None
            store = bootstrap(open_store) if bootstrap is not None else open_store()
            try:
                return cls._assemble(settings, store, started, replication)
            except BaseException:
                store.close()
                raise
        except BaseException:
            if replication is not None:
                replication.close()
            raise

    @classmethod
    def _assemble(
        cls, settings: Settings, store: EmbeddingStore, started: float, replication: Replication | None
    ) -> Services:
        metrics = Metrics()
        model_slot = ModelSlot()
        bundles = BundleManager(
            settings.bundles_path,
            store,
            model_slot,
            onnx_threads=settings.onnx_threads,
            keep=settings.bundle_history,
            max_bundle_bytes=settings.max_bundle_bytes,
            parity_min_topk_overlap=settings.parity_min_topk_overlap,
            parity_max_auc_diff=settings.parity_max_auc_diff,
            clean_incoming=settings.role == "standalone",
        )
        # A worker takes the bundle the server's record names (the master made it live) and writes nothing.
        live = bundles.follow() if settings.role == "worker" else bundles.restore()
        if live is None and settings.bundle is not None and settings.role == "standalone":
            live = bundles.install_dir(settings.bundle)
            metrics.bundle_swaps.labels(how="startup").inc()
        inbox = Inbox(store.lmdb, settings.inbox_max_depth)
        store.follow_inline = False  # the follower thread catches up; ranking requests never pay for it
        follower: Follower | WorkerSync
        if settings.role == "worker":
            # The server's master runs the one writer; this worker maps the tier it publishes.
            follower = WorkerSync(
                store,
                bundles,
                model_slot,
                metrics,
                status_dir=settings.workers_path,
                writer_status_path=status_path(settings.tier_path),
                status_timeout_s=settings.status_timeout_s,
                master_pid=settings.master_pid,
                balance=ConnectionBalance() if settings.balance_connections else None,
            )
        else:
            follower = _standalone_follower(settings, store, metrics)
        if replication is not None:
            replication.attach(store, bundles, metrics)
        limits = Limits(settings.max_candidates, settings.max_list_ids, settings.max_k)
        services = cls(
            settings=settings,
            store=store,
            inbox=inbox,
            metrics=metrics,
            model_slot=model_slot,
            bundles=bundles,
            ranker=Ranker(store, model_slot, limits),
            follower=follower,
            intake=DeltaIntake(store, inbox, metrics) if replication is None else replication.log_intake(),
            history=StatusHistory(interval_s=settings.status_interval_s, capacity=settings.status_history_points),
            started_at_ms=time.time_ns() // 1_000_000,
            replication=replication,
            rank_runner=None
            if settings.rank_slots_id is None
            else SlotRunner(RankSlots(settings.rank_slots_id), settings.ranking_threads),
        )
        services.note_live_bundle()
        follower.start()
        services.history.start(services.observe)
        if replication is not None:
            replication.start()
        log.info(
            "liverank ready to start in %.1f s: store %s, bundle %s",
            time.perf_counter() - started,
            settings.store_path,
            live.bundle_id if live else "none (upload one to POST /admin/bundles)",
        )
        return services

    def close(self) -> None:
        if self.rank_runner is not None:
            self.rank_runner.close()
        self.history.stop()
        if self.replication is not None:
            self.replication.close()
        self.follower.stop()
        self.metrics.flush()  # the last requests' tallies: a worker's counters outlive it in the scrape
        self.store.close()

    # --- operations: one per route, each with its bookkeeping -------------------------------------------------

    def rank(self, doc: Any) -> RankResult:
        """Rank one parsed request with the live model and record its metrics."""
        result = self.ranker.rank(doc)
        self.metrics.record_rank(result)
        self._count_tier_events()
        return result

    def _count_tier_events(self) -> None:
        """Shared-tier retries and fallbacks since the last request, into the metrics (a worker of a server)."""
        tier = self.store.shared_tier
        if tier is None:
            return
        seen = (tier.retries, self.store.tier_fallbacks)
        if seen != self._tier_seen:
            with self._tier_lock:
                retries, fallbacks = self._tier_seen
                self._tier_seen = seen
            if seen[0] > retries:
                self.metrics.tier_retries.inc(seen[0] - retries)
            if seen[1] > fallbacks:
                self.metrics.tier_fallbacks.inc(seen[1] - fallbacks)

    def push_delta(self, payload: bytes, received_at_ms: int, *, wait_visible: bool) -> DeltaReceipt:
        """Queue a delta (counted by outcome); with ``wait_visible``, answer once this process serves it or the
        configured wait runs out."""
        result = self.intake.submit(payload, received_at_ms)
        body: dict[str, Any] = {"status": result.status, "producer": result.producer, "seq": result.seq}
        if result.status == "duplicate":
            return DeltaReceipt({**body, "epoch": self.epoch()}, settled=True)
        if not wait_visible:
            return DeltaReceipt({**body, "inbox_depth": result.depth}, settled=False)
        if self.follower.wait_applied(result.producer, result.seq, self.settings.wait_visible_timeout_s):
            return DeltaReceipt({**body, "status": "visible", "epoch": self.epoch()}, settled=True)
        return DeltaReceipt({**body, "visible": False, "inbox_depth": self.inbox.depth()}, settled=False)

    def install_bundle(self, archive: bytes) -> dict[str, Any]:
        """Check, warm and swap in an uploaded bundle archive; the answer names the new live bundle."""
        bundle_log = self.replication and self.replication.bundle_log  # replicated: installed here, then published
        live = bundle_log.upload(archive) if bundle_log else self.bundles.install_archive(archive)
        self.metrics.bundle_swaps.labels(how="upload").inc()
        return self._went_live_everywhere(live)

    def rollback(self) -> dict[str, Any]:
        """Make the previous bundle live again; the answer names it."""
        bundle_log = self.replication and self.replication.bundle_log  # replicated: a record for every replica
        live = bundle_log.rollback() if bundle_log else self.bundles.rollback()
        self.metrics.bundle_swaps.labels(how="rollback").inc()
        return self._went_live_everywhere(live)

    def _went_live_everywhere(self, live: LiveModel) -> dict[str, Any]:
        """The answer once every worker of the server serves ``live`` (each loads and warms it, then swaps). Status
        ``live_here`` if some worker has not within ``swap_wait_s`` (it keeps trying: the record names the bundle)."""
        sync = self.follower
        if isinstance(sync, WorkerSync) and not sync.wait_all_serving(live.bundle_id, self.settings.swap_wait_s):
            pending = [w["pid"] for w in sync.workers() if w.get("bundle_id") != live.bundle_id]
            return {"status": "live_here", "bundle_id": live.bundle_id, "workers_pending": pending}
        return self._went_live(live)

    def model_info(self) -> dict[str, Any]:
        """The live bundle's manifest (what ranking accepts) and the epoch; ``NoBundle`` if none is live."""
        live = self.model_slot.current()
        return {"bundle_id": live.bundle_id, "manifest": manifest_to_json(live.manifest), "epoch": self.epoch()}

    def metrics_text(self) -> bytes:
        """The Prometheus exposition, with the store's gauges read now."""
        stats = self.store.stats()
        for slot, rows in stats.rows_by_slot.items():
            self.metrics.store_rows.labels(slot=slot).set(rows)
        self.metrics.store_used_bytes.set(stats.used_bytes)
        self.metrics.store_map_bytes.set(stats.map_size_bytes)
        self.metrics.inbox_depth.set(self.inbox.depth())
        self.metrics.flush()
        return generate_latest(scrape_registry(self.metrics.registry))

    @property
    def conn_balance(self) -> ConnectionBalance | None:
        """A worker's connection balance (``serving/conn_balance.py``), or None (a standalone app, or disabled)."""
        return self.follower.balance if isinstance(self.follower, WorkerSync) else None

    @property
    def alive(self) -> bool:
        """The writer process and its follower run (liveness; readiness also needs a live bundle)."""
        return self.follower.alive

    def _went_live(self, live: LiveModel) -> dict[str, Any]:
        self.note_live_bundle()
        m = live.manifest
        return {
            "status": "live",
            "bundle_id": live.bundle_id,
            "model": m.model,
            "version": m.version,
            "schema_hash": m.schema_hash,
            "epoch": self.epoch(),
        }

    # --- state ----------------------------------------------------------------------------------------------

    def note_live_bundle(self) -> None:
        """Point the bundle-info metric at the live bundle."""
        # Set to 0, not cleared: a cleared child would live on in the multiprocess files of this process.
        for labels in list(self.metrics.bundle_info._metrics):
            self.metrics.bundle_info.labels(*labels).set(0)
        live = self.model_slot.live
        if live is not None:
            m = live.manifest
            self.metrics.bundle_info.labels(live.bundle_id, m.model, m.version, m.schema_hash).set(1)

    def epoch(self) -> dict[str, Any]:
        live = self.model_slot.live
        # A worker names what the shared tier serves (the same in every worker), not what LMDB has committed.
        seqs = self.store.served_epoch()[1] if isinstance(self.follower, WorkerSync) else self.store.applied_seqs()
        return {"dense_version": None if live is None else live.version, "sparse_seq": seqs}

    def status(self) -> dict[str, Any]:
        stats = self.store.stats()
        return {
            "epoch": self.epoch(),
            "applied_seq": stats.applied_seq,
            "inbox_depth": self.inbox.depth(),
            "last_apply_ms": self.follower.last_apply_ms,
            "push_to_visible": self.follower.push_to_visible_summary(),
            "ready": self.ready()[0],
            "store": {
                "generation": stats.generation,
                "schema_hash": stats.schema_hash,
                "rows_by_slot": stats.rows_by_slot,
                "resident_rows_by_slot": stats.resident_rows_by_slot,
                "ram_budget_rows": stats.ram_budget_rows,
                "used_bytes": stats.used_bytes,
                "map_size_bytes": stats.map_size_bytes,
                "durability": stats.durability,
                "unseen_by_slot": stats.unseen_by_slot,
            },
            "bundles": self.bundles.history(),
            "parity_bounds": self.bundles.parity_bounds(),
            "quarantined_deltas": self.store.lmdb.get_app_record("quarantine") or [],
            "log": self.log_status(),
            "started_at_ms": self.started_at_ms,
            **self._server_status(),
        }

    def _server_status(self) -> dict[str, Any]:
        """Per-server parts (multi-process server): this worker, every live worker, the writer, the shared tier."""
        if not isinstance(self.follower, WorkerSync):
            return {}
        tier = self.store.shared_tier
        return {
            "worker": os.getpid(),
            "workers": self.follower.workers(),
            "writer": self.follower.writer_status,
            "shared_tier": {
                "directory": str(self.settings.tier_path),
                "retries_here": 0 if tier is None else tier.retries,
                "fallbacks_here": self.store.tier_fallbacks,
            },
        }

    def status_page(self, since_ms: int = -1) -> dict[str, Any]:
        """What the status page shows (no secrets, so no token): the epoch and bundles now, and the history ring's
        samples taken after ``since_ms``."""
        return {
            "now_ms": time.time_ns() // 1_000_000,
            "started_at_ms": self.started_at_ms,
            "epoch": self.epoch(),
            "ready": self.ready()[0],
            "inbox_depth": self.inbox.depth(),
            "bundles": self.bundles.history(),
            # Filled in replicated mode (one entry per replica: name, lag_s, applied_seq); a single server has none.
            "replicas": [],
            "history": self.history.snapshot(since_ms),
        }

    def observe(self) -> Observation:
        """One reading for the status page's history: the registry /metrics exports and the core's state."""
        stats = self.store.stats()
        self.metrics.flush()
        return Observation(
            t_ms=time.time_ns() // 1_000_000,
            samples=read_samples(self.metrics.registry.collect()),
            epoch=self.epoch(),
            rows_by_slot=stats.rows_by_slot,
            resident_rows_by_slot=stats.resident_rows_by_slot,
            inbox_depth=self.inbox.depth(),
        )

    def ready(self) -> tuple[bool, str]:
        if self.model_slot.live is None:
            return False, "no bundle is live"
        if not self.follower.drained_at_start.is_set():
            return False, "applying the deltas queued before start-up"
        if not self.follower.alive:
            return False, "the writer process or its follower has stopped"
        if isinstance(self.follower, WorkerSync) and not self.follower.writer_alive:
            return False, "the server's writer process is not running"
        log_status = self.log_status()
        if log_status is not None:
            if log_status.get("state") != "following":
                return False, f"the shared log is {log_status.get('state', 'not read yet')}"
            if log_status["lag_records"] > self.settings.log_max_lag_records:
                lag, limit = log_status["lag_records"], self.settings.log_max_lag_records
                return False, f"{lag} log records behind (ready within {limit})"
        return True, "ready"

    def rows_checksum(self) -> dict[str, Any]:
        """A digest of every stored row with the sequences and log position it reflects (replica convergence)."""
        return {**self.store.rows_checksum(), "epoch": self.epoch()}

    def log_status(self) -> dict[str, Any] | None:
        """Replicated mode: this replica's reading of the log (applied position, lag, state); None otherwise."""
        if self.replication is None:
            return None
        return self.replication.status(self.follower.writer_status)


def connect_replication(settings: Settings) -> Replication | None:
    """Replicated mode (``--log``): connected to the log, its stream made sure of; None without ``--log``."""
    if settings.log is None:
        return None
    try:
        from liverank.serving.replication.replica import Replication  # noqa: PLC0415 - the replication extra
    except ImportError as exc:
        raise ConfigInvalid(
            f"replicated mode (--log) needs the replication extra ({exc.name} is missing): "
            "pip install 'liverank[replication]'"
        ) from exc
    return Replication.connect(settings)


def _standalone_follower(settings: Settings, store: EmbeddingStore, metrics: Metrics) -> Follower:
    """An app on its own (no ``liverank serve`` master): a writer process of its own, followed into its RAM tier."""
    writer = WriterProcess(writer_config(settings, shared_tier=False))
    return Follower(store, writer, metrics, poll_s=settings.updater_poll_s)
