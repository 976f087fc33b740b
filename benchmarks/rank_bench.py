"""``liverank bench rank``: W-500 ranking against a real ``liverank serve``, next to the baseline most teams build.

For each store size: fill a fresh liverank store (directly, before its server starts) and Redis with the same rows;
start ``liverank serve`` and the baseline app (FastAPI + Redis MGET + ONNX Runtime + pydantic) as child processes;
check that both rank the same requests the same way; then measure closed-loop latency and throughput at each
concurrency, alternating the two servers; then, on liverank only, D-10k deltas under ranking load and bundle swaps
under ranking load. The load generator is a separate process on the same 2 cores (its CPU use is recorded).
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
import statistics
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import orjson

from liverank.benchmarks.d10k import DeltaStream
from liverank.benchmarks.load import ClientKind, LoadSpec, write_bodies
from liverank.benchmarks.machine import machine_info
from liverank.benchmarks.rank_ceiling import dense_inputs, measure_ceiling
from liverank.benchmarks.rank_fill import fill_stores
from liverank.benchmarks.rank_live import LiveSetup, deltas_under_load, swaps_under_load
from liverank.benchmarks.rank_points import Runs, measure_points, summarize_points
from liverank.benchmarks.rank_targets import evaluate_targets
from liverank.benchmarks.redis_peer import RedisServer
from liverank.benchmarks.servers import baseline_server, liverank_server, serve_has_workers_flag
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.w500 import RequestMaker, W500Tables, make_tables, to_rows
from liverank.benchmarks.workdir import run_dir
from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.server_process import ServerProcess
from liverank.serving.settings import Settings
from liverank.store.manifest import Manifest

RESULT_SCHEMA = 1
ADMIN_TOKEN = "bench-admin-token"
_REPO = Path(__file__).resolve().parent.parent
_EXTRA_PACKAGES = ("onnxruntime", "fastapi", "starlette", "uvicorn", "pydantic", "httpx", "orjson")
_CHECKED_BODIES = 8
_CEILING_BODIES = 64


@dataclass(frozen=True)
class RankBenchSettings:
    """Everything that shapes a run; recorded with the results."""

    sizes: tuple[int, ...] = (1_000_000, 10_000_000)
    dim: int = 32
    concurrencies: tuple[int, ...] = (1, 4, 16)
    workers: tuple[int, ...] = (1, 2)  # liverank serve --workers, one server per value in turn
    duration_s: float = 20.0
    warmup_s: float = 2.0
    repeats: int = 3
    bodies: int = 256
    live_concurrency: int = 8
    # Deltas and swaps run under ranking load at this share of the last server's best measured rps (open loop,
    # ``live_concurrency`` clients); 0: closed loop at ``live_concurrency`` clients, as saturated as they make it.
    live_fraction: float = 0.7
    onnx_threads: int = 1
    precision: str = "fp32"
    fill_delta_rows: int = 250_000
    zipf_s: float = 1.1
    seed: int = 20_240_601
    client: ClientKind = "raw"
    ready_timeout_s: float = 900.0
    workdir: Path | None = None
    keep: bool = False
    redis_server: str = "redis-server"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["workdir"] = None if self.workdir is None else str(self.workdir)
        return out


@dataclass(frozen=True)
class Bundles:
    """The bundle that goes live at start-up, and the archives of the later versions uploaded under load."""

    live_dir: Path
    manifest: Manifest
    swaps: list[tuple[str, bytes]]


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _EXTRA_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def server_settings(settings: RankBenchSettings) -> dict[str, Any]:
    defaults = Settings.model_fields
    fast_http = {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")}
    return {
        "liverank": {
            "command": "liverank serve --workers N (one server per N in turn; 'liverank' is the first)",
            "workers": settings.workers[0],
            "workers_list": list(settings.workers),
            "onnx_threads": settings.onnx_threads,
            "gc_freeze": defaults["gc_freeze"].default,
            "durability": defaults["durability"].default,
            "ram_budget_rows": defaults["ram_budget_rows"].default,
            "uvicorn_extras_installed": fast_http,
        },
        "baseline": {
            "command": "python -m liverank.benchmarks.baseline_app (one uvicorn process)",
            "workers": 1,
            "onnx_threads": settings.onnx_threads,
            "gc_freeze": False,
            "endpoint": "sync def (FastAPI thread pool), pydantic request and response models",
            "redis": "one MGET per request, redis-py connection pool of 64",
            "uvicorn_extras_installed": fast_http,
        },
    }


def _run_dir(settings: RankBenchSettings, log: StepLog) -> AbstractContextManager[Path]:
    return run_dir(settings.workdir, settings.keep, "liverank-rank-bench-", log)


def make_bundles(root: Path, settings: RankBenchSettings) -> Bundles:
    """Version 1 (live at start-up) and one later version per repeat (same schema, other weights) to swap in."""
    live_dir = root / "v1"
    manifest = build_synthetic_bundle(
        live_dir, preset="w500", dim=settings.dim, version="1", seed=settings.seed, precision=settings.precision
    )
    swaps = []
    for i in range(settings.repeats):
        version = str(i + 2)
        path = root / f"v{version}"
        build_synthetic_bundle(
            path,
            preset="w500",
            dim=settings.dim,
            version=version,
            seed=settings.seed + i + 1,
            precision=settings.precision,
        )
        swaps.append((version, archive_bundle(path)))
    return Bundles(live_dir, manifest, swaps)


def run(settings: RankBenchSettings, log: StepLog) -> dict[str, Any]:
    """Run the whole benchmark and return the JSON-ready result."""
    started = time.perf_counter()
    machine = machine_info(_REPO)
    machine["versions"].update(_versions())
    result: dict[str, Any] = {
        "benchmark": "rank",
        "schema": RESULT_SCHEMA,
        "date": machine["date"],
        "commit": machine["git"]["commit"],
        "machine": machine,
        "seed": settings.seed,
        "settings": settings.to_json(),
        "server_settings": server_settings(settings),
        "method": {
            "workload": "W-500: 1 user (6 features, 50-id history), 500 candidates x 20 features, k=50, Zipf(1.1)",
            "load": "closed loop: N clients in one separate process (asyncio, keep-alive HTTP/1.1 connections, "
            f"{settings.client} client), each sending its next request when the previous one is answered",
            "cpu_note": "the load generator runs on the same 2 cores as the server (and Redis): it competes for CPU; "
            "client_cpu_cores says how much it took",
            "alternation": "each repeat measures every concurrency on both servers, alternating which goes first",
            "fill": "liverank store filled directly (EmbeddingStore.apply of deltas, key order) before the server "
            "starts; Redis holds the same rows under <slot>:<id> as raw float32 bytes",
            "deltas": "D-10k: 10k rows/s pushed with ?wait=visible while ranking at the live concurrency, alternating "
            "with windows without deltas",
            "swap": "a new bundle version uploaded to POST /admin/bundles halfway through a window of ranking load",
        },
        "sizes": [],
    }
    with _run_dir(settings, log) as workdir, RedisServer(settings.redis_server, workdir / "redis") as redis_server:
        result["machine"]["redis_server"] = redis_server.info()["redis_version"]
        log("building bundles (w500, dim %d, %d swap versions)", settings.dim, settings.repeats)
        bundles = make_bundles(workdir / "bundles", settings)
        for size in settings.sizes:
            result["sizes"].append(_bench_size(size, settings, bundles, redis_server, workdir, log))
            gc.collect()
    result["wall_s"] = time.perf_counter() - started
    return result


def _write_bodies(manifest: Manifest, tables: W500Tables, count: int, size_dir: Path) -> tuple[Path, Path]:
    maker = RequestMaker(manifest, tables, stream=1)
    docs = [maker.make() for _ in range(count)]
    liverank, baseline = size_dir / "bodies-liverank.jsonl", size_dir / "bodies-baseline.jsonl"
    write_bodies(liverank, [orjson.dumps(d) for d in docs])
    write_bodies(baseline, [orjson.dumps(to_rows(d)) for d in docs])
    return liverank, baseline


def _bench_size(
    size: int,
    settings: RankBenchSettings,
    bundles: Bundles,
    redis_server: RedisServer,
    workdir: Path,
    log: StepLog,
) -> dict[str, Any]:
    label = f"{size:,}"
    size_dir = workdir / f"size-{size}"
    size_dir.mkdir()
    manifest = bundles.manifest
    log("size %s: generating ids and %d request bodies", label, settings.bodies)
    tables = make_tables(manifest, size, settings.zipf_s, settings.seed)
    bodies_liverank, bodies_baseline = _write_bodies(manifest, tables, settings.bodies, size_dir)
    out: dict[str, Any] = {"largest_slot_rows": size, "rows_total": tables.n_rows, "loadavg_at_start": _loadavg()}
    log("size %s: filling liverank and Redis with %s rows", label, f"{tables.n_rows:,}")
    client = redis_server.client()
    try:
        out["fill"] = fill_stores(
            size_dir / "data" / "store", client, manifest, tables, settings.dim, settings.fill_delta_rows, log
        )
    finally:
        client.close()
    gc.collect()
    log("size %s: dense-only ceiling (ONNX Runtime alone on the server's exact inputs)", label)
    bodies = bodies_liverank.read_bytes().split(b"\n")[: min(settings.bodies, _CEILING_BODIES)]
    inputs = dense_inputs(size_dir / "data" / "store", bundles.live_dir, [b for b in bodies if b])
    out["dense_ceiling"] = measure_ceiling(bundles.live_dir, inputs, settings.onnx_threads)
    del inputs
    log(
        "size %s: ONNX Runtime %.2f CPU ms per request: ceiling %.0f rps on %d cores",
        label,
        out["dense_ceiling"]["onnx_cpu_ms_per_request"],
        out["dense_ceiling"]["rps"] or 0.0,
        out["dense_ceiling"]["cores"],
    )
    workers = _runnable_workers(settings.workers, log)
    out["workers_skipped"] = [w for w in settings.workers if w not in workers]
    names = {("liverank" if i == 0 else f"liverank_w{w}"): w for i, w in enumerate(workers)}
    pass_flag = serve_has_workers_flag()
    base = baseline_server(bundles.live_dir, redis_server.port, settings.onnx_threads, size_dir)
    runs: Runs = {}
    out["startup_s"], out["server_rss_bytes_at_start"] = {}, {}
    with base:
        base.start(timeout_s=settings.ready_timeout_s)
        out["startup_s"]["baseline"] = base.startup_s
        out["server_rss_bytes_at_start"]["baseline"] = base.rss_bytes()
        for i, (name, n_workers) in enumerate(names.items()):
            # One liverank server at a time: they share the data directory (one writer per store).
            live = liverank_server(
                size_dir / "data",
                bundles.live_dir,
                ADMIN_TOKEN,
                settings.onnx_threads,
                size_dir,
                workers=n_workers if pass_flag else None,
            )
            with live:
                log("size %s: starting liverank serve with %d worker(s) (RAM tier warm-up)", label, n_workers)
                live.start(timeout_s=settings.ready_timeout_s)
                out["startup_s"][name] = live.startup_s
                out["server_rss_bytes_at_start"][name] = live.rss_bytes()
                if i == 0:
                    out["answers"] = check_answers(live, base, bodies_liverank, bodies_baseline)
                    log("size %s: servers up; top-k agreement %.3f", label, out["answers"]["top_k_overlap"])
                specs = {
                    peer: LoadSpec(
                        server.port,
                        path,
                        peer_bodies,
                        1,
                        settings.duration_s,
                        settings.warmup_s,
                        client=settings.client,
                    )
                    for peer, server, path, peer_bodies in (
                        (name, live, "/v1/rank", bodies_liverank),
                        ("baseline", base, "/rank", bodies_baseline),
                    )
                }
                measure_points(specs, {name: live, "baseline": base}, redis_server, settings, size_dir, log, runs)
                if i == len(names) - 1:
                    out["live_workers"] = n_workers
                    best = max((statistics.median(r["rps"] for r in v) for (_, n), v in runs.items() if n == name))
                    out["live_rate_rps"] = settings.live_fraction * best if settings.live_fraction > 0 else None
                    _live_phases(out, live, settings, tables, manifest, bodies_liverank, bundles, size_dir, label, log)
                    out["server_rss_bytes_at_end"] = {name: live.rss_bytes(), "baseline": base.rss_bytes()}
    out["rank"] = summarize_points(runs, settings.concurrencies, names, out["dense_ceiling"]["rps"])
    out["loadavg_at_end"] = _loadavg()
    out["targets"] = evaluate_targets(out)
    if not settings.keep:
        shutil.rmtree(size_dir / "data", ignore_errors=True)
    return out


def _runnable_workers(requested: tuple[int, ...], log: StepLog) -> tuple[int, ...]:
    """The worker counts this ``liverank serve`` can run: all of them if it has ``--workers``, else only 1."""
    if serve_has_workers_flag():
        return requested
    runnable = tuple(w for w in requested if w == 1) or (1,)
    skipped = [w for w in requested if w != 1]
    if skipped:
        log("liverank serve has no --workers flag: skipping worker counts %s", skipped)
    return runnable


def _live_phases(
    out: dict[str, Any],
    live: ServerProcess,
    settings: RankBenchSettings,
    tables: W500Tables,
    manifest: Manifest,
    bodies: Path,
    bundles: Bundles,
    size_dir: Path,
    label: str,
    log: StepLog,
) -> None:
    """D-10k deltas, then bundle swaps, under ranking load, on ``live``."""
    with httpx.Client(base_url=live.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120.0) as admin:
        setup = LiveSetup(
            live.port,
            admin,
            bodies,
            settings.live_concurrency,
            settings.duration_s,
            settings.warmup_s,
            settings.repeats,
            size_dir,
            settings.client,
            out["live_rate_rps"],
        )
        load = (
            f"{out['live_rate_rps']:.0f} rps open loop ({settings.live_fraction:.0%} of the best measured)"
            if out["live_rate_rps"]
            else "closed loop"
        )
        log("size %s: D-10k deltas under ranking load (%d clients, %s)", label, settings.live_concurrency, load)
        out["deltas"] = deltas_under_load(setup, DeltaStream(tables, settings.dim, manifest.schema_hash), log)
        log("size %s: bundle swaps under ranking load", label)
        out["swap"] = swaps_under_load(setup, bundles.swaps, log)


def _loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine shows up here."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def check_answers(live: ServerProcess, base: ServerProcess, liverank: Path, baseline: Path) -> dict[str, Any]:
    """Both servers rank the same requests with the same rows and the same network: their top-k should agree."""
    live_bodies = liverank.read_bytes().split(b"\n")[:_CHECKED_BODIES]
    base_bodies = baseline.read_bytes().split(b"\n")[:_CHECKED_BODIES]
    overlaps: list[float] = []
    same_order = 0
    with httpx.Client(timeout=60.0) as client:
        for a, b in zip(live_bodies, base_bodies, strict=True):
            got_live = client.post(f"{live.url}/v1/rank", content=a, headers={"content-type": "application/json"})
            got_base = client.post(f"{base.url}/rank", content=b, headers={"content-type": "application/json"})
            if got_live.status_code != 200 or got_base.status_code != 200:
                raise RuntimeError(
                    f"a check request failed: liverank {got_live.status_code} {got_live.text[:300]}, "
                    f"baseline {got_base.status_code} {got_base.text[:300]}"
                )
            ids_live = [item["index"] for item in got_live.json()["items"]]
            ids_base = [item["index"] for item in got_base.json()["items"]]
            overlaps.append(len(set(ids_live) & set(ids_base)) / max(1, len(ids_live)))
            same_order += ids_live == ids_base
    return {"requests": len(overlaps), "top_k_overlap": sum(overlaps) / len(overlaps), "same_order": same_order}
