"""Readable tables of a ranking benchmark result (rich), with ratios and targets beside the figures."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from liverank.benchmarks.rank_targets import evaluate_targets, liverank_peers


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _spread(summary: dict[str, Any]) -> str:
    return f"{_num(summary['median'])} ({_num(summary['min'])}–{_num(summary['max'])})"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def header_lines(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    v = m["versions"]
    s = result["settings"]
    git = m["git"]
    commit = (git["commit"] or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    live, base = result["server_settings"]["liverank"], result["server_settings"]["baseline"]
    workers = ", ".join(str(w) for w in live.get("workers_list", [live["workers"]]))
    return [
        f"date {m['date']} · {m['cpu_model']} · {m['cores']} cores · kernel {m['kernel']} · commit {commit} · "
        f"seed {result['seed']}",
        f"Python {v['python']} · onnxruntime {v.get('onnxruntime')} · fastapi {v.get('fastapi')} · uvicorn "
        f"{v.get('uvicorn')} · pydantic {v.get('pydantic')} · redis-server {m.get('redis_server')}",
        f"W-500, dim {s['dim']} float32 · {s['repeats']} repeats of {s['duration_s']:g} s (+{s['warmup_s']:g} s "
        f"warm-up) per point, median (min–max) · {s['bodies']} distinct request bodies",
        f"liverank: --workers {workers}, ONNX threads {live['onnx_threads']}, gc.freeze {live['gc_freeze']}, "
        f"durability {live['durability']} · baseline: {base['workers']} worker, ONNX threads "
        f"{base['onnx_threads']}, gc.freeze {base['gc_freeze']}",
        f"NOTE: the load generator is a separate process on the SAME {m['cores']} cores: it competes with the server "
        "for CPU "
        "(its share is the 'client' column); 'cores all' is the whole machine's busy CPU during the point (server + "
        "client + Redis + any other process); 'r' is Redis; CPU ms/req is the server's CPU time per request, all its "
        "processes (workers + writer) from /proc (the figure contention distorts least); ONNX ms/req is the server's "
        "liverank_onnx_cpu_seconds_total per request, outside ms/req the rest.",
    ]


def _rank_table(size: dict[str, Any]) -> Table:
    ceiling = size.get("dense_ceiling") or {}
    title = (
        f"Ranking W-500, largest slots {size['largest_slot_rows']:,} rows ({size['rows_total']:,} rows in all): "
        f"latency ms, throughput rps; l/b = liverank/baseline; dense-only ceiling {_num(ceiling.get('rps'))} rps "
        f"({ceiling.get('cores')} cores / {_num(ceiling.get('onnx_cpu_ms_per_request'))} ONNX Runtime CPU ms per "
        "request, measured in this run)"
    )
    if size.get("workers_skipped"):
        skipped = ", ".join(str(w) for w in size["workers_skipped"])
        title += f"; NOT measured: --workers {skipped} (this liverank serve has no --workers flag)"
    table = Table(title=title, title_justify="left")
    for header in ("c", "server", "workers", "p50", "p99", "rps", "rps l/b", "of ceiling", "CPU ms/req"):
        table.add_column(header, justify="right")
    for header in ("ONNX ms/req", "outside ms/req", "cores srv", "cores client", "cores all", "failed"):
        table.add_column(header, justify="right")
    for e in size["rank"]:
        base = e["baseline"]
        for name in [*liverank_peers(e), "baseline"]:
            f = e[name]
            is_base = name == "baseline"
            cpu = _num(f["server_cpu_ms_per_request"]["median"])
            cores = f"{f['server_cpu_cores']:.2f}"
            if is_base:
                cpu += f"+{_num(f['redis_cpu_ms_per_request']['median'])}r"
                cores += f"+{f.get('redis_cpu_cores', 0):.2f}r"
            rps_ratio = None if is_base or not base["rps"]["median"] else f["rps"]["median"] / base["rps"]["median"]
            onnx, outside = f.get("onnx_cpu_ms_per_request"), f.get("cpu_ms_outside_onnx_per_request")
            table.add_row(
                str(e["concurrency"]),
                name,
                str(f.get("workers", 1)),
                _spread(f["p50_ms"]),
                _spread(f["p99_ms"]),
                _spread(f["rps"]),
                _ratio(rps_ratio),
                _ratio(f.get("rps_over_dense_ceiling")),
                cpu,
                "—" if onnx is None else _num(onnx["median"]),
                "—" if outside is None else _num(outside["median"]),
                cores,
                f"{f['client_cpu_cores']:.2f}",
                f"{f['machine_busy_cores']:.2f}",
                str(f["failed"]),
            )
    return table


def _live_table(size: dict[str, Any]) -> Table:
    table = Table(title="Live changes under ranking load (liverank)", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    d = size.get("deltas")
    if d:
        c, s = d["push_to_visible_client_ms"], d["push_to_visible_server_ms"]
        table.add_row(
            f"D-10k push-to-visible, client (POST ?wait=visible), {c['count']} deltas of {d['rows_per_delta']:,} rows",
            f"p50 {_num(c['p50'])} ms · p99 {_num(c['p99'])} ms · max {_num(c['max'])} ms · {c['failed']} failed",
        )
        table.add_row(
            f"push-to-visible, server (/admin/status, {s['count']} deltas)",
            f"p50 {_num(s['p50'])} ms · p99 {_num(s['p99'])} ms · max {_num(s['max'])} ms",
        )
        load = _live_load(d)
        table.add_row(f"rank p99 without deltas ({load})", f"{_spread(d['rank_p99_without_ms'])} ms")
        table.add_row(f"rank p99 with deltas ({load})", f"{_spread(d['rank_p99_with_ms'])} ms")
        table.add_row("p99 inflation while deltas apply", f"{d['p99_inflation_pct']:+.1f} %")
    sw = size.get("swap")
    if sw:
        for entry in sw["swaps"]:
            around = entry["around_swap_ms"]
            table.add_row(
                f"swap to version {entry['version']} ({_live_load(sw)})",
                f"HTTP {entry['upload_status']} in {entry['swap_s']:.2f} s · live {entry['live_version_after']} · "
                f"{entry['failed_requests']} failed · max latency around it {_num(around['max'])} ms",
            )
    table.add_row(
        "start-up to ready (liverank / baseline)",
        f"{_num(size['startup_s']['liverank'])} s / {_num(size['startup_s']['baseline'])} s",
    )
    table.add_row("top-k agreement liverank vs baseline", f"{size['answers']['top_k_overlap']:.3f}")
    return table


def _targets_table(size: dict[str, Any]) -> Table:
    table = Table(title="Targets", title_justify="left")
    for header in ("target", "bound", "measured", "met"):
        table.add_column(header)
    for t in evaluate_targets(size):
        table.add_row(t["name"], t["target"], f"{_num(t['value'])} {t['unit']}", "yes" if t["met"] else "NO")
    return table


def render_rich(result: dict[str, Any], console: Console) -> None:
    for line in header_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    for size in result["sizes"]:
        console.print()
        console.print(_rank_table(size))
        console.print(_live_table(size))
        console.print(_targets_table(size))


def _live_load(phase: dict[str, Any]) -> str:
    """The ranking load a live phase ran under: open loop at a rate, or closed loop."""
    rate = phase.get("rate_rps")
    return f"c={phase['concurrency']}" if rate is None else f"{rate:.0f} rps over c={phase['concurrency']}"
