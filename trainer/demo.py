"""``liverank demo``: a model that keeps learning, served live, against the same model frozen.

1. A trainer warms up on the first part of the synthetic short-video stream, exports bundle v1 (ONNX, parity
   checked) and a full sparse snapshot.
2. Two real servers start on an LMDB store each: *fresh* and *frozen*; both get v1 and the snapshot.
3. The trainer keeps learning from the stream; every ``--sparse-sync-s`` the rows it touched go to *fresh* as a
   delta (pushed with ``?wait=visible``), every ``--dense-sync-s`` a new dense bundle. *frozen* gets nothing more.
4. Simulated users rank on both servers; their answers are scored against the stream's hidden ground truth.

A dashboard shows events/s, deltas and push-to-visible latency, rank rps and p99, and the rolling AUC of fresh
and frozen. At the end: a summary on the terminal, ``summary.json`` and ``auc.png`` in ``--out``. The stream runs
in simulated time, ``--sim-speed`` simulated seconds per wall-clock second (default 10), so two minutes of demo
cover twenty minutes of a feed: hundreds of new items arrive and some go viral.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from liverank.exporter.deltas import DeltaBuilder, snapshot_deltas
from liverank.exporter.onnx_export import export_bundle
from liverank.exporter.push import PushClient
from liverank.trainer.dashboard import Snapshot, console_is_live, progress_line, render
from liverank.trainer.demo_report import write_chart, write_summary
from liverank.trainer.features import short_video_manifest
from liverank.trainer.online import OnlineTrainer, TrainerConfig
from liverank.trainer.servers import LiverankServer
from liverank.trainer.sync import Pusher
from liverank.trainer.synthetic_stream import ShortVideoStream
from liverank.trainer.traffic import TrafficGenerator

log = logging.getLogger(__name__)
AUC_WINDOW_S = 20.0
SERIES_STEP_S = 10.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liverank demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=120.0, help="how long to serve and learn (default 120)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sparse-sync-s", type=float, default=5.0, help="seconds between sparse deltas (default 5)")
    p.add_argument("--dense-sync-s", type=float, default=60.0, help="seconds between dense bundles (default 60)")
    p.add_argument("--sim-speed", type=float, default=10.0, help="simulated seconds per wall-clock second")
    p.add_argument("--warmup-sim-s", type=float, default=600.0, help="simulated seconds trained before serving")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rank-rate", type=float, default=10.0, help="ranking requests per second, per server")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--out", type=Path, default=None, help="results directory (default results/demo-<time>)")
    return p


class Demo:
    """One demo run; ``run`` returns the summary."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        out: Path,
        console: Console,
        *,
        stop_when: Callable[[Snapshot], bool] | None = None,
    ) -> None:
        self.args = args
        self.stop_when = stop_when
        self.workdir = workdir
        self.out = out
        self.console = console
        self.manifest = short_video_manifest(dim=args.dim, version="1")
        self.stream = ShortVideoStream(seed=args.seed)
        self.trainer = OnlineTrainer(self.manifest, TrainerConfig(seed=args.seed))
        self.batches = self.stream.batches(args.batch_size)
        self.events = 0

    def _train_until_sim_ms(self, until_ms: int) -> None:
        while self.stream.now_ms < until_ms:
            batch = next(self.batches)
            self.trainer.train_batch(batch)
            self.events += len(batch)

    def _export(self, version: int) -> Path:
        manifest = short_video_manifest(dim=self.args.dim, version=str(version))
        return export_bundle(self.trainer.snapshot_tower(), manifest, self.workdir / "bundles" / f"v{version}")

    def run(self) -> dict[str, Any]:
        args = self.args
        started = self.stream.now_ms
        self.console.print(f"warming up: training on {args.warmup_sim_s:.0f} simulated seconds of the stream")
        self._train_until_sim_ms(started + int(args.warmup_sim_s * 1000))
        self.trainer.take_sparse_update()  # the snapshot below carries every row
        bundle_v1 = self._export(1)
        rows = self.trainer.all_rows()
        servers = {name: LiverankServer(name, self.workdir / name, bundle_v1, self.out) for name in ("fresh", "frozen")}
        for server in servers.values():
            server.start()
            with PushClient(server.url, server.token) as client:
                builder = DeltaBuilder("trainer-0", self.manifest)
                for delta in snapshot_deltas(builder, rows, created_at_ms=self.stream.now_ms):
                    client.push_delta(delta, wait_visible=True)
        self.console.print(f"serving: fresh on {servers['fresh'].url}, frozen on {servers['frozen'].url}")
        self.console.print(f"status pages: {servers['fresh'].url}/status  {servers['frozen'].url}/status")
        try:
            return self._serve_and_learn(servers, builder_seq=builder.next_seq)
        finally:
            for server in servers.values():
                server.stop()

    def _serve_and_learn(self, servers: dict[str, LiverankServer], builder_seq: int) -> dict[str, Any]:
        args = self.args
        fresh = servers["fresh"]
        pusher = Pusher(fresh.url, fresh.token)
        pusher.start()
        builder = DeltaBuilder("trainer-0", self.manifest, start_seq=builder_seq)
        traffic = TrafficGenerator(
            self.stream,
            {name: s.url for name, s in servers.items()},
            lambda: self.stream.now_ms,
            seed=args.seed + 1,
            n_candidates=args.candidates,
            rate_per_s=args.rank_rate,
        )
        rss_start = {name: s.rss_bytes() for name, s in servers.items()}
        t0 = time.monotonic()
        sim0 = self.stream.now_ms
        events0 = self.events
        traffic.start()
        next_sparse, next_dense, next_point = t0 + args.sparse_sync_s, t0 + args.dense_sync_s, t0 + SERIES_STEP_S
        version = 1
        series: list[dict[str, Any]] = []
        live = console_is_live(self.console)
        last_line = t0
        with Live(console=self.console, refresh_per_second=4, transient=False) if live else _NoLive() as view:
            while (now := time.monotonic()) - t0 < args.duration_s:
                # Keep simulated time at sim_speed x wall time: train when behind, sleep when ahead.
                target_ms = sim0 + int((now - t0) * args.sim_speed * 1000)
                if self.stream.now_ms < target_ms:
                    batch = next(self.batches)
                    self.trainer.train_batch(batch)
                    self.events += len(batch)
                else:
                    time.sleep(0.005)
                if now >= next_sparse:
                    rows, tombstones = self.trainer.take_sparse_update()
                    if rows or tombstones:
                        pusher.push_delta(builder.build(rows, tombstones, created_at_ms=self.stream.now_ms))
                    next_sparse += args.sparse_sync_s
                if now >= next_dense:
                    version += 1
                    pusher.push_bundle(self._export(version))
                    next_dense += args.dense_sync_s
                if now >= next_point:
                    series.append(self._point(traffic, now - t0, next_point - SERIES_STEP_S, next_point))
                    next_point += SERIES_STEP_S
                snap = self._snapshot(now - t0, events0, sim0, pusher, traffic)
                if self.stop_when is not None and self.stop_when(snap):
                    break
                if live:
                    view.update(render(snap))
                elif now - last_line >= 5.0:
                    self.console.print(progress_line(snap))
                    last_line = now
        traffic.stop_event.set()
        traffic.join(30)
        pusher.finish()
        serving_s = time.monotonic() - t0
        return self._summary(servers, pusher, traffic, series, serving_s, events0, sim0, rss_start, version)

    def _snapshot(self, elapsed: float, events0: int, sim0: int, pusher: Pusher, traffic: TrafficGenerator) -> Snapshot:
        return Snapshot(
            elapsed_s=elapsed,
            duration_s=self.args.duration_s,
            events=self.events,
            events_per_s=(self.events - events0) / max(elapsed, 1e-9),
            sim_minutes=(self.stream.now_ms - sim0) / 60_000,
            sync=pusher.stats,
            backlog=pusher.backlog,
            scores=traffic.scores,
            rank_rps={name: s.requests / max(elapsed, 1e-9) for name, s in traffic.scores.items()},
            auc_window_s=AUC_WINDOW_S,
            auc={name: s.rolling_auc(AUC_WINDOW_S) for name, s in traffic.scores.items()},
        )

    @staticmethod
    def _point(traffic: TrafficGenerator, t: float, start: float, end: float) -> dict[str, Any]:
        return {"t_s": round(t, 1), "auc": {name: s.auc_between(start, end) for name, s in traffic.scores.items()}}

    def _summary(
        self,
        servers: dict[str, LiverankServer],
        pusher: Pusher,
        traffic: TrafficGenerator,
        series: list[dict[str, Any]],
        serving_s: float,
        events0: int,
        sim0: int,
        rss_start: dict[str, int | None],
        bundles: int,
    ) -> dict[str, Any]:
        args = self.args
        everything = (0.0, float("inf"))
        auc = {name: s.auc_between(*everything) for name, s in traffic.scores.items()}
        stats = pusher.stats
        return {
            "seed": args.seed,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "serving_s": round(serving_s, 1),
            "events_trained": self.events,
            "events_per_s": round((self.events - events0) / serving_s, 1),
            "simulated_minutes": round((self.stream.now_ms - sim0) / 60_000, 1),
            "deltas_pushed": stats.deltas_pushed,
            "rows_pushed": stats.rows_pushed,
            "bundles_pushed": stats.bundles_pushed,
            "bundle_versions": bundles,
            "push_failures": stats.failures,
            "push_to_visible_ms": {"p50": stats.visible_percentile_ms(50), "p99": stats.visible_percentile_ms(99)},
            "rank": {
                name: {
                    "requests": s.requests,
                    "failures": s.failures,
                    "last_error": s.last_error,
                    "p50_ms": s.latency_percentile_ms(50),
                    "p99_ms": s.latency_percentile_ms(99),
                    "final_epoch": s.epoch,
                    "rss_start_bytes": rss_start.get(name),
                }
                for name, s in traffic.scores.items()
            },
            "auc": auc,
            "auc_margin": None if None in auc.values() else auc["fresh"] - auc["frozen"],  # type: ignore[operator]
            "auc_series": series,
            "servers": {name: {"url": s.url, "log": str(s.log_path)} for name, s in servers.items()},
        }


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _: object) -> None:
        return None


