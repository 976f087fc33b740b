"""``Services``: every long-lived part of a server, opened and closed in one place (the app's lifespan owns it).

Opening order: store (LMDB + RAM tier warm-up), bundles (the last live bundle goes live again, or the configured
start-up bundle), updater (drains what the inbox still holds). Closing runs in reverse.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

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
from liverank.serving.worker_sync import WorkerSync
from liverank.serving.writer import WriterConfig, WriterProcess
from liverank.store import EmbeddingStore, Inbox

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
    updater: Updater | Follower | WorkerSync
    intake: DeltaIntake
    started_at_ms: int

    @classmethod
    def open(cls, settings: Settings) -> Services:
        check_settings(settings)
        started = time.perf_counter()
        worker = settings.role == "worker"
        store = EmbeddingStore.open(
            settings.store_path,
            map_size_bytes=settings.map_size_bytes,
            durability=settings.durability,
            ram_budget_rows=settings.ram_budget_rows,
            tier="map" if worker else "local",
            shared_tier_dir=settings.tier_path if worker else None,
        )
        try:
            return cls._assemble(settings, store, started)
        except BaseException:
            store.close()
            raise

    @classmethod
    def _assemble(cls, settings: Settings, store: EmbeddingStore, started: float) -> Services:
        metrics = Metrics()
        model_slot = ModelSlot()
        bundles = BundleManager(
            settings.bundles_path,
            store,
            model_slot,
            onnx_threads=settings.onnx_threads,
            keep=settings.bundle_history,
            max_bundle_bytes=settings.max_bundle_bytes,
            clean_incoming=settings.role == "standalone",
        )
        # A worker takes the bundle the server's record names (the master made it live) and writes nothing.
        live = bundles.follow() if settings.role == "worker" else bundles.restore()
        if live is None and settings.bundle is not None and settings.role == "standalone":
            live = bundles.install_dir(settings.bundle)
            metrics.bundle_swaps.labels(how="startup").inc()
        inbox = Inbox(store.lmdb, settings.inbox_max_depth)
        updater: Updater | Follower | WorkerSync
        if settings.role == "worker":
            # The server's master runs the one writer; this worker maps the tier it publishes.
            updater = WorkerSync(
                store,
                bundles,
                model_slot,
                metrics,
                status_dir=settings.workers_path,
                status_timeout_s=settings.status_timeout_s,
            )
        elif settings.writer == "process":
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
            intake=DeltaIntake(store, inbox, updater, metrics),
            started_at_ms=time.time_ns() // 1_000_000,
        )
        services.note_live_bundle()
        updater.start()
        log.info(
            "liverank ready to start in %.1f s: store %s, bundle %s",
            time.perf_counter() - started,
            settings.store_path,
            live.bundle_id if live else "none (upload one to POST /admin/bundles)",
        )
        return services

    def close(self) -> None:
        self.updater.stop()
        self.store.close()

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
        seqs = self.store.served_epoch()[1] if isinstance(self.updater, WorkerSync) else self.store.applied_seqs()
        return {"dense_version": None if live is None else live.version, "sparse_seq": seqs}

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
            "started_at_ms": self.started_at_ms,
            **self._server_status(),
        }

    def _server_status(self) -> dict[str, Any]:
        """Per-server parts (multi-process server): this worker, every live worker, the writer, the shared tier."""
        if not isinstance(self.updater, WorkerSync):
            return {}
        tier = self.store.shared_tier
        return {
            "worker": os.getpid(),
            "workers": self.updater.workers(),
            "writer": self.updater.writer_status,
            "shared_tier": {
                "directory": str(self.settings.tier_path),
                "retries_here": 0 if tier is None else tier.retries,
                "fallbacks_here": self.store.tier_fallbacks,
            },
        }

    def ready(self) -> tuple[bool, str]:
        if self.model_slot.live is None:
            return False, "no bundle is live"
        if not self.updater.drained_at_start.is_set():
            return False, "applying the deltas queued before start-up"
        if not self.updater.alive:
            return False, "the updater (writer process or its follower) has stopped"
        if isinstance(self.updater, WorkerSync) and not self.updater.writer_alive:
            return False, "the server's writer process is not running"
        return True, "ready"
