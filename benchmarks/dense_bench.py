"""``liverank bench dense``: the W-500 dense tower alone, fp32 vs int8, whole first layer vs user side split out.

Four bundles of one synthetic W-500 network (same seed): fp32, fp32-split, int8, int8-split, each run through the
serving runner (``OnnxRunner``, the session options ``liverank serve`` uses) on the same 500-candidate requests.

- **Latency** (low load: one request at a time): ms per request for every variant at each ``LIVERANK_ONNX_THREADS``
  value, the variants alternating inside every repeat so that a busy neighbour slows all of them alike.
- **Saturation** (throughput): as many callers as cores run requests back to back (ONNX Runtime releases the GIL),
  requests per second for the split variants (what ships) at each thread count.
- What the split should save: the share of the tower's multiply-adds that the user part of the first layer holds.

Medians over ``--repeats`` runs with min and max; ratios against fp32 at one thread.
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from liverank.benchmarks.machine import SystemLoad, machine_info
from liverank.benchmarks.stats import Summary
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.workdir import run_dir, write_json
from liverank.exporter.synthetic import DEFAULT_HIDDEN, build_synthetic_bundle
from liverank.serving.bundle import load_bundle_dir
from liverank.serving.runner import OnnxRunner
from liverank.store.manifest import Manifest

VARIANTS: tuple[tuple[str, str, bool], ...] = (
    ("fp32", "fp32", False),
    ("fp32-split", "fp32", True),
    ("int8", "int8", False),
    ("int8-split", "int8", True),
)
SHIPPED = ("fp32-split", "int8-split")
REPO = Path(__file__).resolve().parent.parent


def predicted_split_saving(manifest: Manifest, hidden: tuple[int, ...]) -> float:
    """The fraction of the tower's per-candidate multiply-adds that the user part of the first layer holds
    (what computing it once per request removes; DeepFM's wide part and second-order term left aside)."""
    widths = [manifest.user_width + manifest.candidate_width, *hidden, len(manifest.heads)]
    total = sum(a * b for a, b in itertools.pairwise(widths))
    return manifest.user_width * hidden[0] / total


def _requests(manifest: Manifest, n_candidates: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((1, manifest.user_width), dtype=np.float32),
            rng.standard_normal((n_candidates, manifest.candidate_width), dtype=np.float32),
        )
        for _ in range(8)
    ]