def main(argv: list[str], *, stop_when: Callable[[Snapshot], bool] | None = None) -> int:
    """``liverank demo``. ``stop_when`` (for tests) ends the run early, before ``--duration-s``, once it holds."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    out = args.out or Path("results") / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="liverank-demo-"))
    try:
        summary = Demo(args, workdir, out, console, stop_when=stop_when).run()
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_summary(summary, out / "summary.json")
    write_chart(summary["auc_series"], out / "auc.png", f"fresh vs frozen (seed {args.seed})")
    _print_summary(console, summary, out)
    failures = summary["push_failures"] + sum(r["failures"] for r in summary["rank"].values())
    if failures:
        console.print(f"[red]{failures} failed requests or pushes[/]: see the server logs in {out}")
        return 1
    return 0


def _print_summary(console: Console, summary: dict[str, Any], out: Path) -> None:
    auc = summary["auc"]
    visible = summary["push_to_visible_ms"]
    console.print(
        f"\n[bold]summary[/]  {summary['serving_s']:.0f} s serving, {summary['simulated_minutes']:.0f} simulated "
        f"minutes, {summary['events_trained']:,} events trained ({summary['events_per_s']:,.0f}/s)\n"
        f"  deltas pushed {summary['deltas_pushed']} ({summary['rows_pushed']:,} rows), push-to-visible p50 "
        f"{visible['p50'] or 0:.1f} ms p99 {visible['p99'] or 0:.1f} ms; bundles pushed {summary['bundles_pushed']}\n"
        f"  AUC fresh {auc.get('fresh') or float('nan'):.4f} vs frozen {auc.get('frozen') or float('nan'):.4f} "
        f"(margin {summary['auc_margin'] if summary['auc_margin'] is not None else float('nan'):+.4f})\n"
        f"  written: {out / 'summary.json'}, {out / 'auc.png'}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
