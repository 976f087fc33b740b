"""The demo's live terminal dashboard (rich), or a progress line every few seconds when output is not a terminal."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from liverank.trainer.sync import SyncStats
from liverank.trainer.traffic import ServerScore


@dataclass(frozen=True)
class Snapshot:
    """Everything the dashboard shows at one moment."""

    elapsed_s: float
    duration_s: float
    events: int
    events_per_s: float
    sim_minutes: float
    sync: SyncStats
    backlog: int
    scores: dict[str, ServerScore]
    rank_rps: dict[str, float]
    auc_window_s: float
    auc: dict[str, float | None]


def _fmt(value: float | None, spec: str = ".3f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render(snap: Snapshot) -> Table:
    table = Table(title=f"liverank demo  {snap.elapsed_s:5.0f} / {snap.duration_s:.0f} s", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("events trained", f"{snap.events:,}  ({snap.events_per_s:,.0f}/s)")
    table.add_row("simulated time", f"{snap.sim_minutes:.1f} min")
    table.add_row(
        "deltas pushed (rows)", f"{snap.sync.deltas_pushed} ({snap.sync.rows_pushed:,})  backlog {snap.backlog}"
    )
    p50, p99 = snap.sync.visible_percentile_ms(50), snap.sync.visible_percentile_ms(99)
    table.add_row("push-to-visible p50 / p99", f"{_fmt(p50, '.1f', ' ms')} / {_fmt(p99, '.1f', ' ms')}")
    table.add_row("bundles pushed", str(snap.sync.bundles_pushed))
    for name, score in snap.scores.items():
        latency = _fmt(score.latency_percentile_ms(99), ".1f", " ms")
        table.add_row(
            f"rank {name}: rps / p99 / failures", f"{snap.rank_rps.get(name, 0.0):.1f} / {latency} / {score.failures}"
        )
    fresh, frozen = snap.auc.get("fresh"), snap.auc.get("frozen")
    margin = None if fresh is None or frozen is None else fresh - frozen
    table.add_row(
        f"rolling AUC ({snap.auc_window_s:.0f} s) fresh / frozen",
        f"[bold green]{_fmt(fresh)}[/] / [yellow]{_fmt(frozen)}[/]  (margin {_fmt(margin, '+.3f')})",
    )
    return table


def progress_line(snap: Snapshot) -> str:
    fresh, frozen = snap.auc.get("fresh"), snap.auc.get("frozen")
    return (
        f"[{snap.elapsed_s:4.0f}/{snap.duration_s:.0f} s] events {snap.events:,} ({snap.events_per_s:,.0f}/s), "
        f"deltas {snap.sync.deltas_pushed}, visible p99 {_fmt(snap.sync.visible_percentile_ms(99), '.0f', ' ms')}, "
        f"bundles {snap.sync.bundles_pushed}, AUC fresh {_fmt(fresh)} frozen {_fmt(frozen)}"
    )


def console_is_live(console: Console) -> bool:
    return console.is_terminal and not console.is_dumb_terminal
