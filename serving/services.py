"""``Services``: every long-lived part of a server, opened and closed in one place (the app's lifespan owns it).

Opening order: store (LMDB + RAM tier warm-up), bundles (the last live bundle goes live again, or the configured
start-up bundle), updater (drains what the inbox still holds). Closing runs in reverse.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
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

if TYPE_CHECKING:  # replicated mode's modules need the replication extra (nats-py): imported only with --log
    from liverank.serving.replication.bundle_log import BundleLog
    from liverank.serving.replication.link import NatsLink
    from liverank.serving.replication.publisher import LogIntake

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
    log_link: NatsLink | None = None  # replicated mode: this process's connection to the shared log
    bundle_log: BundleLog | None = None  # replicated mode: bundles published to and carried out from the log

    @classmethod
    def open(cls, settings: Settings) -> Services:
        check_settings(settings)
        started = time.perf_counter()
        store = EmbeddingStore.open(
            settings.store_path,
            map_size_bytes=settings.map_size_bytes,
            durability=settings.durability,
            ram_budget_rows=settings.ram_budget_rows,
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
        )
        live = bundles.restore()
        if live is None and settings.bundle is not None:
            live = bundles.install_dir(settings.bundle)
            metrics.bundle_swaps.labels(how="startup").inc()
        inbox = Inbox(store.lmdb, settings.inbox_max_depth)
        log_config = None
        log_link: NatsLink | None = None
        if settings.log is not None:
            from liverank.serving.replication.link import NatsLink, log_config_from  # noqa: PLC0415

            log_config = log_config_from(settings)
            if settings.writer != "process":
                raise ConfigInvalid("replicated mode (--log) needs the writer process (LIVERANK_WRITER=process)")
            log_link = NatsLink(log_config, "server").start()
            log_link.ensure_stream()
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
                    log=None if log_config is None else asdict(log_config),
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
            intake=DeltaIntake(store, inbox, updater, metrics)
            if log_link is None
            else _log_intake(store, log_link, metrics),
            started_at_ms=time.time_ns() // 1_000_000,
            log_link=log_link,
            bundle_log=None if log_link is None else _bundle_log(log_link, bundles, store, metrics),
        )
        services.note_live_bundle()
        updater.start()
        if services.bundle_log is not None:
            services.bundle_log.start()
        log.info(
            "liverank ready to start in %.1f s: store %s, bundle %s",
            time.perf_counter() - started,
            settings.store_path,
            live.bundle_id if live else "none (upload one to POST /admin/bundles)",
        )
        return services

    def close(self) -> None:
        if self.bundle_log is not None:
            self.bundle_log.stop()
        self.updater.stop()
        if self.log_link is not None:
            self.log_link.close()
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
                return (
                    False,
                    f"{log_status['lag_records']} log records behind (ready at {self.settings.log_max_lag_records})",
                )
        return True, "ready"

    def log_status(self) -> dict[str, Any] | None:
        """Replicated mode: the writer's reading of the shared log (position applied, lag, state); else None."""
        if self.log_link is None:
            return None
        status = getattr(self.updater, "writer_status", {}).get("source")
        out = dict(status) if isinstance(status, dict) else {"state": "starting"}
        if self.bundle_log is not None:
            out.update(self.bundle_log.status())
        return out


def _log_intake(store: EmbeddingStore, link: NatsLink, metrics: Metrics) -> LogIntake:
    from liverank.serving.replication.publisher import LogIntake  # noqa: PLC0415 - the replication extra

    return LogIntake(store, link, metrics)


def _bundle_log(link: NatsLink, bundles: BundleManager, store: EmbeddingStore, metrics: Metrics) -> BundleLog:
    from liverank.serving.replication.bundle_log import BundleLog  # noqa: PLC0415 - the replication extra

    return BundleLog(link, bundles, store, metrics)
