"""Where one W-500 ranking request spends its time inside ``liverank serve`` (no HTTP): a stage breakdown.

Fills a store (directly, as the rank benchmark does), opens the server's ``Services`` exactly as ``liverank serve``
does (RAM tier warm-up, bundle, ranker), then runs requests through the same steps as ``rank_json`` and
``Ranker.rank_parsed``, timing each stage: JSON decode, request parsing, lookup planning, store lookup, input
assembly, ONNX, blend + top-k, answer building, response JSON. Two paths, alternating request by request on the
same bodies: "after" calls the serving functions themselves, "before" the path as it was before issue 11
(``rank_reference``: numpy id conversion, a Python boolean scan, reduceat pooling, per-item answer objects). The
"before" parse stage leaves out the request validation (names, lengths, limits: tens of microseconds), so the gain
it shows is a lower bound.
``rank_json`` is also timed whole (with its metrics), and a cProfile listing of it follows.

Run: ``liverank bench profile --size 1000000 [--json PATH]``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from liverank.benchmarks import rank_reference
from liverank.benchmarks.rank_fill import fill_stores
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.w500 import RequestMaker, make_tables
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.api.routes_rank import rank_json
from liverank.serving.ranker import (
    _assemble,
    _plan_lookups,
    _top_k,
    blend,
    inputs_from_lookup,
    rank_result,
    read_inputs_direct,
)
from liverank.serving.request import parse_rank_request
from liverank.serving.server import prepare_server
from liverank.serving.services import Services
from liverank.serving.settings import Settings
from liverank.store import EmbeddingStore, Lookup

STAGES = (
    "json_decode",
    "parse",
    "plan",
    "lookup",
    "assemble",
    "read_into",
    "onnx",
    "blend_topk",
    "answer",
    "json_encode",
)
PATHS = ("before", "general", "after")
Clock = Callable[[], float]


def _staged_served(services: Services, body: bytes, clock: Clock, *, direct: bool) -> list[float]:
    """One request through the serving path's stages (``rank_json`` minus metrics); clock readings. ``direct``: the
    one-pass read (``read_inputs_direct``: stage ``read_into``, ages included) where the store can answer that way,
    else the general read (``lookup_many`` and assembly: stages ``plan``, ``lookup``, ``assemble``; ages in
    ``answer``)."""
    t: list[float] = [clock()]
    doc = orjson.loads(body)
    t.append(clock())
    live = services.model_slot.current()
    request = parse_rank_request(doc, live.manifest, services.ranker._limits)
    t.append(clock())
    now_ms = time.time_ns() // 1_000_000
    inputs = read_inputs_direct(services.store, live.manifest, request, now_ms) if direct else None
    if inputs is not None:
        t += [t[-1]] * 3 + [clock()]
        user, candidates = inputs.user, inputs.candidates
    else:
        segments, per_slot = _plan_lookups(request)
        t.append(clock())
        lookup = services.store.lookup_many(per_slot, now_ms=now_ms)
        t.append(clock())
        user = _assemble(live.manifest, "user", request.user, segments, lookup, 1)
        candidates = _assemble(live.manifest, "candidate", request.candidates, segments, lookup, request.n_candidates)
        t += [clock()] * 2
    heads = live.runner.run(user, candidates)
    t.append(clock())
    score = blend(request, heads)
    top = _top_k(score, request.k)
    t.append(clock())
    if inputs is None:
        inputs = inputs_from_lookup(user, candidates, lookup, now_ms)
    doc_out = rank_result(live, request, inputs, heads, score, top, 0.0, 0.0, 0.0).to_json()
    t.append(clock())
    orjson.dumps(doc_out)
    t.append(clock())
    return t


def _staged_before(services: Services, body: bytes, clock: Clock) -> list[float]:
    """The same request through the path as it was before issue 11 (``rank_reference``); clock readings."""
    t: list[float] = [clock()]
    doc = orjson.loads(body)
    t.append(clock())
    live = services.model_slot.current()
    request = rank_reference.parse(doc, live.manifest)  # conversion only: the old validation is not timed
    t.append(clock())
    segments, per_slot = _plan_lookups(request)
    t.append(clock())
    now_ms = time.time_ns() // 1_000_000
    lookup = services.store.lookup_many(per_slot, now_ms=now_ms)
    t.append(clock())
    user = rank_reference.assemble(live.manifest, "user", request.user, segments, lookup, 1)
    candidates = rank_reference.assemble(
        live.manifest, "candidate", request.candidates, segments, lookup, request.n_candidates
    )
    t += [clock()] * 2  # no read_into stage
    heads = live.runner.run(user, candidates)
    t.append(clock())
    score = blend(request, heads)
    top = _top_k(score, request.k)
    t.append(clock())
    _ages_before(lookup, now_ms)
    doc_out = rank_reference.answer(live, request, lookup, score, heads, top)
    t.append(clock())
    orjson.dumps(doc_out)
    t.append(clock())
    return t


def _ages_before(lookup: Lookup, now_ms: int) -> None:
    """The answer's ages as the serving path computed them before: per slot, then over all slots."""
    for got in lookup.slots.values():
        seen = got.updated_at_ms[~got.unseen]
        if seen.size:
            (now_ms - int(seen.min())) / 1000.0
    times = [got.updated_at_ms[~got.unseen] for got in lookup.slots.values()]
    ages_s = (now_ms - np.concatenate(times)) / 1000.0
    float(ages_s.max()), float(np.median(ages_s))


