"""Snapshots: a replica's store as of one log position, for replicas that are new or too far behind to replay.

A snapshot is an LMDB copy taken without stopping the writer (one read transaction's MVCC view, compacted), tagged
with what it holds: every producer's applied seq, the log position, the generation, and the live bundle's object
(if it came through the log). ``liverank snapshot`` writes one to a directory; in replicated mode each replica
publishes one to the stream's state bucket every ``snapshot_interval_s`` (the newest two are kept).

Bootstrap (``open_replica_store``): a replica whose next record is no longer in the stream (retention dropped it), or
a new replica while the stream holds records, restores the newest snapshot whose position the stream still follows
on from, then replays the stream from the tagged position like any replica.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from liverank.serving.replication.link import LOG_BUNDLE_DONE_RECORD, LOG_BUNDLE_RECORD, NatsLink
from liverank.serving.replication.objects import delete_object, get_object, list_objects, put_object
from liverank.serving.replication.process_lock import held
from liverank.store import EmbeddingStore

log = logging.getLogger(__name__)

TAGS_FILE = "snapshot.json"
BUNDLE_OBJECTS_RECORD = "log_bundle_objects"  # {bundle_id: object name}: bundles this replica got through the log
SNAPSHOT_RECORD = "log_snapshot_published"  # the tags of the last snapshot this replica published (any worker)
_KEEP = 2
_PREFIX = "snapshots/"
# A machine's own records: not carried over to the replica that restores the snapshot.
_LOCAL_RECORDS = ["bundles", "writer_status", "quarantine", BUNDLE_OBJECTS_RECORD, LOG_BUNDLE_RECORD, SNAPSHOT_RECORD]


def take_snapshot(store: EmbeddingStore, directory: Path) -> dict[str, Any]:
    """Write ``directory``/data.mdb and its tags (``snapshot.json``); return the tags."""
    tags = store.lmdb.snapshot_to(directory)
    bundles = store.lmdb.get_app_record("bundles") or {}
    objects = store.lmdb.get_app_record(BUNDLE_OBJECTS_RECORD) or {}
    tags["live_bundle_object"] = objects.get(bundles.get("live") or "")
    tags["taken_at_ms"] = time.time_ns() // 1_000_000
    (directory / TAGS_FILE).write_bytes(orjson.dumps(tags))
    return tags


def _object_names(position: int) -> tuple[str, str]:
    base = f"{_PREFIX}{position:020d}"
    return f"{base}/data.mdb", f"{base}/{TAGS_FILE}"


class SnapshotPublisher:
    """A thread of the serving process: every ``interval_s``, if the store moved, publish a snapshot."""

    def __init__(self, link: NatsLink, store: EmbeddingStore, work_dir: Path, interval_s: float) -> None:
        self._link = link
        self._store = store
        self._work_dir = work_dir
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverank-snapshots", daemon=True)
        self.last_error: str | None = None

    def start(self) -> None:
        if self._interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30.0)

    @property
    def last_published(self) -> dict[str, Any] | None:
        """Kept in LMDB: the server's workers share it (whichever published last)."""
        published: dict[str, Any] | None = self._store.lmdb.get_app_record(SNAPSHOT_RECORD)
        return published

    def status(self) -> dict[str, Any]:
        published = self.last_published or {}
        return {"snapshot_published_position": published.get("log_position"), "snapshot_error": self.last_error}

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                # One worker of the server publishes; the others skip the round (it is the same store).
                with held(self._work_dir / ".snapshot.lock", wait=False) as mine:
                    position = self._store.log_position()
                    if mine and position and position != (self.last_published or {}).get("log_position"):
                        self._store.lmdb.put_app_record(SNAPSHOT_RECORD, self.publish())
                self.last_error = None
            except Exception as exc:
                self.last_error = repr(exc)
                log.warning("publishing a snapshot failed: %r", exc)

    def publish(self) -> dict[str, Any]:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._work_dir, prefix=".snapshot-") as tmp:
            started = time.perf_counter()
            tags = take_snapshot(self._store, Path(tmp))
            data_name, tags_name = _object_names(tags["log_position"])
            timeout_s = self._link.config.timeout_s * 60
            bucket = self._link.config.state_bucket
            with open(Path(tmp) / "data.mdb", "rb") as data:
                self._link.run(put_object(self._link, bucket, data_name, data), timeout_s)
            self._link.run(put_object(self._link, bucket, tags_name, orjson.dumps(tags)), timeout_s)  # last: complete
            log.info(
                "published snapshot at log position %d (%.1f MB, %.1f s)",
                tags["log_position"],
                (Path(tmp) / "data.mdb").stat().st_size / 1e6,
                time.perf_counter() - started,
            )
        self._prune()
        return tags

    def _prune(self) -> None:
        positions = sorted(_published_positions(self._link))
        for position in positions[:-_KEEP]:
            for name in _object_names(position):
                try:
                    self._link.run(delete_object(self._link, self._link.config.state_bucket, name), 30.0)
                except Exception as exc:  # another replica pruned it first
                    log.debug("pruning snapshot object %s: %r", name, exc)


