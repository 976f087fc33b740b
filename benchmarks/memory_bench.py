"""``liverank bench memory``: how much memory the whole server takes with a pre-filled W-500 store.

The figure is PSS summed over the server's process tree (``ServerProcess.pss``: the master, the writer process, every
worker): a page shared by k processes counts 1/k in each, so the shared RAM tier in /dev/shm and LMDB's map count
once however many workers map them. Issue 11 bounds it: the whole server at 10M rows within 1.2x of the one-process
server it replaced, whatever the number of workers.

For each size: one W-500 bundle and one store, filled once as ``liverank bench rank`` fills its own (the largest
slots at ``size`` rows, every other slot at its W-500 cardinality). Each server gets a compacted LMDB copy of it
(``Environment.copy(compact=True)``: no server sees another's writes) in a data directory of its own, starts (its
RAM tier built), answers ``--requests`` W-500 requests, settles for ``--settle-s``, and is read: PSS with its
anon/file/shmem split, RSS summed over processes (shared pages counted once per process, for comparison), the
process count, the start-up time. One server at a time.

``--before PATH`` adds an earlier liverank checkout as a peer in the same run (e.g. ``git worktree add /tmp/before
354ee29``, its kernel built in place): its ``liverank serve`` runs with that tree first on ``PYTHONPATH`` and without
``--workers``, on its own copy of the same store. Ratios are quoted against it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import lmdb
import orjson
from rich.console import Console
from rich.table import Table

from liverank.benchmarks.machine import machine_info
from liverank.benchmarks.rank_fill import fill_stores
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.w500 import RequestMaker, make_tables
from liverank.benchmarks.workdir import run_dir, write_json
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.server_process import ServerProcess, process_status_bytes, process_tree, serve_command

_REPO = Path(__file__).resolve().parent.parent
_TOKEN = "bench-memory-token"
_BODIES = 64
_READY_TIMEOUT_S = 3600.0  # a 10M-row tier build on a loaded machine


def run(args: argparse.Namespace) -> int:
    before: Path | None = args.before
    if before is not None and not (before / "liverank" / "cli.py").exists():
        print(f"liverank bench memory: {before} is not a liverank source tree (no liverank/cli.py)", file=sys.stderr)
        return 2
    log = StepLog(quiet=args.quiet)
    result = measure(args, log)
    if args.json is not None:
        write_json(args.json, result)
    Console(width=None if sys.stdout.isatty() else 160).print(render(result))
    return 0


def measure(args: argparse.Namespace, log: StepLog) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "memory",
        "machine": machine_info(_REPO),
        "settings": {
            "sizes": list(args.sizes),
            "workers": list(args.workers),
            "before": None if args.before is None else str(args.before),
            "requests": args.requests,
            "settle_s": args.settle_s,
            "dim": args.dim,
            "seed": args.seed,
        },
        "sizes": [],
    }
    with run_dir(args.workdir, args.keep, "liverank-memory-bench-", log) as workdir:
        bundle = workdir / "bundle"
        manifest = build_synthetic_bundle(bundle, preset="w500", dim=args.dim, version="1", seed=args.seed)
        for size in args.sizes:
            size_dir = workdir / f"size-{size}"
            tables = make_tables(manifest, size, args.zipf_s, args.seed)
            log("size %s: filling %s rows", f"{size:,}", f"{tables.n_rows:,}")
            store = size_dir / "filled" / "store"
            fill = fill_stores(store, None, manifest, tables, args.dim, 250_000, log)
            maker = RequestMaker(manifest, tables, stream=1)
            bodies = [orjson.dumps(maker.make()) for _ in range(_BODIES)]
            peers: list[tuple[str, Path, int | None]] = []
            if args.before is not None:
                peers.append(("before", args.before, None))
            peers += [(f"{w} worker{'s' if w > 1 else ''}", _REPO, w) for w in args.workers]
            servers: list[dict[str, Any]] = []
            for name, tree, workers in peers:
                data_dir = size_dir / f"data-{len(servers)}"
                _copy_store(store, data_dir / "store")
                log("size %s: %s: starting (RAM tier build)", f"{size:,}", name)
                figures = _one_server(name, tree, workers, data_dir, bundle, bodies, args, size_dir)
                log(
                    "size %s: %s: PSS %.0f MB over %d processes (ready in %.0f s)",
                    f"{size:,}",
                    name,
                    figures["pss_bytes"] / 1e6,
                    figures["processes"],
                    figures["startup_s"],
                )
                servers.append(figures)
                shutil.rmtree(data_dir, ignore_errors=True)
            reference = servers[0]["pss_bytes"]
            for figures in servers:
                figures["pss_over_first"] = figures["pss_bytes"] / reference
            result["sizes"].append(
                {"largest_slot_rows": size, "rows_total": tables.n_rows, "fill": fill, "servers": servers}
            )
            shutil.rmtree(size_dir, ignore_errors=True)
    return result


def _copy_store(source: Path, target: Path) -> None:
    """A compacted copy (LMDB's own: consistent, and only the pages in use: the map file is sparse)."""
    target.mkdir(parents=True)
    env = lmdb.open(str(source), readonly=True, lock=False, max_dbs=64)
    try:
        env.copy(str(target), compact=True)
    finally:
        env.close()


def _one_server(
    name: str,
    tree: Path,
    workers: int | None,
    data_dir: Path,
    bundle: Path,
    bodies: list[bytes],
    args: argparse.Namespace,
    log_dir: Path,
) -> dict[str, Any]:
    extra = [] if workers is None else ["--workers", str(workers)]
    env = {**os.environ, "LIVERANK_ADMIN_TOKEN": _TOKEN}
    if tree != _REPO:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH", "")]))
    command = serve_command(data_dir, bundle, extra)
    server = ServerProcess(command, log_path=log_dir / f"serve-{data_dir.name}.log", env=env, cwd=tree)
    with server:
        server.start(timeout_s=_READY_TIMEOUT_S)
        with httpx.Client(base_url=server.url, timeout=120.0) as client:
            for i in range(args.requests):
                answer = client.post(
                    "/v1/rank", content=bodies[i % len(bodies)], headers={"content-type": "application/json"}
                )
                if answer.status_code != 200:
                    raise RuntimeError(f"{name}: /v1/rank answered {answer.status_code}: {answer.text[:300]}")
        time.sleep(args.settle_s)  # let background work after the requests (status reports, heap trims) finish
        pss = server.pss()
        if pss is None:
            raise RuntimeError(f"{name}: the server ended before its memory was read; see {server.log_path}")
        return {
            "server": name,
            "tree": str(tree),
            "workers": workers,
            "startup_s": server.startup_s,
            "pss_bytes": pss["Pss"],
            "pss_split_bytes": {k: v for k, v in pss.items() if k != "Pss"},
            "rss_sum_bytes": sum(process_status_bytes(pid) or 0 for pid in process_tree(server.pid or 0)),
            "processes": server.process_count(),
            "loadavg": list(os.getloadavg()),
        }


def render(result: dict[str, Any]) -> Table:
    m = result["machine"]
    table = Table(title=f"liverank bench memory, {m['date']}, {m['cores']} cores, {m['cpu_model']}")
    for column in ("rows (largest slot / total)", "server", "processes", "PSS", "vs first", "RSS summed", "ready"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for size in result["sizes"]:
        for figures in size["servers"]:
            table.add_row(
                f"{size['largest_slot_rows']:,} / {size['rows_total']:,}",
                figures["server"],
                str(figures["processes"]),
                f"{figures['pss_bytes'] / 1e6:,.0f} MB",
                f"{figures['pss_over_first']:.2f}x",
                f"{figures['rss_sum_bytes'] / 1e6:,.0f} MB",
                f"{figures['startup_s']:.0f} s",
            )
    return table
