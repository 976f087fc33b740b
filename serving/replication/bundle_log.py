"""Dense bundles in replicated mode: the archive goes to the JetStream object store, a record on the stream says
"bundle published" (or "rollback"), and every replica fetches, verifies, warms and swaps it in stream order.

The replica that takes an upload installs it first (the usual checks: archive, manifest, checksums, warm-up), so a
bad bundle is refused with the usual 4xx and never published; then it stores the archive and appends the record.
Each replica's writer retires bundle records in log order into the store's ``log_bundle`` record (with the log
position); ``BundleSync`` in the serving process sees it, fetches the archive by its SHA-256 name, checks the digest,
and installs it with ``BundleManager`` like an upload. A rollback record makes each replica roll back its own
history, which holds the same bundles in the same order.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats

from liverank.serving.bundles import BundleManager
from liverank.serving.errors import LogUnavailable
from liverank.serving.metrics import Metrics
from liverank.serving.model_slot import LiveModel
from liverank.serving.replication.link import (
    HDR_KIND,
    HDR_OBJECT,
    HDR_SHA256,
    LOG_BUNDLE_DONE_RECORD,
    LOG_BUNDLE_RECORD,
    NatsLink,
)
from liverank.serving.replication.objects import get_object, put_object
from liverank.serving.replication.process_lock import held
from liverank.serving.replication.snapshots import BUNDLE_OBJECTS_RECORD
from liverank.store import EmbeddingStore

log = logging.getLogger(__name__)

_POLL_S = 0.2


class BundleLog:
    """Publishes uploads and rollbacks to the log, and carries out the records (a thread of the serving process)."""

    def __init__(
        self, link: NatsLink, bundles: BundleManager, store: EmbeddingStore, metrics: Metrics, lock_path: Path
    ) -> None:
        self._link = link
        self._lock_path = lock_path  # the server's other workers: one of them carries out a record, once
        self._bundles = bundles
        self._store = store
        self._metrics = metrics
        self._lock = threading.Lock()  # an upload (install + publish + mark done) and the sync never interleave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverank-bundle-sync", daemon=True)
        self.last_error: str | None = None

    @property
    def subject(self) -> str:
        return f"{self._link.config.stream}.bundle"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    # --- the replica that takes the request ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This process's threads and the server's other workers (which take the bundle the record in LMDB names,
        ``WorkerSync``): one install, rollback or record at a time, so a record is carried out once per server."""
        with self._lock, held(self._lock_path):
            yield

    def upload(self, archive: bytes) -> LiveModel:
        with self._exclusive():
            live = self._bundles.install_archive(archive)  # refused here (4xx) means nothing was published
            digest = hashlib.sha256(archive).hexdigest()
            try:
                name = f"bundles/{digest}"
                self._link.run(
                    put_object(self._link, self._link.config.state_bucket, name, archive),
                    self._link.config.timeout_s * 6,
                )
                position = self._publish({HDR_KIND: "bundle", HDR_OBJECT: name, HDR_SHA256: digest})
            except LogUnavailable:
                self._bundles.rollback()  # not in the log: this replica must not serve it alone
                raise
            self._mark_done(position)
            self._note_object(live.bundle_id, name)
            return live

    def rollback(self) -> LiveModel:
        with self._exclusive():
            live = self._bundles.rollback()
            position = self._publish({HDR_KIND: "rollback"})
            self._mark_done(position)
            return live

    def _publish(self, headers: dict[str, str]) -> int:
        try:
            ack = self._link.run(
                self._link.js.publish(self.subject, b"", timeout=self._link.config.timeout_s, headers=headers),
                self._link.config.timeout_s * 3,
            )
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise LogUnavailable(f"the log did not acknowledge the bundle record ({type(exc).__name__})") from exc
        return int(ack.seq)

    def status(self) -> dict[str, Any]:
        return {
            "bundle_record_done": int(self._store.lmdb.get_app_record(LOG_BUNDLE_DONE_RECORD) or 0),
            "bundle_sync_error": self.last_error,
        }

    def _note_object(self, bundle_id: str, name: str) -> None:
        """Remember where this bundle is in the state bucket (a snapshot names the live one for its restorers)."""
        objects = dict(self._store.lmdb.get_app_record(BUNDLE_OBJECTS_RECORD) or {})
        objects[bundle_id] = name
        self._store.lmdb.put_app_record(BUNDLE_OBJECTS_RECORD, objects)

    def _mark_done(self, position: int) -> None:
        self._store.lmdb.put_app_record(LOG_BUNDLE_DONE_RECORD, position)

    # --- every replica ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(_POLL_S):
            try:
                self.sync()
                self.last_error = None
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("carrying out a bundle record failed; retrying")
                self._stop.wait(1.0)

    def sync(self) -> bool:
        """Carry out the newest bundle record the writer retired, if this replica has not yet. True if it did."""
        record: dict[str, Any] | None = self._store.lmdb.get_app_record(LOG_BUNDLE_RECORD)
        if not record:
            return False
        with self._exclusive():
            done = int(self._store.lmdb.get_app_record(LOG_BUNDLE_DONE_RECORD) or 0)
            if record["position"] <= done:
                return False
            if record["kind"] == "bundle":
                archive = self._link.run(
                    get_object(self._link, self._link.config.state_bucket, record["object"]),
                    self._link.config.timeout_s * 6,
                )
                if hashlib.sha256(archive).hexdigest() != record["sha256"]:
                    raise ValueError(f"bundle object {record['object']} does not match its SHA-256")
                live = self._bundles.install_archive(archive)
                self._note_object(live.bundle_id, record["object"])
                self._metrics.bundle_swaps.labels(how="log").inc()
            elif record["kind"] == "rollback":
                self._bundles.rollback()
                self._metrics.bundle_swaps.labels(how="log_rollback").inc()
            self._mark_done(int(record["position"]))
            log.info("carried out log record %s (%s)", record["position"], record["kind"])
            return True
