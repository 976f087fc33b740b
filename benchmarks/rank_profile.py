"""Where one W-500 ranking request spends its time inside ``liverank serve`` (no HTTP): a stage breakdown.

Fills a store (directly, as the rank benchmark does), opens the server's ``Services`` exactly as ``liverank serve``
does (RAM tier warm-up, bundle, ranker), then runs requests through the same steps as ``rank_json`` and
``Ranker.rank_parsed``, timing each stage: JSON decode, request parsing, lookup planning, store lookup, input
assembly, ONNX, blend + top-k, answer building, response JSON. The stages call the serving functions themselves;
their sum is checked against timing ``rank_json`` whole. A cProfile listing of ``rank_json`` follows.

Run: ``python -m liverank.benchmarks.rank_profile --size 1M [--json PATH]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
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

from liverank.benchmarks.rank_fill import fill_stores
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.w500 import RequestMaker, make_tables
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.api.routes_rank import rank_json
from liverank.serving.ranker import (
    RankedItem,
    RankResult,
    _ages,
    _assemble,
    _id_at,
    _item_id_column,
    _plan_lookups,
    _slot_ages,
    _top_k,
)
from liverank.serving.request import parse_rank_request
from liverank.serving.services import Services
from liverank.serving.settings import Settings

STAGES = ("json_decode", "parse", "plan", "lookup", "assemble", "onnx", "blend_topk", "answer", "json_encode")


def _staged(services: Services, body: bytes, clock: Callable[[], float]) -> dict[str, float]:
    """One request through the stages of ``rank_json`` (minus metrics), seconds per stage."""
    t: list[float] = [clock()]
    doc = orjson.loads(body)
    t.append(clock())
    live = services.model_slot.current()
    request = parse_rank_request(doc, live.manifest, services.ranker._limits)
    t.append(clock())
    segments, per_slot = _plan_lookups(request)
    t.append(clock())
    now_ms = time.time_ns() // 1_000_000
    lookup = services.store.lookup_many(per_slot, now_ms=now_ms)
    t.append(clock())
    user = _assemble(live.manifest, "user", request.user, segments, lookup, 1)
    candidates = _assemble(live.manifest, "candidate", request.candidates, segments, lookup, request.n_candidates)
    t.append(clock())
    heads = live.runner.run(user, candidates)
    t.append(clock())
    score = np.zeros(request.n_candidates, dtype=np.float32)
    for head, weight in request.blend.items():
        score += np.float32(weight) * heads[head]
    top = _top_k(score, request.k)
    t.append(clock())
    id_column = _item_id_column(request)
    items = [
        RankedItem(
            index=int(i),
            id=None if id_column is None else _id_at(id_column, int(i)),
            score=float(score[i]),
            heads={name: float(values[i]) for name, values in heads.items()},
        )
        for i in top
    ]
    age_max, age_median = _ages(lookup, now_ms)
    result = RankResult(
        items=items,
        dense_version=live.version,
        sparse_seq=lookup.applied_seq,
        generation=lookup.generation,
        unseen_by_slot={slot: got.n_unseen for slot, got in lookup.slots.items()},
        ids_by_slot={slot: len(got.unseen) for slot, got in lookup.slots.items()},
        embedding_age_max_s=age_max,
        embedding_age_median_s=age_median,
        embedding_age_max_s_by_slot=_slot_ages(lookup, now_ms),
        lookup_s=0.0,
        dense_s=0.0,
        source=lookup.source,
    )
    t.append(clock())
    orjson.dumps(result.to_json())
    t.append(clock())
    return {stage: t[i + 1] - t[i] for i, stage in enumerate(STAGES)}


def profile(services: Services, bodies: list[bytes], rounds: int) -> dict[str, Any]:
    for body in bodies[:20]:  # warm caches and ONNX Runtime's arenas
        rank_json(services, body)
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    cpu_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    whole: list[float] = []
    cpu_whole: list[float] = []
    for i in range(rounds):
        body = bodies[i % len(bodies)]
        for stage, seconds in _staged(services, body, time.perf_counter).items():
            per_stage[stage].append(seconds)
        # Thread CPU time (ONNX Runtime with one intra-op thread runs on the calling thread): robust to contention.
        for stage, seconds in _staged(services, body, time.thread_time).items():
            cpu_stage[stage].append(seconds)
        t0, c0 = time.perf_counter(), time.thread_time()
        rank_json(services, body)
        whole.append(time.perf_counter() - t0)
        cpu_whole.append(time.thread_time() - c0)
    medians_us = {stage: statistics.median(v) * 1e6 for stage, v in per_stage.items()}
    cpu_medians_us = {stage: statistics.median(v) * 1e6 for stage, v in cpu_stage.items()}
    means_us = {stage: statistics.fmean(v) * 1e6 for stage, v in per_stage.items()}
    total_mean = sum(means_us.values())
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(min(rounds, 100)):
        rank_json(services, bodies[i % len(bodies)])
    profiler.disable()
    listing = io.StringIO()
    pstats.Stats(profiler, stream=listing).sort_stats("tottime").print_stats(18)
    return {
        "rounds": rounds,
        "stage_median_us": medians_us,
        "stage_mean_us": means_us,
        "stage_thread_cpu_median_us": cpu_medians_us,
        "stage_share_of_mean": {stage: means_us[stage] / total_mean for stage in STAGES},
        "sum_of_stage_means_us": total_mean,
        "rank_json_median_us": statistics.median(whole) * 1e6,
        "rank_json_p99_us": float(np.percentile(whole, 99)) * 1e6,
        "rank_json_thread_cpu_median_us": statistics.median(cpu_whole) * 1e6,
        "cprofile_tottime_top": listing.getvalue(),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m liverank.benchmarks.rank_profile", description=__doc__)
    p.add_argument("--size", type=int, default=1_000_000, help="rows of the largest slots")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--bodies", type=int, default=64)
    p.add_argument("--onnx-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=20_240_601)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
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
        services = Services.open(settings)
        try:
            log("profiling %d requests", args.rounds)
            result = profile(services, bodies, args.rounds)
        finally:
            services.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.update(size=args.size, dim=args.dim, onnx_threads=args.onnx_threads)
    for stage in STAGES:
        median_us, mean_us = result["stage_median_us"][stage], result["stage_mean_us"][stage]
        share = 100 * result["stage_share_of_mean"][stage]
        cpu_us = result["stage_thread_cpu_median_us"][stage]
        print(
            f"{stage:<12} median {median_us:8.1f} us  mean {mean_us:8.1f} us  {share:5.1f} %  "
            f"CPU median {cpu_us:8.1f} us"
        )
    print(
        f"sum of stage means {result['sum_of_stage_means_us']:.0f} us; rank_json whole: median "
        f"{result['rank_json_median_us']:.0f} us, p99 {result['rank_json_p99_us']:.0f} us, thread CPU "
        f"{result['rank_json_thread_cpu_median_us']:.0f} us"
    )
    print(result["cprofile_tottime_top"])
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
