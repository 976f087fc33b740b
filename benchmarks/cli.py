"""``liverank bench``: run a benchmark, print a readable table and write the figures as JSON.

Subcommands: ``store`` (the embedding store against Redis, py-lmdb, numpy and a dict), ``rank`` (W-500 ranking
against a real ``liverank serve``, next to a FastAPI + Redis + ONNX Runtime baseline), ``dense`` (the dense tower
alone: fp32 vs int8, user side split, ONNX threads), ``memory`` (the whole server's PSS with a pre-filled store,
per worker count, beside an earlier checkout) and ``fill`` (not a benchmark: a data directory pre-filled with
W-500 rows for a server to start on, as the soak does). The arguments are defined
here; each subcommand's module (``run(args) -> int``) is imported only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

_SUFFIXES = {"k": 1_000, "m": 1_000_000}


def _count(text: str) -> int:
    """An integer, optionally with a k or M suffix (``10k``, ``1M``) or underscores."""
    raw = text.strip().lower().replace("_", "")
    factor = _SUFFIXES.get(raw[-1:], 1)
    try:
        value = int(raw[:-1] if factor > 1 else raw) * factor
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _fraction(text: str) -> float:
    """A share in [0, 1)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a share in [0, 1) is needed, got {text!r}")
    return value


def _counts(text: str) -> tuple[int, ...]:
    return tuple(_count(part) for part in text.split(",") if part.strip())


def _dists(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [n for n in names if n not in ("uniform", "zipf")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"distributions are uniform and zipf, got {text!r}")
    return names


if TYPE_CHECKING:  # argparse's action class is generic only to type checkers
    _SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _benchmark_parser(subparsers: _SubParsers, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    """One benchmark's subcommand with the options every benchmark shares: where the figures go, the seed and
    distribution of the generated ids, the run directory, the Redis peer, progress lines. ``run(args)`` of
    ``liverank.benchmarks.<name>_command`` runs it."""
    p = subparsers.add_parser(
        name, help=help, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.set_defaults(command_module=f"liverank.benchmarks.{name}_command")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures here")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of popular ids")
    p.add_argument("--seed", type=int, default=20_240_601, help="seed of every generator")
    p.add_argument("--workdir", type=Path, default=None, help="where the run directory goes (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (stores, logs, load results)")
    p.add_argument("--redis-server", default=None, help="redis-server executable (default: from PATH)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _add_store_parser(subparsers: _SubParsers) -> None:
    p = _benchmark_parser(
        subparsers,
        "store",
        help="embedding store lookups, delta apply and open time against Redis, py-lmdb, numpy and a dict",
        description="Build stores of each size, then measure every peer side by side in one run.",
    )
    p.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="also write markdown tables here")
    p.add_argument("--sizes", type=_counts, default=(1_000_000, 10_000_000), help="table sizes (keys), comma list")
    p.add_argument("--batches", type=_counts, default=(1_000, 10_000), help="lookup batch sizes, comma list")
    p.add_argument("--dists", type=_dists, default=("uniform", "zipf"), help="id distributions, comma list")
    p.add_argument("--repeats", type=_count, default=5, help="runs per figure (median, min, max)")
    p.add_argument("--keys-per-run", type=_count, default=300_000, help="keys each peer looks up per run")
    p.add_argument("--dim", type=_count, default=32, help="embedding dimension (float32)")
    p.add_argument("--delta-rows", type=_count, default=10_000, help="rows per delta in the apply benchmark")
    p.add_argument("--new-id-fraction", type=float, default=0.05, help="share of never-seen ids in a delta")
    p.add_argument("--deltas-per-run", type=_count, default=10, help="deltas applied per apply run")
    p.add_argument("--build-delta-rows", type=_count, default=100_000, help="rows per delta when building")
    p.add_argument("--open-repeats", type=_count, default=3, help="reopens timed per size")
    p.add_argument("--idle-s", type=float, default=0.0, help="idle pause before first lookups (0: skip)")


def _default_workers() -> tuple[int, ...]:
    cores = len(os.sched_getaffinity(0))
    return (1,) if cores == 1 else (1, cores)


def _add_rank_parser(subparsers: _SubParsers) -> None:
    p = _benchmark_parser(
        subparsers,
        "rank",
        help="W-500 ranking through liverank serve vs FastAPI + Redis MGET + ONNX Runtime; deltas and swaps under load",
        description="Fill both servers with the same rows, then measure ranking, live deltas and bundle swaps.",
    )
    p.add_argument("--sizes", type=_counts, default=(1_000_000, 10_000_000), help="rows of the largest slots")
    p.add_argument("--dim", type=_count, default=32, help="embedding dimension (16 or 32, float32)")
    p.add_argument("--concurrency", type=_counts, default=(1, 4, 16), help="closed-loop clients, comma list")
    p.add_argument(
        "--workers",
        type=_counts,
        default=_default_workers(),
        help="liverank serve --workers values, comma list: one server each, in turn (default: 1 and every core)",
    )
    p.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per point")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds before each point")
    p.add_argument("--repeats", type=_count, default=3, help="runs per figure (median, min, max)")
    p.add_argument("--bodies", type=_count, default=256, help="distinct request bodies cycled by the clients")
    p.add_argument("--live-concurrency", type=_count, default=8, help="ranking clients during deltas and swaps")
    p.add_argument(
        "--live-fraction",
        type=_fraction,
        default=0.7,
        help="ranking load during deltas and swaps: this share of the best measured rps, open loop (0: closed loop)",
    )
    p.add_argument("--onnx-threads", type=_count, default=1, help="intra-op threads of both servers' ONNX sessions")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="dense tower of both servers' bundles")
    p.add_argument("--fill-delta-rows", type=_count, default=250_000, help="rows per delta when filling the store")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator's HTTP client")


