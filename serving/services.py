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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest

from liverank.serving.bundles import BundleManager
from liverank.serving.errors import ConfigInvalid
from liverank.serving.follower import Follower
from liverank.serving.intake import DeltaIntake
from liverank.serving.metrics import Metrics
from liverank.serving.model_slot import LiveModel, ModelSlot
from liverank.serving.ranker import Ranker, RankResult
from liverank.serving.request import Limits
from liverank.serving.settings import LOOPBACK_HOSTS, Settings
from liverank.serving.status_history import Observation, StatusHistory, read_samples
from liverank.serving.writer import WriterConfig, WriterProcess
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
    follower: Follower
    intake: DeltaIntake | LogIntake
    history: StatusHistory
    started_at_ms: int
    replication: Replication | None = None  # replicated mode (--log): the shared log's parts in this process

    @classmethod
    def open(cls, settings: Settings) -> Services:
        check_settings(settings)
        started = time.perf_counter()
        open_store = functools.partial(
            EmbeddingStore.open,
            settings.store_path,
            map_size_bytes=settings.map_size_bytes,
            durability=settings.durability,
            ram_budget_rows=settings.ram_budget_rows,
        )
        replication = _connect_replication(settings)
        try:
            # replicated mode: a new replica, or one behind what the log still holds, restores a snapshot first
            store = open_store() if replication is None else replication.open_store(open_store)
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
        )
        live = bundles.restore()
        if live is None and settings.bundle is not None:
            live = bundles.install_dir(settings.bundle)
            metrics.bundle_swaps.labels(how="startup").inc()
        inbox = Inbox(store.lmdb, settings.inbox_max_depth)
        store.follow_inline = False  # the follower thread catches up; ranking requests never pay for it
        writer = WriterProcess(
            WriterConfig(
                store_path=str(settings.store_path),
                map_size_bytes=settings.map_size_bytes,
                durability=settings.durability,
                inbox_max_depth=settings.inbox_max_depth,
                poll_s=settings.updater_poll_s,
                flush_interval_s=settings.flush_interval_s,
                sweep_interval_s=settings.sweep_interval_s,
                log_level=logging.getLogger().getEffectiveLevel(),
                log=None if replication is None else replication.writer_config(),
            )
        )
        follower = Follower(store, writer, metrics, poll_s=settings.updater_poll_s)
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
        self.history.stop()
        if self.replication is not None:
            self.replication.close()
        self.follower.stop()
        self.store.close()

    # --- operations: one per route, each with its bookkeeping -------------------------------------------------

    def rank(self, doc: Any) -> RankResult:
        """Rank one parsed request with the live model and record its metrics."""
        result = self.ranker.rank(doc)
        self.metrics.record_rank(result)
        return result

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
        return self._went_live(live)

    def rollback(self) -> dict[str, Any]:
        """Make the previous bundle live again; the answer names it."""
        bundle_log = self.replication and self.replication.bundle_log  # replicated: a record for every replica
        live = bundle_log.rollback() if bundle_log else self.bundles.rollback()
        self.metrics.bundle_swaps.labels(how="rollback").inc()
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
        return generate_latest(self.metrics.registry)

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
        self.metrics.bundle_info.clear()
        live = self.model_slot.live
        if live is not None:
            m = live.manifest
            self.metrics.bundle_info.labels(live.bundle_id, m.model, m.version, m.schema_hash).set(1)

    def epoch(self) -> dict[str, Any]:
        live = self.model_slot.live
        return {"dense_version": None if live is None else live.version, "sparse_seq": self.store.applied_seqs()}

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
            "quarantined_deltas": self.store.lmdb.get_app_record("quarantine") or [],
            "log": self.log_status(),
            "started_at_ms": self.started_at_ms,
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


def _connect_replication(settings: Settings) -> Replication | None:
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
