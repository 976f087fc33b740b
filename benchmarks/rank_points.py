"""Ranking latency and throughput at each concurrency, servers alternating, with each server's CPU use.

Peers: liverank with each worker count (``liverank`` is the first, ``liverank_w<N>`` the others) and the baseline.
A liverank server exports its ONNX Runtime CPU time (``liverank_onnx_cpu_seconds_total``); with the server's CPU
time (every process of it, from /proc) that splits CPU per request into ONNX Runtime and everything else.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liverank.benchmarks.load import LoadSpec, run_load
from liverank.benchmarks.redis_peer import RedisServer
from liverank.benchmarks.servers import machine_busy_s, metric_total
from liverank.benchmarks.stats import Summary
from liverank.benchmarks.steplog import StepLog
from liverank.server_process import ServerProcess

if TYPE_CHECKING:
    from liverank.benchmarks.rank_bench import RankBenchSettings

ONNX_CPU_COUNTER = "liverank_onnx_cpu_seconds_total"
Runs = dict[tuple[int, str], list[dict[str, Any]]]


def _redis_cpu_s(redis_server: RedisServer) -> float:
    client = redis_server.client()
    try:
        cpu: dict[str, Any] = client.info("cpu")
    finally:
        client.close()
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _one_point(
    spec: LoadSpec, server: ServerProcess, redis_server: RedisServer | None, workdir: Path, name: str
) -> dict[str, Any]:
    onnx0 = metric_total(server, ONNX_CPU_COUNTER) if redis_server is None else None
    busy0, cpu0 = machine_busy_s(), server.cpu_s()
    redis0, wall0 = _redis_cpu_s(redis_server) if redis_server else 0.0, time.perf_counter()
    result = run_load(spec, workdir, name)
    wall_s = time.perf_counter() - wall0
    server_cpu_s = server.cpu_s() - cpu0
    onnx1 = metric_total(server, ONNX_CPU_COUNTER) if onnx0 is not None else None
    result["server_cpu_cores"] = server_cpu_s / wall_s
    # CPU time per request is what contention on a shared machine distorts least.
    requests = max(1, result["requests_total"])
    result["server_cpu_ms_per_request"] = 1000.0 * server_cpu_s / requests
    if onnx0 is not None and onnx1 is not None:
        # The counter covers the whole window, warm-up included, as the CPU figures do: same requests in both.
        result["onnx_cpu_ms_per_request"] = 1000.0 * (onnx1 - onnx0) / requests
        result["cpu_ms_outside_onnx_per_request"] = (
            result["server_cpu_ms_per_request"] - result["onnx_cpu_ms_per_request"]
        )
    if redis_server is not None:
        redis_cpu_s = _redis_cpu_s(redis_server) - redis0
        result["redis_cpu_cores"] = redis_cpu_s / wall_s
        result["redis_cpu_ms_per_request"] = 1000.0 * redis_cpu_s / max(1, result["requests_total"])
    # Everything the machine did meanwhile; minus server, client and Redis, this is what other processes took.
    result["machine_busy_cores"] = (machine_busy_s() - busy0) / wall_s
    return result


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "p50_ms": Summary.of([r["latency_ms"]["p50"] for r in runs]).to_json(),
        "p99_ms": Summary.of([r["latency_ms"]["p99"] for r in runs]).to_json(),
        "rps": Summary.of([r["rps"] for r in runs]).to_json(),
        "failed": sum(r["failed"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "server_cpu_cores": statistics.median(r["server_cpu_cores"] for r in runs),
        "client_cpu_cores": statistics.median(r["client_cpu_cores"] for r in runs),
        "machine_busy_cores": statistics.median(r["machine_busy_cores"] for r in runs),
    }
    out["server_cpu_ms_per_request"] = Summary.of([r["server_cpu_ms_per_request"] for r in runs]).to_json()
    for key in ("onnx_cpu_ms_per_request", "cpu_ms_outside_onnx_per_request"):
        if key in runs[0]:
            out[key] = Summary.of([r[key] for r in runs]).to_json()
    if "redis_cpu_cores" in runs[0]:
        out["redis_cpu_cores"] = statistics.median(r["redis_cpu_cores"] for r in runs)
        out["redis_cpu_ms_per_request"] = Summary.of([r["redis_cpu_ms_per_request"] for r in runs]).to_json()
    return out


def measure_points(
    specs: Mapping[str, LoadSpec],
    servers: Mapping[str, ServerProcess],
    redis_server: RedisServer,
    settings: RankBenchSettings,
    workdir: Path,
    log: StepLog,
    runs: Runs,
) -> None:
    """Every concurrency on every server of ``specs`` (named as in ``servers``; ``baseline`` uses Redis), alternating
    which goes first, ``settings.repeats`` times; each run is added to ``runs``."""
    names = tuple(specs)
    for repeat in range(settings.repeats):
        for i, concurrency in enumerate(settings.concurrencies):
            order = names if (repeat + i) % 2 == 0 else tuple(reversed(names))
            for name in order:
                spec = dataclasses.replace(specs[name], concurrency=concurrency)
                point = _one_point(
                    spec,
                    servers[name],
                    redis_server if name == "baseline" else None,
                    workdir,
                    f"rank-{name}-c{concurrency}-r{repeat}",
                )
                runs.setdefault((concurrency, name), []).append(point)
                log(
                    "  %-11s c=%-2d repeat %d: p50 %.2f ms, p99 %.2f ms, %.0f rps, %d failed (server %.2f cores, "
                    "%.2f CPU ms/req, %s outside ONNX; client %.2f cores)",
                    name,
                    concurrency,
                    repeat + 1,
                    point["latency_ms"]["p50"] or float("nan"),
                    point["latency_ms"]["p99"] or float("nan"),
                    point["rps"],
                    point["failed"],
                    point["server_cpu_cores"],
                    point["server_cpu_ms_per_request"],
                    f"{point['cpu_ms_outside_onnx_per_request']:.2f}"
                    if "cpu_ms_outside_onnx_per_request" in point
                    else "-",
                    point["client_cpu_cores"],
                )


def summarize_points(
    runs: Runs, concurrencies: tuple[int, ...], workers: Mapping[str, int], ceiling_rps: float | None
) -> list[dict[str, Any]]:
    """One entry per concurrency: each server's p50, p99 and rps (median, min, max over repeats), its CPU split,
    the liverank/baseline ratios and each liverank server's throughput over the dense-only ceiling."""
    entries = []
    for concurrency in concurrencies:
        entry: dict[str, Any] = {"concurrency": concurrency}
        for (c, name), point_runs in runs.items():
            if c == concurrency:
                entry[name] = _summarize(point_runs)
                if name in workers:
                    entry[name]["workers"] = workers[name]
                    rps = entry[name]["rps"]["median"]
                    entry[name]["rps_over_dense_ceiling"] = rps / ceiling_rps if ceiling_rps else None
        live, base = entry["liverank"], entry["baseline"]
        entry["ratios_liverank_over_baseline"] = {
            key: live[key]["median"] / base[key]["median"] if base[key]["median"] else None
            for key in ("rps", "p50_ms", "p99_ms")
        }
        entries.append(entry)
    return entries