def _add_profile_parser(subparsers: _SubParsers) -> None:
    # Listed here for `liverank bench --help`; main() hands the rest of the command line to the module as it is.
    subparsers.add_parser(
        "profile", help="CPU per ranking stage, the numpy reference path beside the served one (`profile --help`)"
    )


def _add_dense_parser(subparsers: _SubParsers) -> None:
    p = subparsers.add_parser(
        "dense",
        help="the W-500 dense tower alone: fp32 vs int8, first layer whole vs user side split; ONNX threads",
        description="ms per request one at a time, and requests/s with every core busy, for each variant.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures here")
    p.add_argument("--preset", choices=("w500", "tiny"), default="w500", help="synthetic network")
    p.add_argument("--dim", type=_count, default=32, help="embedding dimension")
    p.add_argument("--candidates", type=_count, default=500, help="candidates per request")
    p.add_argument("--threads", type=_counts, default=(1, 2), help="LIVERANK_ONNX_THREADS values, comma list")
    p.add_argument("--repeats", type=_count, default=7, help="runs per figure (median, min, max)")
    p.add_argument("--calls", type=_count, default=60, help="requests per latency run")
    p.add_argument("--callers", type=int, default=None, help="concurrent callers at saturation (default: cores)")
    p.add_argument("--saturation-s", type=float, default=2.0, help="seconds per saturation point")
    p.add_argument("--seed", type=int, default=0, help="weight and input seed")
    p.add_argument("--workdir", type=Path, default=None, help="where the run directory goes (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (the four bundles)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(command_module="liverank.benchmarks.dense_bench")


def _add_fill_parser(subparsers: _SubParsers) -> None:
    p = subparsers.add_parser(
        "fill",
        help="pre-fill a new data directory with W-500 rows (the ids the load test draws) before a server starts",
        description="Fill DATA_DIR/store with the rows of a W-500 bundle's slots: --rows in each of the largest slots "
        "(user_id, item_id), every other slot at its W-500 cardinality; ids 0..n-1, as the load test draws them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", type=Path, required=True, help="the server's --data-dir (must hold no store yet)")
    p.add_argument("--bundle", type=Path, required=True, help="the bundle the server will start with (its slots)")
    p.add_argument("--rows", type=_count, required=True, help="rows in each largest slot (10M, 1M, ...)")
    p.add_argument("--map-size-bytes", type=_count, default=64 * 1024**3, help="the server's --map-size-bytes")
    p.add_argument("--chunk-rows", type=_count, default=250_000, help="rows per delta while filling")
    p.add_argument("--seed", type=int, default=0, help="seed of the vectors")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the fill figures here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(command_module="liverank.benchmarks.prefill")


def _add_memory_parser(subparsers: _SubParsers) -> None:
    p = subparsers.add_parser(
        "memory",
        help="the whole server's memory (PSS over its processes) with a pre-filled W-500 store, per worker count",
        description="Fill a W-500 store per size, start a server on a copy of it for each --workers value (and an "
        "earlier checkout with --before), send W-500 requests, and read PSS summed over the server's processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=_counts, default=(1_000_000, 10_000_000), help="rows of the largest slots")
    p.add_argument("--workers", type=_counts, default=_default_workers(), help="liverank serve --workers values")
    p.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="TREE",
        help="an earlier liverank source tree (e.g. a git worktree, kernel built in place) measured as the first peer",
    )
    p.add_argument("--requests", type=_count, default=300, help="W-500 requests each server answers before the read")
    p.add_argument("--settle-s", type=float, default=5.0, help="pause between the last request and the read")
    p.add_argument("--dim", type=_count, default=32, help="embedding dimension")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of popular ids")
    p.add_argument("--seed", type=int, default=20_240_601, help="seed of the rows and requests")
    p.add_argument("--workdir", type=Path, default=None, help="where the run directory goes (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(command_module="liverank.benchmarks.memory_bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liverank bench", description=__doc__)
    subparsers = parser.add_subparsers(dest="benchmark", metavar="<benchmark>", required=True)
    _add_store_parser(subparsers)
    _add_rank_parser(subparsers)
    _add_profile_parser(subparsers)
    _add_dense_parser(subparsers)
    _add_fill_parser(subparsers)
    _add_memory_parser(subparsers)
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["profile"]:  # its own options: liverank.benchmarks.rank_profile parses them
        return int(importlib.import_module("liverank.benchmarks.rank_profile").main(argv[1:]))
    args = build_parser().parse_args(argv)
    # Imported only now: `liverank bench --help` and argument errors need none of the benchmark's dependencies.
    run: Callable[[argparse.Namespace], int] = importlib.import_module(args.command_module).run
    return run(args)
