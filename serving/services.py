"""``Services``: every long-lived part of a server, opened and closed in one place (the app's lifespan owns it).

Opening order: store (LMDB + RAM tier warm-up), bundles (the last live bundle goes live again, or the configured
start-up bundle), updater (drains what the inbox still holds). Closing runs in reverse.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from liverank.serving.bundles import BundleManager
from liverank.serving.errors import ConfigInvalid
from liverank.serving.follower import Follower
from liverank.serving.intake import DeltaIntake
from liverank.serving.metrics import Metrics
from liverank.serving.model_slot import ModelSlot
from liverank.serving.ranker import Ranker
from liverank.serving.request import Limits
from liverank.serving.settings import LOOPBACK_HOSTS, Settings
from liverank.serving.updater import Updater
from liverank.serving.writer import WriterConfig, WriterProcess
from liverank.store import EmbeddingStore, Inbox

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


@dataclass
class Services:
    settings: Settings
    store: EmbeddingStore
    inbox: Inbox
    metrics: Metrics
    model_slot: ModelSlot
    bundles: BundleManager
    ranker: Ranker
    updater: Updater | Follower
    intake: DeltaIntake | LogIntake
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
        updater: Updater | Follower
        if settings.writer == "process":
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
            updater = Follower(store, writer, metrics, poll_s=settings.updater_poll_s)
        else:
            updater = Updater(
                store,
                inbox,
                metrics,
                poll_s=settings.updater_poll_s,
                flush_interval_s=settings.flush_interval_s,
                sweep_interval_s=settings.sweep_interval_s,
            )
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
            updater=updater,
            intake=DeltaIntake(store, inbox, updater, metrics) if replication is None else replication.log_intake(),
            started_at_ms=time.time_ns() // 1_000_000,
            replication=replication,
        )
        services.note_live_bundle()
        updater.start()
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
        if self.replication is not None:
            self.replication.close()
        self.updater.stop()
        self.store.close()

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
            "last_apply_ms": self.updater.last_apply_ms,
            "push_to_visible": self.updater.push_to_visible_summary(),
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

    def ready(self) -> tuple[bool, str]:
        if self.model_slot.live is None:
            return False, "no bundle is live"
        if not self.updater.drained_at_start.is_set():
            return False, "applying the deltas queued before start-up"
        if not self.updater.alive:
            return False, "the updater (writer process or its follower) has stopped"
        log_status = self.log_status()
        if log_status is not None:
            if log_status.get("state") != "following":
                return False, f"the shared log is {log_status.get('state', 'not read yet')}"
            if log_status["lag_records"] > self.settings.log_max_lag_records:
                lag, limit = log_status["lag_records"], self.settings.log_max_lag_records
                return False, f"{lag} log records behind (ready within {limit})"
        return True, "ready"

    def log_status(self) -> dict[str, Any] | None:
        """Replicated mode: this replica's reading of the log (applied position, lag, state); None otherwise."""
        if self.replication is None:
            return None
        return self.replication.status(getattr(self.updater, "writer_status", {}))


def _connect_replication(settings: Settings) -> Replication | None:
    if settings.log is None:
        return None
    if settings.writer != "process":
        raise ConfigInvalid("replicated mode (--log) needs the writer process (LIVERANK_WRITER=process)")
    from liverank.serving.replication.replica import Replication  # noqa: PLC0415 - the replication extra

    return Replication.connect(settings)
