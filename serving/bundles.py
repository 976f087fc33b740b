"""``BundleManager``: bundles on disk, going live, rollback, and the record of what is live.

Layout: ``<data_dir>/bundles/<bundle_id>/`` (manifest.json + dense.onnx), where ``bundle_id`` is
``<6-digit install number>-<version>``. The live bundle and the history (newest last) are one record in the
store's LMDB meta, written after the bundle's directory is complete, so a crash mid-install leaves the old
bundle live and at worst an ``.incoming-*`` directory, removed at the next start.

Going live: unpack, read, build the ONNX session, check it against the manifest, warm it, check the slots fit the
rows already stored, then declare the slots, bind the store to the new schema and replace the live reference.
Any failure before the last step changes nothing.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from liverank.serving.bundle import Bundle, extract_bundle_archive, load_bundle_dir
from liverank.serving.errors import BundleIncompatible, BundleInvalid, NoPreviousBundle
from liverank.serving.memory import release_free_memory_soon
from liverank.serving.model_slot import LiveModel, ModelSlot
from liverank.serving.runner import OnnxRunner
from liverank.store import EmbeddingStore
from liverank.store.errors import ManifestInvalid
from liverank.store.manifest import MANIFEST_FILE, manifest_from_json

log = logging.getLogger(__name__)

RECORD = "bundles"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BundleRecord:
    live: str | None
    history: list[str]  # bundle ids, oldest first; includes the live one
    # bundle id -> when it last went live by an install or a rollback (a restart's restore keeps the old time)
    went_live_ms: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"live": self.live, "history": self.history, "went_live_ms": self.went_live_ms}

    def kept(self, live: str | None, history: list[str], went_live_id: str | None = None) -> BundleRecord:
        """The record with ``live`` and ``history``; ``went_live_id`` goes live now."""
        times = {b: t for b, t in self.went_live_ms.items() if b in history}
        if went_live_id is not None:
            times[went_live_id] = time.time_ns() // 1_000_000
        return BundleRecord(live, history, times)


class BundleManager:
    """Installs, restores and rolls back bundles; owns ``<data_dir>/bundles``."""

    def __init__(
        self,
        root: Path,
        store: EmbeddingStore,
        model_slot: ModelSlot,
        *,
        onnx_threads: int,
        keep: int,
        max_bundle_bytes: int,
    ) -> None:
        self.root = root
        self._store = store
        self._slot = model_slot
        self._onnx_threads = onnx_threads
        self._keep = keep
        self._max_bundle_bytes = max_bundle_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".incoming-*"):
            shutil.rmtree(stale, ignore_errors=True)

    # --- the record ---------------------------------------------------------------------------------------------

    def record(self) -> BundleRecord:
        raw = self._store.lmdb.get_app_record(RECORD)
        if not raw:
            return BundleRecord(None, [])
        return BundleRecord(raw.get("live"), list(raw.get("history", [])), dict(raw.get("went_live_ms", {})))

    def _save(self, record: BundleRecord) -> None:
        self._store.lmdb.put_app_record(RECORD, record.to_json())

    def history(self) -> list[dict[str, Any]]:
        """The kept bundles, oldest first: version, when each went live, and the manifest's parity report if any.
        Reads each manifest only (not the ONNX file): the status page asks every few seconds."""
        record = self.record()
        out = []
        for bundle_id in record.history:
            entry: dict[str, Any] = {
                "bundle_id": bundle_id,
                "live": bundle_id == record.live,
                "went_live_ms": record.went_live_ms.get(bundle_id),
            }
            try:
                raw = orjson.loads((self.root / bundle_id / MANIFEST_FILE).read_bytes())
                manifest = manifest_from_json(raw)
                entry.update(model=manifest.model, version=manifest.version, schema_hash=manifest.schema_hash)
                if isinstance(raw, dict) and raw.get("parity") is not None:
                    entry["parity"] = raw["parity"]
            except ManifestInvalid as exc:
                entry["error"] = exc.message
            except (OSError, orjson.JSONDecodeError) as exc:
                entry["error"] = f"{MANIFEST_FILE} cannot be read: {exc}"
            out.append(entry)
        return out

    # --- going live ---------------------------------------------------------------------------------------------

    def install_archive(self, payload: bytes) -> LiveModel:
        """Unpack an uploaded archive and make it live (or raise and change nothing)."""
        incoming = self.root / f".incoming-{uuid.uuid4().hex}"
        try:
            extract_bundle_archive(
                payload, incoming, max_total_bytes=self._max_bundle_bytes, max_member_bytes=self._max_bundle_bytes
            )
            return self.install_dir(incoming, move=True)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)

    def install_dir(self, source: Path, *, move: bool = False) -> LiveModel:
        """Make the bundle in ``source`` live: built and warmed before anything changes."""
        with self._slot.swap_lock:
            bundle = load_bundle_dir(source)
            runner = self._prepare(bundle)
            record = self.record()
            # Directories on disk count too: a crash between naming a bundle's directory and recording it leaves
            # one behind, and the same number again would collide with it (upload, or start-up install, fails).
            names = [*record.history, *(p.name for p in self.root.iterdir() if not p.name.startswith("."))]
            number = 1 + max((int(n.split("-", 1)[0]) for n in names if n.split("-", 1)[0].isdigit()), default=0)
            bundle_id = f"{number:06d}-{_UNSAFE.sub('_', bundle.version)[:64]}"
            target = self.root / bundle_id
            if move:
                source.rename(target)
            else:
                shutil.copytree(source, target)
            bundle = Bundle(bundle.manifest, bundle.onnx_bytes, target)
            history = [*record.history, bundle_id]
            live = self._go_live(bundle_id, bundle, runner, history)
            self._prune(history)
            return live

    def restore(self) -> LiveModel | None:
        """At start-up: load the recorded live bundle again (or the newest earlier one that still loads)."""
        record = self.record()
        candidates = [record.live] if record.live else []
        candidates += [b for b in reversed(record.history) if b != record.live]
        for bundle_id in candidates:
            assert bundle_id is not None
            try:
                bundle = load_bundle_dir(self.root / bundle_id)
                runner = self._prepare(bundle)
            except BundleInvalid as exc:
                log.error("bundle %s cannot go live again: %s", bundle_id, exc.message)
                continue
            with self._slot.swap_lock:
                return self._go_live(bundle_id, bundle, runner, record.history)
        return None

    def rollback(self) -> LiveModel:
        """Make the bundle before the live one live again; the live one leaves the history."""
        with self._slot.swap_lock:
            record = self.record()
            if record.live is None or record.live not in record.history:
                raise NoPreviousBundle("no bundle is live, so there is nothing to roll back from")
            position = record.history.index(record.live)
            if position == 0:
                raise NoPreviousBundle(f"bundle {record.live} is the oldest kept; there is no earlier one")
            previous = record.history[position - 1]
            bundle = load_bundle_dir(self.root / previous)
            runner = self._prepare(bundle)
            history = [b for b in record.history if b != record.live]
            dropped = record.live
            live = self._go_live(previous, bundle, runner, history)
            shutil.rmtree(self.root / dropped, ignore_errors=True)
            return live

    def _prepare(self, bundle: Bundle) -> OnnxRunner:
        runner = OnnxRunner.build(bundle, intra_op_threads=self._onnx_threads)
        runner.warm_up()
        stored = self._store.slots
        for slot in bundle.manifest.slots:
            old = stored.get(slot.name)
            if old is not None and not old.storage_compatible(slot):
                raise BundleIncompatible(
                    f"slot {slot.name!r} is stored as dim {old.dim} {old.dtype} {old.id_kind} ids, the bundle "
                    f"declares dim {slot.dim} {slot.dtype} {slot.id_kind} ids"
                )
        return runner

    def _go_live(self, bundle_id: str, bundle: Bundle, runner: OnnxRunner, history: list[str]) -> LiveModel:
        self._store.declare_slots(list(bundle.manifest.slots))
        self._store.bind_schema(bundle.manifest.schema_hash)
        record = self.record()
        # A restart's restore re-enters here for the recorded live bundle: its went-live time stays.
        going_live = None if record.live == bundle_id and bundle_id in record.went_live_ms else bundle_id
        self._save(record.kept(bundle_id, history, going_live))
        live = LiveModel(bundle_id, bundle, runner, time.time_ns() // 1_000_000)
        if self._slot.replace(live) is not None:
            release_free_memory_soon()
        log.info("bundle %s (model %s version %s) is live", bundle_id, bundle.manifest.model, bundle.version)
        return live

    def _prune(self, history: list[str]) -> None:
        dropped = history[: max(0, len(history) - self._keep)]
        del history[: len(dropped)]
        # Record first, delete after: a crash in between leaves an unrecorded directory, not a recorded half one.
        record = self.record()
        self._save(record.kept(record.live, history))
        for bundle_id in dropped:
            shutil.rmtree(self.root / bundle_id, ignore_errors=True)
