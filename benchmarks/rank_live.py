"""Live changes under ranking load: D-10k deltas pushed once a second, and dense bundle swaps.

Deltas: windows of ranking load alternate between "without" and "with deltas" (same concurrency, same duration); in a
"with" window a thread pushes one D-10k delta a second to ``POST /admin/deltas?wait=visible`` and times each push
until its 200 (push-to-visible, as a producer sees it). The server's own push-to-visible summary comes from
``/admin/status`` afterwards. Swaps: a new bundle version is uploaded halfway through a window of ranking load, and
every failed ranking request of the window is counted.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from liverank.benchmarks.d10k import DeltaStream
from liverank.benchmarks.load import ClientKind, LoadProcess, LoadSpec
from liverank.benchmarks.stats import Summary
from liverank.benchmarks.steplog import StepLog

_SWAP_AROUND_S = 0.5  # latency around a swap: requests started from this long before it until this long after


@dataclass(frozen=True)
class LiveSetup:
    """What both phases need: the liverank server's port, its admin client, the bodies and the load shape."""

    port: int
    admin: httpx.Client
    bodies: Path
    concurrency: int
    duration_s: float
    warmup_s: float
    repeats: int
    workdir: Path
    client: ClientKind = "raw"
    rate_rps: float | None = None  # open-loop ranking load (None: closed loop at ``concurrency``)

    def spec(self, samples: bool = False) -> LoadSpec:
        return LoadSpec(
            self.port,
            "/v1/rank",
            self.bodies,
            self.concurrency,
            self.duration_s,
            self.warmup_s,
            client=self.client,
            samples=samples,
            rate_rps=self.rate_rps,
        )


class DeltaPusher:
    """Pushes queued deltas, one per ``interval_s``, each with ``?wait=visible``; runs on its own thread."""

    def __init__(self, admin: httpx.Client, pending: collections.deque[bytes], interval_s: float = 1.0) -> None:
        self._admin = admin
        self._pending = pending
        self._interval_s = interval_s
        self.timings_ms: list[float] = []
        self.statuses: list[int] = []
        self._stop_wall = 0.0
        self._thread = threading.Thread(target=self._run, name="bench-delta-pusher", daemon=True)

    def start(self, stop_wall: float) -> None:
        self._stop_wall = stop_wall
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        next_at = time.monotonic()
        while self._pending and time.time() < self._stop_wall:
            time.sleep(max(0.0, next_at - time.monotonic()))
            payload = self._pending.popleft()
            started = time.perf_counter()
            answer = self._admin.post(
                "/admin/deltas",
                params={"wait": "visible"},
                content=payload,
                headers={"content-type": "application/octet-stream"},
            )
            self.timings_ms.append((time.perf_counter() - started) * 1000.0)
            self.statuses.append(answer.status_code)
            next_at += self._interval_s