_PATHS: dict[str, Callable[[Services, bytes, Clock], list[float]]] = {
    "before": _staged_before,
    "general": functools.partial(_staged_served, direct=False),
    "after": functools.partial(_staged_served, direct=True),
}


def profile(services: Services, bodies: list[bytes], rounds: int) -> dict[str, Any]:
    """Both paths on the same requests, alternating request by request: median wall and thread-CPU time per
    stage (thread CPU: ONNX Runtime with one intra-op thread runs on the calling thread; robust to contention)."""
    for body in bodies[:20]:  # warm caches and ONNX Runtime's arenas
        rank_json(services, body)
        _staged_before(services, body, time.perf_counter)
    wall: dict[str, dict[str, list[float]]] = {path: {stage: [] for stage in STAGES} for path in PATHS}
    cpu: dict[str, dict[str, list[float]]] = {path: {stage: [] for stage in STAGES} for path in PATHS}
    whole: list[float] = []
    cpu_whole: list[float] = []
    for i in range(rounds):
        body = bodies[i % len(bodies)]
        for path, staged in _PATHS.items():
            for clock, into in ((time.perf_counter, wall[path]), (time.thread_time, cpu[path])):
                t = staged(services, body, clock)
                for j, stage in enumerate(STAGES):
                    into[stage].append(t[j + 1] - t[j])
        t0, c0 = time.perf_counter(), time.thread_time()
        rank_json(services, body)
        whole.append(time.perf_counter() - t0)
        cpu_whole.append(time.thread_time() - c0)
    result: dict[str, Any] = {"rounds": rounds}
    for path in PATHS:
        cpu_us = {stage: statistics.median(v) * 1e6 for stage, v in cpu[path].items()}
        result[path] = {
            "stage_median_us": {stage: statistics.median(v) * 1e6 for stage, v in wall[path].items()},
            "stage_thread_cpu_median_us": cpu_us,
            "thread_cpu_outside_onnx_us": sum(v for stage, v in cpu_us.items() if stage != "onnx"),
        }
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(min(rounds, 100)):
        rank_json(services, bodies[i % len(bodies)])
    profiler.disable()
    listing = io.StringIO()
    pstats.Stats(profiler, stream=listing).sort_stats("tottime").print_stats(18)
    result.update(
        rank_json_median_us=statistics.median(whole) * 1e6,
        rank_json_p99_us=float(np.percentile(whole, 99)) * 1e6,
        rank_json_thread_cpu_median_us=statistics.median(cpu_whole) * 1e6,
        cprofile_tottime_top=listing.getvalue(),
    )
    return result


