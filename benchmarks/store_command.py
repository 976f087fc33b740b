"""``liverank bench store``: run the store benchmark from parsed arguments, write JSON (and markdown), print tables."""

from __future__ import annotations

import argparse
import shutil
import sys

from rich.console import Console

from liverank.benchmarks.report import render_markdown, render_rich
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.store_bench import StoreBenchSettings
from liverank.benchmarks.store_bench import run as run_benchmark
from liverank.benchmarks.workdir import write_json


def run(args: argparse.Namespace) -> int:
    """Run the store benchmark with parsed ``liverank bench store`` arguments."""
    redis_server = args.redis_server or shutil.which("redis-server")
    if redis_server is None:
        print("liverank bench store: redis-server is not on PATH (pass --redis-server)", file=sys.stderr)
        return 2
    if not 0 <= args.new_id_fraction < 1:
        print("liverank bench store: --new-id-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    settings = StoreBenchSettings(
        sizes=args.sizes,
        batch_sizes=args.batches,
        dists=args.dists,
        repeats=args.repeats,
        keys_per_run=args.keys_per_run,
        dim=args.dim,
        zipf_s=args.zipf_s,
        seed=args.seed,
        delta_rows=args.delta_rows,
        new_id_fraction=args.new_id_fraction,
        deltas_per_run=args.deltas_per_run,
        build_delta_rows=args.build_delta_rows,
        open_repeats=args.open_repeats,
        idle_s=args.idle_s,
        workdir=args.workdir,
        keep=args.keep,
        redis_server=redis_server,
    )
    result = run_benchmark(settings, StepLog(quiet=args.quiet))
    if args.json is not None:
        write_json(args.json, result)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(result))
    render_rich(result, Console(width=None if sys.stdout.isatty() else 200))
    return 0
