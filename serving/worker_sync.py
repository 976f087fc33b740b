"""``WorkerSync``: what keeps one worker of a multi-process server in step with the others and with the writer.

A worker never writes rows and never follows deltas: the writer process publishes the shared RAM tier and every
worker maps it. What stays per worker is the dense model, so this thread:

- writes the worker's status record (``<tier dir>/workers/<pid>.json``: pid, served bundle, heartbeat), which
  ``/admin/status`` lists and a swap waits on;
- watches the bundle record in LMDB (the shared control record, written by the worker that took an upload or a
  rollback) and, when it names another bundle, loads and warms it here, then swaps (``BundleManager.follow``);
- mirrors the writer's status record (readiness: the writer is alive and has drained what was queued before start);
- publishes how many client connections this worker serves and, from the other workers' records, asks this worker
  to give one up when it holds more than its share (``serving/conn_balance.py``);
- ends this worker (SIGTERM to itself: it drains like any shutdown) when the server's master is gone: uvicorn's
  workers would otherwise outlive a master killed with SIGKILL, holding the port.

It has the ``Updater``'s surface (start/stop/wake/alive/wait_applied/...), so the HTTP shell does not care which one
it talks to; ``?wait=visible`` waits until the shared tier serves the delta, i.e. until every worker does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from liverank.serving.bundles import BundleManager
from liverank.serving.conn_balance import ConnectionBalance
from liverank.serving.freshness import Freshness
from liverank.serving.metrics import Metrics
from liverank.serving.model_slot import ModelSlot
from liverank.serving.status_file import read_record, write_record
from liverank.store import EmbeddingStore

log = logging.getLogger(__name__)

_BEAT_S = 0.25
_REPORT_WAIT_S = 2.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_workers(directory: Path, timeout_s: float) -> list[dict[str, Any]]:
    """Status records of workers that beat within ``timeout_s`` and whose process exists; stale ones are removed."""
    out = []
    now = _now_ms()
    for path in directory.glob("*.json"):
        record = read_record(path)
        if record is None:
            continue  # gone meanwhile (a stale record another worker removed)
        if now - int(record.get("heartbeat_ms", 0)) <= timeout_s * 1000 and _pid_alive(int(record["pid"])):
            out.append(record)
        elif not _pid_alive(int(record["pid"])):
            with contextlib.suppress(OSError):
                path.unlink()
    return sorted(out, key=lambda r: int(r["pid"]))


class WorkerSync:
    """Heartbeat, bundle following and writer mirroring for one worker process."""

    def __init__(
        self,
        store: EmbeddingStore,
        bundles: BundleManager,
        model_slot: ModelSlot,
        metrics: Metrics,
        *,
        status_dir: Path,
        writer_status_path: Path,
        status_timeout_s: float,
        master_pid: int | None = None,
        balance: ConnectionBalance | None = None,
    ) -> None:
        self._store = store
        self._bundles = bundles
        self._slot = model_slot
        self._metrics = metrics
        self._dir = status_dir
        self._timeout_s = status_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liverank-worker-sync", daemon=True)
        self._path = status_dir / f"{os.getpid()}.json"
        self._writer_status_path = writer_status_path
        self.balance = balance
        self.drained_at_start = threading.Event()
        self.last_apply_ms: int | None = None
        self.writer_status: dict[str, Any] = {}
        self.freshness = Freshness(store, metrics)
        self.started_at_ms = _now_ms()
        # From the master itself: a worker still starting when the master died would see init as its parent.
        self._master_pid = master_pid if master_pid is not None else os.getppid()

    def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._beat()
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        with contextlib.suppress(OSError):
            self._path.unlink()

    def wake(self) -> None:
        """The writer process polls the inbox on its own."""

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def writer_alive(self) -> bool:
        beat = self.writer_status.get("alive_at_ms")
        return beat is not None and _now_ms() - int(beat) <= self._timeout_s * 1000

    def wait_applied(self, producer: str, seq: int, timeout_s: float) -> bool:
        """Block until the shared tier (so every worker) serves ``producer``'s ``seq``, or the timeout passes. Then
        also until the writer has reported it (a moment later), so that the push-to-visible figures include it."""
        deadline = time.monotonic() + timeout_s
        if not self.freshness.wait_served(producer, seq, timeout_s):
            return False
        # Bounded: a writer restarted right after publishing never reports the delta (it is visible all the same).
        deadline = min(deadline, time.monotonic() + _REPORT_WAIT_S)
        while time.monotonic() < deadline:
            record = read_record(self._writer_status_path) or {}
            if record.get("visible_seq", {}).get(producer, 0) >= seq:
                self.writer_status = record
                break
            time.sleep(0.002)
        return True

    def push_to_visible_summary(self) -> dict[str, float | int | None]:
        # Measured where deltas become visible: in the writer, as it publishes the shared tier.
        record = read_record(self._writer_status_path) or self.writer_status
        summary: dict[str, float | int | None] | None = record.get("push_to_visible")
        return summary if summary is not None else self.freshness.summary()

    def workers(self) -> list[dict[str, Any]]:
        return live_workers(self._dir, self._timeout_s)

    def wait_all_serving(self, bundle_id: str, timeout_s: float) -> bool:
        """True once every live worker reports serving ``bundle_id`` (this one included)."""
        deadline = time.monotonic() + timeout_s
        self._beat()
        while time.monotonic() < deadline:
            workers = self.workers()
            if workers and all(w.get("bundle_id") == bundle_id for w in workers):
                return True
            time.sleep(0.02)
        return False

    def _beat(self) -> None:
        live = self._slot.live
        record = {
            "pid": os.getpid(),
            "bundle_id": None if live is None else live.bundle_id,
            "version": None if live is None else live.version,
            "heartbeat_ms": _now_ms(),
            "started_at_ms": self.started_at_ms,
        }
        balance = self.balance
        if balance is None:
            write_record(self._path, record)
            return
        connections = balance.active()
        record["connections"] = connections
        record["connections_closed_to_rebalance"] = balance.closed
        write_record(self._path, record)
        others = [w for w in self.workers() if int(w["pid"]) != os.getpid()]
        balance.rebalance(connections, [int(w.get("connections", 0)) for w in others])

    def _run(self) -> None:
        while not self._stop.is_set():
            if os.getppid() != self._master_pid:
                log.error("the server's master process is gone; this worker shuts down")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                self._bundles.follow()
                self._mirror_writer()
                self._beat()
                self._metrics.flush()  # this worker's requests, for a scrape that another process answers
            except Exception:
                log.exception("worker sync failed; retrying")
                self._metrics.updater_failures.labels(kind="worker_sync").inc()
                self._stop.wait(1.0)
                continue
            self._stop.wait(_BEAT_S)

    def _mirror_writer(self) -> None:
        self.writer_status = read_record(self._writer_status_path) or {}
        self.last_apply_ms = self.writer_status.get("last_apply_ms")
        if self.writer_status.get("drained_at_start") and self.writer_alive:
            self.drained_at_start.set()
        self.freshness.notify()