def _print_table(result: dict[str, Any]) -> None:
    cpu = {path: result[path]["stage_thread_cpu_median_us"] for path in PATHS}
    wall = {path: result[path]["stage_median_us"] for path in PATHS}
    header = "".join(f"{path + ' CPU us':>15}" for path in PATHS)
    print(f"{'stage':<12}{header}{'general wall us':>17}{'after wall us':>15}")
    for stage in STAGES:
        print(
            f"{stage:<12}"
            + "".join(f"{cpu[path][stage]:15.1f}" for path in PATHS)
            + f"{wall['general'][stage]:17.1f}{wall['after'][stage]:15.1f}"
        )
    outside = ", ".join(f"{path} {result[path]['thread_cpu_outside_onnx_us']:.0f} us" for path in PATHS)
    print(
        f"CPU outside ONNX (sum of stage medians): {outside}; rank_json whole (serving path, with metrics): median "
        f"{result['rank_json_median_us']:.0f} us, p99 {result['rank_json_p99_us']:.0f} us, thread CPU "
        f"{result['rank_json_thread_cpu_median_us']:.0f} us"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="liverank bench profile", description=__doc__)
    p.add_argument("--size", type=int, default=1_000_000, help="rows of the largest slots")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--bodies", type=int, default=64)
    p.add_argument("--onnx-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=20_240_601)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--tier",
        choices=("shared", "local"),
        default="shared",
        help="shared: a worker of `liverank serve` over the shared tier (served configuration); local: a standalone "
        "app's own RAM tier (the one-pass read does not apply: after = general)",
    )
    args = p.parse_args(argv)
    log = StepLog()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="liverank-rank-profile-", dir=args.workdir))
    try:
        manifest = build_synthetic_bundle(root / "bundle", preset="w500", dim=args.dim, seed=args.seed)
        tables = make_tables(manifest, args.size, 1.1, args.seed)
        log("filling %s rows", f"{tables.n_rows:,}")
        fill_stores(root / "data" / "store", None, manifest, tables, args.dim, 250_000, log)
        maker = RequestMaker(manifest, tables, stream=1)
        bodies = [orjson.dumps(maker.make()) for _ in range(args.bodies)]
        settings = Settings.model_validate(
            {
                "data_dir": root / "data",
                "bundle": root / "bundle",
                "open_admin": True,
                "onnx_threads": args.onnx_threads,
            }
        )
        tier_dir = None
        if args.tier == "shared":
            # As a worker of ``liverank serve``: the bundle made live once, the shared tier built by a publishing
            # store (the writer's part), then this process opens the worker's services over the mapped tier.
            tier_dir = Path(tempfile.mkdtemp(prefix="liverank-profile-tier-", dir="/dev/shm"))
            prepare_server(settings)
            log("building the shared tier")
            EmbeddingStore.open(
                settings.store_path, map_size_bytes=settings.map_size_bytes, tier="publish", shared_tier_dir=tier_dir
            ).close()
            settings = settings.model_copy(
                # The worker's watch for its master (gone: the worker ends) watches this process's parent.
                update={"role": "worker", "shared_tier_dir": tier_dir, "master_pid": os.getppid()}
            )
            settings.workers_path.mkdir(parents=True, exist_ok=True)
        services = Services.open(settings)
        try:
            log("profiling %d requests", args.rounds)
            result = profile(services, bodies, args.rounds)
        finally:
            services.close()
            if tier_dir is not None:
                shutil.rmtree(tier_dir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.update(size=args.size, dim=args.dim, onnx_threads=args.onnx_threads, tier=args.tier)
    _print_table(result)
    print(result["cprofile_tottime_top"])
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
