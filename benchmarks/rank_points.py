"""Ranking latency and throughput at each concurrency, the two servers alternating, with each process's CPU use."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liverank.benchmarks.load import LoadSpec, run_load
from liverank.benchmarks.redis_peer import RedisServer
from liverank.benchmarks.servers import machine_busy_s
from liverank.benchmarks.stats import Summary
from liverank.benchmarks.steplog import StepLog
from liverank.server_process import ServerProcess

if TYPE_CHECKING:
    from liverank.benchmarks.rank_bench import RankBenchSettings

SERVERS: tuple[str, ...] = ("liverank", "baseline")


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
    busy0, cpu0 = machine_busy_s(), server.cpu_s()
    redis0, wall0 = _redis_cpu_s(redis_server) if redis_server else 0.0, time.perf_counter()
    result = run_load(spec, workdir, name)
    wall_s = time.perf_counter() - wall0
    server_cpu_s = server.cpu_s() - cpu0
    result["server_cpu_cores"] = server_cpu_s / wall_s
    # CPU time per request is what contention on a shared machine distorts least.
    result["server_cpu_ms_per_request"] = 1000.0 * server_cpu_s / max(1, result["requests_total"])
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
    if "redis_cpu_cores" in runs[0]:
        out["redis_cpu_cores"] = statistics.median(r["redis_cpu_cores"] for r in runs)
        out["redis_cpu_ms_per_request"] = Summary.of([r["redis_cpu_ms_per_request"] for r in runs]).to_json()
    return out


def rank_points(
    specs: Mapping[str, LoadSpec],
    servers: Mapping[str, ServerProcess],
    redis_server: RedisServer,
    settings: RankBenchSettings,
    workdir: Path,
    log: StepLog,
) -> list[dict[str, Any]]:
    """One entry per concurrency: each server's p50, p99 and rps (median, min, max over repeats), and ratios."""
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for repeat in range(settings.repeats):
        for i, concurrency in enumerate(settings.concurrencies):
            order = SERVERS if (repeat + i) % 2 == 0 else tuple(reversed(SERVERS))
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
                    "  %-8s c=%-2d repeat %d: p50 %.2f ms, p99 %.2f ms, %.0f rps, %d failed (server %.2f cores, "
                    "client %.2f)",
                    name,
                    concurrency,
                    repeat + 1,
                    point["latency_ms"]["p50"] or float("nan"),
                    point["latency_ms"]["p99"] or float("nan"),
                    point["rps"],
                    point["failed"],
                    point["server_cpu_cores"],
                    point["client_cpu_cores"],
                )
    entries = []
    for concurrency in settings.concurrencies:
        entry: dict[str, Any] = {"concurrency": concurrency}
        for name in SERVERS:
            entry[name] = _summarize(runs[(concurrency, name)])
        live, base = entry["liverank"], entry["baseline"]
        entry["ratios_liverank_over_baseline"] = {
            key: live[key]["median"] / base[key]["median"] if base[key]["median"] else None
            for key in ("rps", "p50_ms", "p99_ms")
        }
        entries.append(entry)
    return entries
