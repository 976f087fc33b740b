"""Readable tables of a store benchmark result: rich on the terminal, or markdown for BENCHMARKS.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from liverank.benchmarks.lookup_bench import RATIOS
from liverank.benchmarks.peers import ALL_PEERS

_LABELS = {p.name: p.label for p in ALL_PEERS}
_SHORT = {
    "redis_mget": "Redis",
    "lmdb_getmulti": "getmulti",
    "liverank_lmdb": "LMDB-only",
    "python_dict": "dict",
    "numpy_probe": "numpy",
    "kernel_probe": "kernel",
    "liverank_hot": "hot",
}


@dataclass(frozen=True)
class ReportTable:
    """A titled grid of already formatted cells."""

    title: str
    headers: list[str]
    rows: list[list[str]]


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _spread(summary: dict[str, Any]) -> str:
    return f"{_num(summary['median'])} ({_num(summary['min'])}–{_num(summary['max'])})"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 else f"{value / 1024**2:.1f} MiB"


def header_lines(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    v = m["versions"]
    git = m["git"]
    commit = (git["commit"] or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    return [
        f"date {m['date']} · {m['cpu_model']} · {m['cores']} cores · {_bytes(m['memory_bytes'])} RAM · "
        f"kernel {m['kernel']}",
        f"commit {commit} · seed {result['seed']} · Python {v['python']} · numpy {v['numpy']} · lmdb {v['lmdb']} · "
        f"redis-py {v['redis']} · redis-server {m.get('redis_server')} · compiled kernel "
        f"{'yes' if result['method']['kernel_available'] else 'NO'}",
        f"repeats {result['settings']['repeats']} · {result['settings']['keys_per_run']:,} keys per run · "
        f"dim {result['settings']['dim']} float32 · Zipf s={result['settings']['zipf_s']} · "
        f"idle pause {result['settings']['idle_s']} s · wall {result.get('wall_s', 0):.0f} s",
    ]


def _lookup_table(size: dict[str, Any]) -> ReportTable:
    entries = size["lookups"]
    names = [p.name for p in ALL_PEERS if p.name in entries[0]["ns_per_key"]]
    rows = [[e["dist"], f"{e['batch']:,}"] + [_spread(e["ns_per_key"][n]) for n in names] for e in entries]
    return ReportTable(
        f"Lookups, {size['n_keys']:,} keys: ns/key, median (min–max)",
        ["ids", "batch", *(_LABELS[n] for n in names)],
        rows,
    )


def _ratio_table(size: dict[str, Any]) -> ReportTable:
    entries = size["lookups"]
    ratios = [(a, b) for a, b in RATIOS if f"{a}/{b}" in entries[0]["ratios"]]
    rows = [[e["dist"], f"{e['batch']:,}"] + [f"{e['ratios'][f'{a}/{b}']:.1f}x" for a, b in ratios] for e in entries]
    return ReportTable(
        f"Lookup ratios, {size['n_keys']:,} keys: median / median (how many times slower)",
        ["ids", "batch", *(f"{_SHORT[a]} / {_SHORT[b]}" for a, b in ratios)],
        rows,
    )


def _delta_table(size: dict[str, Any]) -> ReportTable:
    rows = []
    for e in size["deltas"]:
        reader = e.get("reader_ns_per_key")
        sources = e.get("reader_sources") or {}
        total = sum(sources.values())
        fallback = f"{100 * sources.get('lmdb', 0) / total:.1f} %" if total else "—"
        rows.append(
            [
                e["durability"],
                "yes" if e["reader"] else "no",
                _spread(e["rows_per_s"]),
                f"{_num(e['apply_ms']['median'])} / {_num(e['apply_ms']['max'])}",
                _spread(reader) if reader else "—",
                fallback if e["reader"] else "—",
            ]
        )
    return ReportTable(
        f"Delta apply, {size['n_keys']:,} keys ({size['deltas'][0]['rows_per_delta']:,}-row deltas)",
        ["durability", "reader", "rows/s median (min–max)", "apply ms median / max", "reader ns/key", "reader→LMDB"],
        rows,
    )


def _open_table(size: dict[str, Any]) -> ReportTable:
    samples = [("after build (warm cache)", size["open_after_build"])]
    samples += [(f"reopen {i + 1} (warm cache)", o) for i, o in enumerate(size["open"])]
    if "idle" in size and "open_after_idle" in size["idle"]:
        samples.append((f"after {size['idle']['idle_s']:g} s idle", size["idle"]["open_after_idle"]))
    rows = [
        [name, f"{o['open_s']:.2f}", f"{o['first_lookup_ms']:.2f}", f"{o['total_s']:.2f}", f"{o['rows']:,}"]
        for name, o in samples
    ]
    return ReportTable(
        f"Open to first lookup, {size['n_keys']:,} keys",
        ["when", "open s", "first lookup ms", "total s", "rows"],
        rows,
    )


def _setup_table(size: dict[str, Any]) -> ReportTable:
    b, r, w = size["build"], size["redis_load"], size["lmdb_only_open"]
    rows = [
        ["store build (apply, process)", f"{b['rows_per_s']:,.0f} rows/s", f"{b['delta_rows']:,}-row deltas"],
        ["LMDB used", _bytes(b["lmdb_used_bytes"]), ""],
        ["Redis load (pipelined MSET)", f"{r['rows_per_s']:,.0f} rows/s", ""],
        ["Redis used memory", _bytes(r.get("used_memory_bytes")), ""],
        ["open with ram_budget_rows=0", f"{w['open_s']:.2f} s", f"source {w['source']}"],
    ]
    for phase, load in size.get("system_load", {}).items():
        busy = load["cpu_busy_fraction"]
        rows.append(
            [
                f"machine CPU busy during {phase}",
                "—" if busy is None else f"{100 * busy:.0f} %",
                f"all processes; load avg {load['load_avg_1_5_15'][0]:.1f} at the end",
            ]
        )
    return ReportTable(f"Setup, {size['n_keys']:,} keys", ["what", "figure", "note"], rows)


def _idle_table(size: dict[str, Any]) -> ReportTable:
    idle = size["idle"]
    rows = [[_LABELS[name], f"{f['batch_ms']:.2f}", _num(f["ns_per_key"])] for name, f in idle["first_batch"].items()]
    return ReportTable(
        f"First lookup after {idle['idle_s']:g} s idle, {size['n_keys']:,} keys ({idle['batch']:,} uniform ids)",
        ["peer", "batch ms", "ns/key"],
        rows,
    )


def _targets_table(result: dict[str, Any]) -> ReportTable:
    rows = [
        [f"{size['n_keys']:,}", t["name"], t["target"], _num(t["value"]), "met" if t["met"] else "MISSED"]
        for size in result["sizes"]
        for t in size["targets"]
    ]
    return ReportTable("Targets", ["keys", "figure", "target", "measured (median)", ""], rows)


def tables(result: dict[str, Any]) -> list[ReportTable]:
    out: list[ReportTable] = []
    for size in result["sizes"]:
        out += [_lookup_table(size), _ratio_table(size), _delta_table(size), _open_table(size), _setup_table(size)]
        if "idle" in size:
            out.append(_idle_table(size))
    targets = _targets_table(result)
    if targets.rows:
        out.append(targets)
    return out


def render_rich(result: dict[str, Any], console: Console) -> None:
    for line in header_lines(result):
        console.print(line, highlight=False)
    for table in tables(result):
        grid = RichTable(title=table.title, title_justify="left")
        for name in table.headers:
            grid.add_column(name, justify="left" if name in ("ids", "when", "what", "peer", "figure") else "right")
        for row in table.rows:
            grid.add_row(*row)
        console.print(grid)


def render_markdown(result: dict[str, Any]) -> str:
    parts = ["\n".join(f"- {line}" for line in header_lines(result))]
    for table in tables(result):
        lines = [f"**{table.title}**", "", "| " + " | ".join(table.headers) + " |"]
        lines.append("|" + "|".join("---" for _ in table.headers) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
