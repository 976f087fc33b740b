"""``liverank bench rank``: run the ranking benchmark from parsed arguments, write JSON, print tables."""

from __future__ import annotations

import argparse
import shutil
import sys

from rich.console import Console

from liverank.benchmarks.rank_bench import RankBenchSettings
from liverank.benchmarks.rank_bench import run as run_benchmark
from liverank.benchmarks.rank_report import render_rich
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.workdir import write_json


def run(args: argparse.Namespace) -> int:
    """Run the ranking benchmark with parsed ``liverank bench rank`` arguments."""
    redis_server = args.redis_server or shutil.which("redis-server")
    if redis_server is None:
        print("liverank bench rank: redis-server is not on PATH (pass --redis-server)", file=sys.stderr)
        return 2
    if args.dim not in (16, 32):
        print("liverank bench rank: W-500 uses dim 16 or 32", file=sys.stderr)
        return 2
    settings = RankBenchSettings(
        sizes=args.sizes,
        dim=args.dim,
        concurrencies=args.concurrency,
        workers=args.workers,
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        repeats=args.repeats,
        bodies=args.bodies,
        live_concurrency=args.live_concurrency,
        live_fraction=args.live_fraction,
        onnx_threads=args.onnx_threads,
        precision=args.precision,
        fill_delta_rows=args.fill_delta_rows,
        zipf_s=args.zipf_s,
        seed=args.seed,
        client=args.client,
        workdir=args.workdir,
        keep=args.keep,
        redis_server=redis_server,
    )
    result = run_benchmark(settings, StepLog(quiet=args.quiet))
    if args.json is not None:
        write_json(args.json, result)
    render_rich(result, Console(width=None if sys.stdout.isatty() else 200))
    return 0
