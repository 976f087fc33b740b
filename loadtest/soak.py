"""``python -m liverank.loadtest.soak``: ranking at about 70 % of the measured maximum throughput for ten minutes,
on a pre-filled store, with a D-10k delta every second and a bundle swap every minute, against a server it starts
itself (issue 11's soak). Not part of CI.

1. Start a server (``liverank.loadtest.run.LocalServer``: temp data dir, synthetic W-500 bundles, random token,
   ``--workers``). ``--prefill-rows N`` (default 10,000,000) fills its store before it starts (``liverank bench
   fill``): N rows in each of the largest slots (user_id, item_id), every other slot at its W-500 cardinality, with
   the ids the load test draws (``LIVERANK_LARGEST_IDS`` = N), so every id a ranking request names exists.
   ``--prefill-rows 0``: an empty store (only the rows the deltas write exist).
2. Unless ``--rps`` is given, find the maximum: a short step ramp of ranking users only (``StepShape``); the
   maximum is the best per-step throughput of successful /v1/rank answers (each step's first 3 s left out).
3. Soak: ``--users`` ranking users at ``--fraction`` of that rate in total (``constant_throughput``), one delta user
   (``--delta-stream d10k``: a binary delta of 10,000 rows over item_id, author_id and tags with 5 % new ids, plus
   the marker row it measures push-to-visible with, every ``--delta-interval-s``), one bundle-swapping user
   (``--swap-interval-s``); every request is recorded (``LIVERANK_TIMELINE_JSON``). Every 10 s the memory of the
   whole server is read: PSS summed over the master, the writer and the worker processes (``/proc/<pid>/
   smaps_rollup``: a page shared by k processes counts 1/k in each, so the shared tier and LMDB's map count once),
   with the master's VmRSS and the number of server processes beside it.
4. Write ``summary.md`` and ``soak.json`` into ``results/soak-<timestamp>/``: per minute ranking rps, p50/p99,
   failures, push-to-visible, swaps and memory; the fill; and issue 11's targets, met or not: 0 failed requests, and
   memory growth <= 10 % from the end of minute 2 to the end of minute 10 (a run shorter than 10 minutes measures
   from the end of minute 2, or from half the run if shorter, to its end, and says so). Exit code 1 if a target is
   missed or the server did not exit cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from liverank.loadtest.payloads import DELTA_STREAMS, percentile
from liverank.loadtest.run import LocalServer, RunConfig, locust_command, locust_run, results_folder, summary
from liverank.server_process import ServerNotStarted

Sample = tuple[float, str, str, float, bool]  # end time s, type, name, response time ms, failed
RANK = ("POST", "/v1/rank")
VISIBLE = ("VISIBLE", "push-to-visible")
SWAP = ("POST", "/admin/bundles")
MEMORY_EVERY_S = 10.0
PROGRESS_EVERY_S = 60.0  # a progress line a minute on stdout
SETTLE_S = 3.0
GROWTH_FROM_S, GROWTH_TO_S, GROWTH_TARGET_PCT = 120.0, 600.0, 10.0  # issue 11: minute 2 to minute 10, <= 10 %
DEFAULT_PREFILL_ROWS = 10_000_000


@dataclass(frozen=True)
class MemoryReading:
    """One reading of the server's memory: when; the PSS of every server process summed, and the part of it that is
    anonymous (heaps), file pages (LMDB's map, libraries) and shared memory (the tier in /dev/shm); the master's
    VmRSS; how many server processes there were."""

    t: float
    pss_bytes: int
    anon_bytes: int | None
    file_bytes: int | None
    shmem_bytes: int | None
    master_rss_bytes: int | None
    processes: int


def read_memory(server: LocalServer) -> MemoryReading | None:
    pss = server.pss()
    if pss is None:
        return None
    return MemoryReading(
        time.time(),
        pss["Pss"],
        pss.get("Pss_Anon"),
        pss.get("Pss_File"),
        pss.get("Pss_Shmem"),
        server.rss_bytes(),
        server.process_count(),
    )


def load_samples(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    return [
        (float(t), str(k), str(n), float(ms), bool(f)) for t, k, n, ms, f in json.loads(path.read_text())["samples"]
    ]


def _of(samples: list[Sample], kind: tuple[str, str], *, ok_only: bool = False) -> list[Sample]:
    return [s for s in samples if (s[1], s[2]) == kind and not (ok_only and s[4])]


def step_throughputs(samples: list[Sample], duration_s: float, steps: int) -> list[float]:
    """Successful /v1/rank answers per second in each step of a step ramp, each step's first seconds left out."""
    ranks = _of(samples, RANK, ok_only=True)
    if not ranks:
        return []
    start = min(s[0] for s in samples)
    step_s = duration_s / steps
    out = []
    for i in range(steps):
        low, high = start + i * step_s + SETTLE_S, start + (i + 1) * step_s
        out.append(sum(low <= s[0] < high for s in ranks) / max(high - low, 1e-9))
    return out


def _ms(values: list[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value, 1)


def _mib(n: int | None) -> int | None:
    return None if n is None else round(n / 2**20)


def last_reading(readings: list[MemoryReading], until: float) -> MemoryReading | None:
    """The last reading taken before ``until`` (an absolute time), if any."""
    return next((r for r in reversed(readings) if r.t <= until), None)


def per_minute(
    samples: list[Sample], started: float, duration_s: float, memory: list[MemoryReading]
) -> list[dict[str, Any]]:
    """Per minute of the soak (the last one may be partial): ranking count, rps, p50/p99, failures of any kind,
    push-to-visible, swaps, and the server's memory at the minute's last reading (PSS of all its processes, the
    master's VmRSS, processes)."""
    minutes = max(1, math.ceil(duration_s / 60))
    buckets: list[list[Sample]] = [[] for _ in range(minutes)]
    for sample in samples:
        buckets[min(max(int((sample[0] - started) // 60), 0), minutes - 1)].append(sample)
    rows = []
    for minute, bucket in enumerate(buckets):
        ranks = [s[3] for s in _of(bucket, RANK, ok_only=True)]
        visible = [s[3] for s in _of(bucket, VISIBLE, ok_only=True)]
        reading = last_reading(memory, started + 60 * (minute + 1))
        rows.append(
            {
                "minute": minute + 1,
                "rank_ok": len(ranks),
                "rank_rps": round(len(ranks) / max(min(60.0, duration_s - 60 * minute), 1.0), 1),
                "rank_p50_ms": _ms(ranks, 50),
                "rank_p99_ms": _ms(ranks, 99),
                "failures": sum(s[4] for s in bucket),
                "visible_n": len(visible),
                "visible_p50_ms": _ms(visible, 50),
                "visible_p99_ms": _ms(visible, 99),
                "swaps_ok": len(_of(bucket, SWAP, ok_only=True)),
                "pss_mib": None if reading is None else _mib(reading.pss_bytes),
                "anon_mib": None if reading is None else _mib(reading.anon_bytes),
                "file_mib": None if reading is None else _mib(reading.file_bytes),
                "shmem_mib": None if reading is None else _mib(reading.shmem_bytes),
                "master_rss_mib": None if reading is None else _mib(reading.master_rss_bytes),
                "processes": None if reading is None else reading.processes,
            }
        )
    return rows


def memory_growth(readings: list[MemoryReading], started: float, duration_s: float) -> dict[str, Any]:
    """Growth of the whole server's PSS from the end of minute 2 to the end of minute 10 of the soak (issue 11).
    A shorter run measures from the end of minute 2 (or from half the run, if that comes first) to its last reading,
    and says that the window is not the issue's."""
    from_s = min(GROWTH_FROM_S, duration_s / 2)
    to_s = min(GROWTH_TO_S, duration_s)
    first, last = last_reading(readings, started + from_s), last_reading(readings, started + to_s)
    out: dict[str, Any] = {
        "from_s": from_s,
        "to_s": to_s,
        "full_window": from_s == GROWTH_FROM_S and to_s == GROWTH_TO_S,
        "target_pct": GROWTH_TARGET_PCT,
        "from_bytes": None if first is None else first.pss_bytes,
        "to_bytes": None if last is None else last.pss_bytes,
        "growth_pct": None,
        "met": None,
    }
    if first is not None and last is not None and last.t > first.t:
        out["growth_pct"] = round(100.0 * (last.pss_bytes - first.pss_bytes) / first.pss_bytes, 2)
        out["met"] = out["growth_pct"] <= GROWTH_TARGET_PCT
    return out


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cores": os.cpu_count(), "cpu": model, "commit": commit}


def server_status(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/admin/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return {key: doc.get(key) for key in ("epoch", "inbox_depth", "push_to_visible", "quarantined_deltas")}


def _progress_line(server: LocalServer, started: float, duration_s: float, reading: MemoryReading | None) -> str:
    """A minute's progress: time, memory, and what the server says of push-to-visible and its inbox so far."""
    pss = None if reading is None else reading.pss_bytes
    line = f"soak: {time.time() - started:4.0f} / {duration_s:.0f} s, server PSS {_fmt_mib(pss)}"
    try:
        status = server_status(server.url, server.token)
    except OSError as exc:  # the server is busy or gone: the soak's own figures will tell
        return f"{line}, status unavailable ({exc})"
    visible = status.get("push_to_visible") or {}
    if visible.get("count"):
        line += (
            f", {visible['count']} deltas visible (server p50 {1000 * visible['p50_s']:.0f} ms, "
            f"p99 {1000 * visible['p99_s']:.0f} ms)"
        )
    return f"{line}, inbox depth {status.get('inbox_depth')}"


def _fmt_mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def _store_line(report: dict[str, Any]) -> str:
    fill = report.get("fill")
    if not fill:
        return "the store starts empty (only rows the deltas write exist)"
    return (
        f"the store starts pre-filled (`liverank bench fill`): {fill['largest_slot_rows']:,} rows in each of user_id "
        f"and item_id, the other slots at their W-500 cardinalities, {fill['rows']:,} rows in all, filled in "
        f"{fill['wall_s']:.0f} s ({fill['rows'] / fill['wall_s']:,.0f} rows/s); requests draw user_id and item_id "
        f"over those {fill['largest_slot_rows']:,} ids"
    )


def _targets(report: dict[str, Any]) -> list[str]:
    failures, growth = report["totals"]["failures"], report["memory_growth"]
    window = f"{growth['from_s']:.0f} s to {growth['to_s']:.0f} s of the soak"
    if not growth["full_window"]:
        window += " (the run is shorter than 10 minutes: not the issue's window, minute 2 to minute 10)"
    if growth["growth_pct"] is None:
        memory = f"not measured: fewer than two readings in the window {window}"
    else:
        verdict = "met" if growth["met"] else "MISSED"
        memory = (
            f"{_fmt_mib(growth['from_bytes'])} -> {_fmt_mib(growth['to_bytes'])}, {growth['growth_pct']:+.1f} % "
            f"from {window}: **{verdict}**"
        )
    return [
        "## Targets (issue 11)",
        "",
        f"- 0 failed requests: {failures} failed, locust exit code {report['locust_exit_code']}: "
        f"**{'met' if report['no_failures'] else 'MISSED'}**.",
        f"- Memory of the whole server (PSS of every server process, shared pages counted once) grows <= "
        f"{growth['target_pct']:.0f} %: {memory}.",
    ]


def markdown(report: dict[str, Any]) -> str:
    m, load, totals = report["machine"], report["load"], report["totals"]
    memory = report["memory"]
    lines = [
        f"# liverank soak, {report['date']}",
        "",
        f"- Machine: {m['cores']} cores, {m['cpu']}; commit {m['commit'][:12]}; seed {report['seed']}; load average "
        f"(1 min) {report['loadavg_start']:.2f} at start, {report['loadavg_end']:.2f} at end (other jobs included).",
        f"- Server: `liverank serve --workers {report['workers']}` ({report['processes_at_start']} processes at start: "
        f"the master, multiprocessing's resource tracker, the writer process and {report['workers']} uvicorn workers, "
        "which map the writer's RAM tier in /dev/shm), ONNX threads 1, gc.freeze on; synthetic W-500 bundle, dim 32; "
        "ready "
        f"{report['server_startup_s']:.0f} s after start; {_store_line(report)}.",
        f"- Max throughput: {load['max_rps']:.1f} rank/s ({load['max_source']}); target {load['fraction']:.0%} = "
        f"{load['target_rps']:.1f} rank/s over {load['users']} ranking users; {load['candidates']} candidates, k 50; "
        f"a {load['delta_stream']} delta (marker + {load['delta_rows']:,} rows{load['delta_spread']}, binary) every "
        f"{load['delta_interval_s']} s; a bundle swap every {load['swap_interval_s']} s; {load['duration_s']} s.",
        "",
        "| minute | rank ok | rank/s | p50 ms | p99 ms | failures | visible n | p50 ms | p99 ms | swaps | PSS all "
        "| anon | file | shmem | master RSS | processes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["minutes"]:
        lines.append(
            f"| {r['minute']} | {r['rank_ok']} | {r['rank_rps']} | {r['rank_p50_ms']} | {r['rank_p99_ms']} | "
            f"{r['failures']} | {r['visible_n']} | {r['visible_p50_ms']} | {r['visible_p99_ms']} | {r['swaps_ok']} | "
            f"{r['pss_mib']} | {r['anon_mib']} | {r['file_mib']} | {r['shmem_mib']} | {r['master_rss_mib']} | "
            f"{r['processes']} |"
        )
    lines += [
        "",
        f"- Totals: {totals['rank_ok']} rankings ({totals['rank_rps']} /s), p50 {totals['rank_p50_ms']} ms, "
        f"p99 {totals['rank_p99_ms']} ms, p99.9 {totals['rank_p999_ms']} ms; push-to-visible n {totals['visible_n']}, "
        f"p50 {totals['visible_p50_ms']} ms, p99 {totals['visible_p99_ms']} ms, max {totals['visible_max_ms']} ms; "
        f"bundle swaps {totals['swaps_ok']}; failed requests {totals['failures']}.",
        f"- Server memory, PSS summed over all its processes (shared counted once): {_fmt_mib(memory['pss_at_start'])} "
        f"after start-up, {_fmt_mib(memory['pss_soak_start'])} at soak start, {_fmt_mib(memory['pss_at_end'])} at "
        f"end (max {_fmt_mib(memory['pss_max'])}); the master's VmRSS alone {_fmt_mib(memory['master_rss_at_end'])} "
        "at end. Table: MiB, at each minute's last reading (every 10 s); PSS all = anon (heaps) + file (LMDB's map, "
        "libraries) + shmem (the shared tier).",
        f"- Server's own push-to-visible (GET /admin/status): {report['server_status'].get('push_to_visible')}.",
        f"- Failures by request: {report['failures_by_request'] or 'none'}; "
        f"locust exit code {report['locust_exit_code']}; server exit code {report['server_exit_code']}.",
        "",
        *_targets(report),
    ]
    return "\n".join(lines) + "\n"


def _count(text: str) -> int:
    """A count: ``10000000``, ``10_000_000``, ``300k`` or ``10M``."""
    raw = text.strip().lower().replace("_", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(raw[-1:], 1)
    try:
        value = int(raw[:-1] if factor > 1 else raw) * factor
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m liverank.loadtest.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=int, default=600, help="soak length (600)")
    p.add_argument(
        "--prefill-rows",
        type=_count,
        default=DEFAULT_PREFILL_ROWS,
        help="rows in each of the largest slots (user_id, item_id) before the server starts; the other slots at "
        "their W-500 cardinalities (about 0.47M rows more); requests draw the largest slots' ids over this many; "
        "0: an empty store (default 10M, issue 11's size: about 20.5M rows in all)",
    )
    p.add_argument("--workers", type=int, help="liverank serve --workers (default: the server's, one per core)")
    p.add_argument("--rps", type=float, help="maximum rank/s to take 70 %% of (default: measure with a ramp)")
    p.add_argument("--fraction", type=float, default=0.7, help="share of the maximum to soak at (0.7)")
    p.add_argument("--users", type=int, default=12, help="ranking users during the soak (12: slack for slow answers)")
    p.add_argument("--ramp-s", type=int, default=60, help="ramp length (60 s, 4 steps)")
    p.add_argument("--ramp-users", type=int, default=8, help="ranking users at the ramp's last step (8)")
    p.add_argument("--delta-interval-s", type=float, default=1.0)
    p.add_argument("--swap-interval-s", type=float, default=60.0)
    p.add_argument(
        "--delta-stream",
        choices=sorted(DELTA_STREAMS),
        default="d10k",
        help="d10k (WORKLOADS.md: item_id 70 %%, author_id 20 %%, tags 10 %%, 5 %% new ids) or marker (Zipf rows "
        "of item_id only); a marker row is added to every delta either way",
    )
    p.add_argument("--delta-rows", type=int, help="rows per delta besides the marker (d10k: 10000, marker: 100)")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, help="default results/soak-<timestamp>")
    return p


def _delta_spread(stream: str) -> str:
    mix = DELTA_STREAMS[stream]
    if mix.shares is None:
        return " of item_id"
    spread = ", ".join(f"{slot} {share:.0%}" for slot, share in mix.shares.items())
    return f": {spread}, {mix.new_fraction:.0%} new ids"


def _find_max_rps(args: argparse.Namespace, server: LocalServer, results: Path, env: dict[str, str]) -> list[float]:
    """Ranking throughput of each step of a step ramp (ranking users only)."""
    ramp = results / "ramp"
    ramp.mkdir(exist_ok=True)
    steps = 4
    locust_env = {**env, "LIVERANK_TIMELINE_JSON": str(ramp / "timeline.json"), "LIVERANK_STEPS": str(steps)}
    config = RunConfig(args.ramp_s, args.ramp_users, shape="step", seed=args.seed, locust_env=locust_env)
    print(f"soak: ramp to {args.ramp_users} ranking users over {args.ramp_s} s", flush=True)
    locust_run(config, server.url, ramp, {}, classes=("RankingUser",))
    return step_throughputs(load_samples(ramp / "timeline.json"), args.ramp_s, steps)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = results_folder(args.results_dir, "soak")
    server = LocalServer(results / "server.log", seed=args.seed, prefill_rows=args.prefill_rows, workers=args.workers)
    common = {"LIVERANK_CANDIDATES": str(args.candidates)}
    if args.prefill_rows:
        common["LIVERANK_LARGEST_IDS"] = str(args.prefill_rows)
    delta_rows = args.delta_rows if args.delta_rows is not None else DELTA_STREAMS[args.delta_stream].default_rows
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seed": args.seed, "machine": machine()}
    report["loadavg_start"] = os.getloadavg()[0]
    report["workers"] = args.workers or len(os.sched_getaffinity(0))
    memory: dict[str, int | None] = {}
    readings: list[MemoryReading] = []
    started = time.time()
    try:
        if args.prefill_rows:
            print(f"soak: pre-filling {args.prefill_rows:,} rows per largest slot (progress below)", flush=True)
        try:
            server.start()
        except (ServerNotStarted, subprocess.CalledProcessError, OSError) as exc:
            # e.g. `liverank bench fill` is missing (an install without the repository's benchmarks), or a full disk
            print(f"soak: cannot start the server: {exc} (server log: {results / 'server.log'})", file=sys.stderr)
            return 2
        report["fill"] = server.fill
        report["server_startup_s"] = server.server.startup_s if server.server is not None else None
        report["processes_at_start"] = server.process_count()
        memory["pss_at_start"] = server.pss_bytes()
        env = {
            **common,
            "LIVERANK_ADMIN_TOKEN": server.token,
            "LIVERANK_BUNDLE_ARCHIVE": os.pathsep.join(map(str, server.archives)),
        }
        max_rps, source = args.rps, "given with --rps"
        if max_rps is None:
            per_step = _find_max_rps(args, server, results, common)
            report["ramp_rps_per_step"] = [round(x, 1) for x in per_step]
            max_rps, source = max(per_step, default=0.0), f"step ramp, rank/s per step {report['ramp_rps_per_step']}"
        if max_rps <= 0:
            print("soak: no ranking throughput measured; see ramp/locust.log", file=sys.stderr)
            return 1
        target = args.fraction * max_rps
        report["load"] = {
            "max_rps": max_rps,
            "max_source": source,
            "fraction": args.fraction,
            "target_rps": target,
            "users": args.users,
            "candidates": args.candidates,
            "largest_ids": args.prefill_rows or None,
            "delta_stream": args.delta_stream,
            "delta_rows": delta_rows,
            "delta_spread": _delta_spread(args.delta_stream),
            "delta_interval_s": args.delta_interval_s,
            "swap_interval_s": args.swap_interval_s,
            "duration_s": args.duration_s,
        }
        soak_env = {
            "LIVERANK_RANK_RPS_PER_USER": f"{target / args.users:.4f}",
            "LIVERANK_DELTA_INTERVAL_S": str(args.delta_interval_s),
            "LIVERANK_DELTA_STREAM": args.delta_stream,
            "LIVERANK_DELTA_ROWS": str(delta_rows),
            "LIVERANK_SWAP_INTERVAL_S": str(args.swap_interval_s),
            "LIVERANK_TIMELINE_JSON": str(results / "timeline.json"),
        }
        config = RunConfig(args.duration_s, args.users, seed=args.seed, locust_env=soak_env)
        command, full_env = locust_command(config, server.url, results, env)
        print(f"soak: {target:.1f} rank/s for {args.duration_s} s, results in {results}", flush=True)
        memory["pss_soak_start"] = server.pss_bytes()
        started = time.time()
        next_progress = started + PROGRESS_EVERY_S
        with subprocess.Popen(command, env=full_env) as locust:
            while locust.poll() is None:
                reading = read_memory(server)
                if reading is not None:
                    readings.append(reading)
                if time.time() >= next_progress:
                    next_progress += PROGRESS_EVERY_S
                    print(_progress_line(server, started, args.duration_s, reading), flush=True)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    locust.wait(MEMORY_EVERY_S)
        report["locust_exit_code"] = locust.returncode
        memory["pss_at_end"] = server.pss_bytes()
        memory["master_rss_at_end"] = server.rss_bytes()
        memory["pss_max"] = max((r.pss_bytes for r in readings), default=None)
        report["server_status"] = server_status(server.url, server.token)
    finally:
        report["server_exit_code"] = server.stop()
    return _report(args, report, memory, readings, started, results, config)


def _report(
    args: argparse.Namespace,
    report: dict[str, Any],
    memory: dict[str, int | None],
    readings: list[MemoryReading],
    started: float,
    results: Path,
    config: RunConfig,
) -> int:
    """Summarise the soak into ``soak.json`` and ``summary.md``; the exit code (1: a target missed)."""
    report["loadavg_end"] = os.getloadavg()[0]
    report["memory"] = memory
    report["memory_readings"] = [asdict(r) for r in readings]
    samples = load_samples(results / "timeline.json")
    report["minutes"] = per_minute(samples, started, args.duration_s, readings)
    report["memory_growth"] = memory_growth(readings, started, args.duration_s)
    ranks = [s[3] for s in _of(samples, RANK, ok_only=True)]
    visible = [s[3] for s in _of(samples, VISIBLE, ok_only=True)]
    report["totals"] = {
        "rank_ok": len(ranks),
        "rank_rps": round(len(ranks) / args.duration_s, 1),
        "rank_p50_ms": _ms(ranks, 50),
        "rank_p99_ms": _ms(ranks, 99),
        "rank_p999_ms": _ms(ranks, 99.9),
        "visible_n": len(visible),
        "visible_p50_ms": _ms(visible, 50),
        "visible_p99_ms": _ms(visible, 99),
        "visible_max_ms": max(visible, default=None),
        "swaps_ok": len(_of(samples, SWAP, ok_only=True)),
        "failures": sum(s[4] for s in samples),
    }
    report["no_failures"] = report["totals"]["failures"] == 0 and report["locust_exit_code"] == 0
    final = summary(results)
    report["failures_by_request"] = {k: v["failures"] for k, v in final["requests"].items() if v["failures"]}
    report["locust_summary"] = final
    report["config"] = asdict(config)
    (results / "soak.json").write_text(json.dumps(report, indent=2, default=str))
    (results / "summary.md").write_text(markdown(report))
    print((results / "summary.md").read_text())
    missed = not report["no_failures"] or report["memory_growth"]["met"] is False
    return 1 if missed or report["server_exit_code"] not in (0, None) else 0


if __name__ == "__main__":
    sys.exit(main())