def _latency_ms(runner: OnnxRunner, requests: list[tuple[np.ndarray, np.ndarray]], calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        user, candidates = requests[i % len(requests)]
        runner.run(user, candidates)
    return (time.perf_counter() - started) * 1000 / calls


def _throughput_rps(
    runner: OnnxRunner, requests: list[tuple[np.ndarray, np.ndarray]], callers: int, seconds: float
) -> float:
    counts = [0] * callers
    stop = threading.Event()

    def call(slot: int) -> None:
        i = slot
        while not stop.is_set():
            user, candidates = requests[i % len(requests)]
            runner.run(user, candidates)
            counts[slot] += 1
            i += 1

    threads = [threading.Thread(target=call, args=(slot,), daemon=True) for slot in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> int:
    log = StepLog(quiet=args.quiet)
    load = SystemLoad()
    callers = args.callers or os.cpu_count() or 2
    with run_dir(args.workdir, args.keep, "liverank-bench-dense-", log) as root:
        manifests: dict[str, Manifest] = {}
        runners: dict[tuple[str, int], OnnxRunner] = {}
        for name, precision, split in VARIANTS:
            log("building the %s bundle %s (dim %d, seed %d)", args.preset, name, args.dim, args.seed)
            manifests[name] = build_synthetic_bundle(
                root / name, preset=args.preset, dim=args.dim, seed=args.seed, precision=precision, split=split
            )
            bundle = load_bundle_dir(root / name)
            for threads in args.threads:
                runner = OnnxRunner.build(bundle, intra_op_threads=threads)
                runner.warm_up()
                runners[name, threads] = runner
        manifest = manifests["fp32"]
        requests = _requests(manifest, args.candidates, args.seed + 1)
        latency: dict[tuple[str, int], list[float]] = {key: [] for key in runners}
        for repeat in range(args.repeats):
            log("latency repeat %d/%d (%d calls per variant and thread count)", repeat + 1, args.repeats, args.calls)
            order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
            for key in order:
                latency[key].append(_latency_ms(runners[key], requests, args.calls))
        saturation: dict[tuple[str, int], list[float]] = {
            (name, threads): [] for name in SHIPPED for threads in args.threads
        }
        for repeat in range(args.repeats):
            log(
                "saturation repeat %d/%d (%d callers, %.1f s per point)",
                repeat + 1,
                args.repeats,
                callers,
                args.saturation_s,
            )
            for key, runs in saturation.items():
                runs.append(_throughput_rps(runners[key], requests, callers, args.saturation_s))
    parity = manifests["int8-split"].parity
    result: dict[str, Any] = {
        "benchmark": "dense",
        "machine": machine_info(REPO),
        "load": load.sample(),
        "settings": {
            "preset": args.preset,
            "dim": args.dim,
            "hidden": list(DEFAULT_HIDDEN[args.preset]),
            "candidates": args.candidates,
            "calls": args.calls,
            "repeats": args.repeats,
            "threads": list(args.threads),
            "saturation_callers": callers,
            "saturation_s": args.saturation_s,
            "seed": args.seed,
        },
        "predicted_split_saving": predicted_split_saving(manifest, DEFAULT_HIDDEN[args.preset]),
        "latency_ms": {f"{name}@{threads}": Summary.of(runs).to_json() for (name, threads), runs in latency.items()},
        "saturation_rps": {
            f"{name}@{threads}": Summary.of(runs).to_json() for (name, threads), runs in saturation.items()
        },
        "int8_parity": None if parity is None else parity.to_json(),
    }
    if args.json is not None:
        write_json(args.json, result)
    render(result, Console(width=None if os.isatty(1) else 160))
    return 0


def render(result: dict[str, Any], console: Console) -> None:
    settings = result["settings"]
    base = result["latency_ms"][f"fp32@{settings['threads'][0]}"]["median"]
    table = Table(
        title=f"dense tower, {settings['preset']}, {settings['candidates']} candidates: ms per request (one at a time)"
    )
    for column in ("variant", "threads", "median ms", "min", "max", "x fp32"):
        table.add_column(column)
    for key, summary in result["latency_ms"].items():
        name, threads = key.split("@")
        table.add_row(
            name,
            threads,
            f"{summary['median']:.3f}",
            f"{summary['min']:.3f}",
            f"{summary['max']:.3f}",
            f"{summary['median'] / base:.2f}",
        )
    console.print(table)
    saturated = Table(title=f"saturation: {settings['saturation_callers']} callers back to back, requests/s")
    for column in ("variant", "threads", "median rps", "min", "max"):
        saturated.add_column(column)
    for key, summary in result["saturation_rps"].items():
        name, threads = key.split("@")
        saturated.add_row(name, threads, f"{summary['median']:.0f}", f"{summary['min']:.0f}", f"{summary['max']:.0f}")
    console.print(saturated)
    console.print(
        f"predicted saving of the split (user share of the MLP's multiply-adds): {result['predicted_split_saving']:.1%}"
    )
    parity = result["int8_parity"]
    if parity is not None:
        worst = max(h["max_abs_diff"] for h in parity["heads"].values())
        console.print(
            f"int8 parity vs fp32 (random rows): top-{parity['k']} overlap {parity['topk_overlap_mean']:.4f} "
            f"(min {parity['topk_overlap_min']:.2f}), max abs diff {worst:.3g}"
        )
    console.print(f"load average {result['load']['load_avg_1_5_15']}, cpu busy {result['load']['cpu_busy_fraction']}")