def _ms(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(key)
    return None if value is None else float(value) * 1000.0


def deltas_under_load(setup: LiveSetup, stream: DeltaStream, log: StepLog) -> dict[str, Any]:
    """Ranking p99 with and without deltas applying, and push-to-visible from the client and from the server."""
    pending: collections.deque[bytes] = collections.deque()
    per_window = int(setup.warmup_s + setup.duration_s) + 2
    windows: list[dict[str, Any]] = []
    pushes_ms: list[float] = []
    failed_pushes = 0
    for repeat in range(setup.repeats):
        for mode in ("without", "with") if repeat % 2 == 0 else ("with", "without"):
            pusher = None
            if mode == "with":
                while len(pending) < per_window:
                    pending.append(stream.next())
                pusher = DeltaPusher(setup.admin, pending)
            with LoadProcess(setup.spec(), setup.workdir, f"deltas-{repeat}-{mode}") as proc:
                window_start = proc.wait_started()
                if pusher is not None:
                    pusher.start(stop_wall=window_start + setup.duration_s)
                result = proc.wait()
            entry = {"repeat": repeat, "deltas": mode, "load": result}
            if pusher is not None:
                pusher.join()
                pushes_ms += pusher.timings_ms
                failed_pushes += sum(1 for s in pusher.statuses if s != 200)
                entry["pushes"] = len(pusher.timings_ms)
            windows.append(entry)
            log(
                "  deltas %s (repeat %d): rank p99 %.1f ms, %.0f rps%s",
                mode,
                repeat + 1,
                result["latency_ms"]["p99"] or float("nan"),
                result["rps"],
                "" if pusher is None else f", push-to-visible p99 {np.percentile(pusher.timings_ms, 99):.0f} ms",
            )
    server = setup.admin.get("/admin/status").json()["push_to_visible"]
    p99_without = [w["load"]["latency_ms"]["p99"] for w in windows if w["deltas"] == "without"]
    p99_with = [w["load"]["latency_ms"]["p99"] for w in windows if w["deltas"] == "with"]
    return {
        "concurrency": setup.concurrency,
        "rate_rps": setup.rate_rps,
        "rows_per_delta": stream.rows_per_delta,
        "interval_s": 1.0,
        "push_to_visible_client_ms": {
            "count": len(pushes_ms),
            "failed": failed_pushes,
            "p50": float(np.percentile(pushes_ms, 50)) if pushes_ms else None,
            "p99": float(np.percentile(pushes_ms, 99)) if pushes_ms else None,
            "max": max(pushes_ms) if pushes_ms else None,
        },
        "push_to_visible_server_ms": {
            "count": server.get("count"),
            "p50": _ms(server, "p50_s"),
            "p99": _ms(server, "p99_s"),
            "max": _ms(server, "max_s"),
        },
        "rank_p99_without_ms": Summary.of(p99_without).to_json(),
        "rank_p99_with_ms": Summary.of(p99_with).to_json(),
        "p99_inflation_pct": (statistics.median(p99_with) / statistics.median(p99_without) - 1.0) * 100.0,
        "windows": [{**w, "load": _brief(w["load"])} for w in windows],
    }


def swaps_under_load(setup: LiveSetup, archives: list[tuple[str, bytes]], log: StepLog) -> dict[str, Any]:
    """Upload each archive halfway through a window of ranking load; count the window's failed requests."""
    swaps: list[dict[str, Any]] = []
    for version, archive in archives:
        with LoadProcess(setup.spec(samples=True), setup.workdir, f"swap-{version}") as proc:
            window_start = proc.wait_started()
            time.sleep(max(0.0, window_start + setup.duration_s / 2 - time.time()))
            swap_start = time.time()
            answer = setup.admin.post("/admin/bundles", content=archive, headers={"content-type": "application/gzip"})
            swap_end = time.time()
            result = proc.wait()
        live = setup.admin.get("/v1/model").json()["manifest"]["version"]
        around = _latency_around(result, swap_start, swap_end)
        swaps.append(
            {
                "version": version,
                "upload_status": answer.status_code,
                "live_version_after": live,
                "swap_s": swap_end - swap_start,
                "failed_requests": result["failed"] + result["failed_in_warmup"],
                "failure_kinds": sorted({f["kind"] for f in result["failures"]}),
                "around_swap_ms": around,
                "load": _brief(result),
            }
        )
        log(
            "  swap to version %s: HTTP %d in %.2f s, %d failed requests, max latency around the swap %.0f ms",
            version,
            answer.status_code,
            swap_end - swap_start,
            swaps[-1]["failed_requests"],
            around["max"] or float("nan"),
        )
    return {
        "concurrency": setup.concurrency,
        "rate_rps": setup.rate_rps,
        "swaps": swaps,
        "failed_requests_total": sum(s["failed_requests"] for s in swaps),
        "all_went_live": all(s["upload_status"] == 200 and s["live_version_after"] == s["version"] for s in swaps),
    }


def _latency_around(result: dict[str, Any], swap_start: float, swap_end: float) -> dict[str, Any]:
    samples = result["samples"]
    t0_wall = result["window_start_wall_s"] - result["warmup_s"]
    start = np.asarray(samples["start_s"]) + t0_wall
    latency = np.asarray(samples["latency_ms"])
    near = (start >= swap_start - _SWAP_AROUND_S) & (start <= swap_end + _SWAP_AROUND_S)
    if not near.any():
        return {"requests": 0, "p99": None, "max": None}
    return {
        "requests": int(near.sum()),
        "p99": float(np.percentile(latency[near], 99)),
        "max": float(latency[near].max()),
    }


def _brief(load: dict[str, Any]) -> dict[str, Any]:
    """A load result without its per-request samples (they stay in the run directory)."""
    return {k: v for k, v in load.items() if k != "samples"}
