"""``Replication``: replicated mode's parts in the serving process, opened and closed together by ``Services``.

The connection to the log, the store's bootstrap from a snapshot, the intake that appends pushes to the log, the
bundle records (bundle_log.py) and the periodic snapshot (snapshots.py). The writer process reads the log itself
(consumer.py) with the same ``LogConfig``.

In a ``liverank serve`` server the master bootstraps the store (``open_store``) before its writer builds the shared
tier, and every worker holds the rest: any worker appends a push or publishes a bundle; a bundle record is carried
out by whichever worker takes it first (a file lock, process_lock.py), the others take that bundle from LMDB as
they do any swap (``WorkerSync``); one worker at a time publishes a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from liverank.serving.bundles import BundleManager
from liverank.serving.metrics import Metrics
from liverank.serving.replication.bundle_log import BundleLog
from liverank.serving.replication.link import NatsLink, log_config_from
from liverank.serving.replication.publisher import LogIntake
from liverank.serving.replication.snapshots import SnapshotPublisher, open_replica_store
from liverank.serving.settings import Settings
from liverank.store import EmbeddingStore

# What this replica's last start restored (the snapshot's tags, {} if none): written by the process that bootstraps
# the store (a server's master), read by the workers that report it.
BOOTSTRAP_RECORD = "log_bootstrap"


class Replication:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = log_config_from(settings)
        self.link = NatsLink(self.config, "server")
        self.intake: LogIntake | None = None
        self.bundle_log: BundleLog | None = None
        self.snapshots: SnapshotPublisher | None = None
        self._store: EmbeddingStore | None = None
        self.bootstrapped_from: dict[str, Any] | None = None  # the snapshot's tags, if this start restored one

    @classmethod
    def connect(cls, settings: Settings) -> Replication:
        """Reach the log (or raise ``ConfigInvalid``) and make sure its stream exists."""
        replication = cls(settings)
        replication.link.start()
        try:
            replication.link.ensure_stream()
        except BaseException:
            replication.link.close()
            raise
        return replication

    def open_store(self, open_store: Callable[[], EmbeddingStore]) -> EmbeddingStore:
        store, self.bootstrapped_from = open_replica_store(open_store, self.link)
        try:
            store.lmdb.put_app_record(BOOTSTRAP_RECORD, self.bootstrapped_from or {})
        except BaseException:
            store.close()
            raise
        return store

    def writer_config(self) -> dict[str, Any]:
        """The ``LogConfig`` for the writer process, as plain values."""
        return asdict(self.config)

    def attach(self, store: EmbeddingStore, bundles: BundleManager, metrics: Metrics) -> None:
        self._store = store
        if self.bootstrapped_from is None:  # a server's worker: its master bootstrapped the store
            self.bootstrapped_from = store.lmdb.get_app_record(BOOTSTRAP_RECORD) or None
        self.intake = LogIntake(store, self.link, metrics)
        self.bundle_log = BundleLog(self.link, bundles, store, metrics, self.settings.data_dir / ".bundle-log.lock")
        self.snapshots = SnapshotPublisher(self.link, store, self.settings.data_dir, self.settings.snapshot_interval_s)

    def log_intake(self) -> LogIntake:
        assert self.intake is not None, "attach() first"
        return self.intake

    def start(self) -> None:
        assert self.bundle_log is not None, "attach() first"
        assert self.snapshots is not None, "attach() first"
        self.bundle_log.start()
        self.snapshots.start()

    def close(self) -> None:
        if self.snapshots is not None:
            self.snapshots.stop()
        if self.bundle_log is not None:
            self.bundle_log.stop()
        self.link.close()

    def status(self, writer_status: dict[str, Any]) -> dict[str, Any]:
        """The writer's reading of the log (position applied, lag, state), bundle records, snapshots."""
        source = writer_status.get("source")
        out: dict[str, Any] = dict(source) if isinstance(source, dict) else {"state": "starting"}
        # The applied position read now (the writer's record is up to a quarter second old).
        applied = self._store.log_position() if self._store is not None else 0
        out["applied_position"] = applied
        out["lag_records"] = max(0, int(out.get("stream_last_position", 0)) - applied)
        if self.bundle_log is not None:
            out.update(self.bundle_log.status())
        if self.snapshots is not None:
            out.update(self.snapshots.status())
        out["bootstrapped_from_position"] = (self.bootstrapped_from or {}).get("log_position")
        return out