def _published_positions(link: NatsLink) -> list[int]:
    infos = link.run(list_objects(link, link.config.state_bucket), link.config.timeout_s * 4)
    out = []
    for info in infos:
        name = info.name or ""
        if name.startswith(_PREFIX) and name.endswith("/" + TAGS_FILE):
            out.append(int(name[len(_PREFIX) :].split("/", 1)[0]))
    return out


def _stream_bounds(link: NatsLink) -> tuple[int, int]:
    info = link.run(link.js.stream_info(link.config.stream), link.config.timeout_s * 2)
    return int(info.state.first_seq), int(info.state.last_seq)


def open_replica_store(
    open_store: Callable[[], EmbeddingStore], link: NatsLink
) -> tuple[EmbeddingStore, dict[str, Any] | None]:
    """Open this replica's store, first restoring the newest snapshot if the store cannot follow the stream on from
    where it is (new, or behind what the stream still holds). Returns the store and the restored snapshot's tags."""
    store = open_store()
    try:
        position = store.log_position()
        first, last = _stream_bounds(link)
        behind = first > position + 1
        new = position == 0 and last > 0
        if not (behind or new):
            return store, None
        candidates = [p for p in _published_positions(link) if p + 1 >= first and p > position]
        if not candidates:
            if behind:
                log.error(
                    "the log starts at %d, this replica needs %d, and no snapshot follows on: it cannot catch up",
                    first,
                    position + 1,
                )
            return store, None
        chosen = max(candidates)
        path = store.lmdb.path
    except BaseException:
        store.close()
        raise
    store.close()
    tags = _restore(link, chosen, path)
    store = open_store()
    _forget_other_machine(store, tags)
    log.info("bootstrapped from the snapshot at log position %d; replaying the log from there", chosen)
    return store, tags


def _restore(link: NatsLink, position: int, path: Path) -> dict[str, Any]:
    data_name, tags_name = _object_names(position)
    bucket = link.config.state_bucket
    timeout_s = link.config.timeout_s * 60
    tags: dict[str, Any] = orjson.loads(link.run(get_object(link, bucket, tags_name), timeout_s))
    incoming = path.with_name(f".{path.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    with open(incoming / "data.mdb", "wb") as out:
        link.run(get_object(link, bucket, data_name, into=out), timeout_s)
    # Replace the old store only once the new one is whole on disk.
    shutil.rmtree(path, ignore_errors=True)
    incoming.rename(path)
    return tags


def _forget_other_machine(store: EmbeddingStore, tags: dict[str, Any]) -> None:
    """The snapshot carries its machine's own records (bundle directories, writer state): drop them. The bundle
    that was live there is installed here through the usual bundle record, before the log moves on."""
    position = int(tags["log_position"])
    keep: dict[str, Any] = {LOG_BUNDLE_DONE_RECORD: position}
    live_object = tags.get("live_bundle_object")
    if live_object:
        sha256 = live_object.rsplit("/", 1)[-1]
        keep[LOG_BUNDLE_RECORD] = {"position": position, "kind": "bundle", "object": live_object, "sha256": sha256}
        keep[LOG_BUNDLE_DONE_RECORD] = position - 1
    store.lmdb.drop_app_records(_LOCAL_RECORDS, keep)
