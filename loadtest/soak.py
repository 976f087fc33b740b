"""``python -m liverank.loadtest.soak``: ten minutes of ranking at about 70 % of the measured maximum throughput, with a
delta every second and a bundle swap every minute, against a server it starts itself. Not part of CI.

1. Start a server (``liverank.loadtest.run.LocalServer``: temp data dir, synthetic W-500 bundles, random token).
2. Unless ``--rps`` is given, find the maximum: a short step ramp of ranking users only (``StepShape``); the
   maximum is the best per-step throughput of successful /v1/rank answers (each step's first 3 s left out).
3. Soak: ``--users`` ranking users at ``--fraction`` of that rate in total (``constant_throughput``), one delta user
   (``--delta-interval-s``), one bundle-swapping user (``--swap-interval-s``); every request is recorded
   (``LIVERANK_TIMELINE_JSON``) and the server's VmRSS and RssAnon are read from /proc every 10 s.
4. Write ``summary.md`` and ``soak.json`` into ``results/soak-<timestamp>/``: failures, p50/p99 per minute,
   push-to-visible p50/p99, RSS at start and end, machine, date, seed, commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from liverank.loadtest.payloads import percentile
from liverank.loadtest.run import LocalServer, RunConfig, locust_command, locust_run, results_folder, summary

Sample = tuple[float, str, str, float, bool]  # end time s, type, name, response time ms, failed
RANK = ("POST", "/v1/rank")
VISIBLE = ("VISIBLE", "push-to-visible")
SWAP = ("POST", "/admin/bundles")
RSS_EVERY_S = 10.0
SETTLE_S = 3.0


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


def _last_mib(readings: list[tuple[float, int]], until: float) -> int | None:
    return next((round(v / 2**20) for t, v in reversed(readings) if t < until), None)


def per_minute(
    samples: list[Sample], started: float, minutes: int, rss: list[tuple[float, int]], anon: list[tuple[float, int]]
) -> list[dict[str, Any]]:
    """Per minute of the soak: ranking count, rps, p50/p99, failures of any kind, push-to-visible, swaps, and the
    server's VmRSS and RssAnon at the minute's last reading."""
    buckets: list[list[Sample]] = [[] for _ in range(minutes)]
    for sample in samples:
        buckets[min(max(int((sample[0] - started) // 60), 0), minutes - 1)].append(sample)
    rows = []
    for minute, bucket in enumerate(buckets):
        ranks = [s[3] for s in _of(bucket, RANK, ok_only=True)]
        visible = [s[3] for s in _of(bucket, VISIBLE, ok_only=True)]
        rows.append(
            {
                "minute": minute + 1,
                "rank_ok": len(ranks),
                "rank_rps": round(len(ranks) / 60.0, 1),
                "rank_p50_ms": _ms(ranks, 50),
                "rank_p99_ms": _ms(ranks, 99),
                "failures": sum(s[4] for s in bucket),
                "visible_n": len(visible),
                "visible_p50_ms": _ms(visible, 50),
                "visible_p99_ms": _ms(visible, 99),
                "swaps_ok": len(_of(bucket, SWAP, ok_only=True)),
                "rss_mib": _last_mib(rss, started + 60 * (minute + 1)),
                "anon_mib": _last_mib(anon, started + 60 * (minute + 1)),
            }
        )
    return rows


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


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def markdown(report: dict[str, Any]) -> str:
    m, load, totals, rss = report["machine"], report["load"], report["totals"], report["rss_bytes"]
    lines = [
        f"# liverank soak, {report['date']}",
        "",
        f"- Machine: {m['cores']} cores, {m['cpu']}; commit {m['commit'][:12]}; seed {report['seed']}; load average "
        f"(1 min) {report['loadavg_start']:.2f} at start, {report['loadavg_end']:.2f} at end (other jobs included).",
        "- Server: `liverank serve` defaults (one uvicorn process, ONNX threads 1, gc.freeze on, durability process), "
        "synthetic W-500 bundle, dim 32; the store starts empty (only rows the deltas write exist).",
        f"- Max throughput: {load['max_rps']:.1f} rank/s ({load['max_source']}); target {load['fraction']:.0%} = "
        f"{load['target_rps']:.1f} rank/s over {load['users']} ranking users; {load['candidates']} candidates, k 50; "
        f"a delta (marker + {load['delta_rows']} item rows) every {load['delta_interval_s']} s; "
        f"a bundle swap every {load['swap_interval_s']} s; {load['duration_s']} s.",
        "",
        "| minute | rank ok | rank/s | p50 ms | p99 ms | failures | visible n | p50 ms | p99 ms | swaps | RSS | anon |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["minutes"]:
        lines.append(
            f"| {r['minute']} | {r['rank_ok']} | {r['rank_rps']} | {r['rank_p50_ms']} | {r['rank_p99_ms']} | "
            f"{r['failures']} | {r['visible_n']} | {r['visible_p50_ms']} | {r['visible_p99_ms']} | {r['swaps_ok']} | "
            f"{r['rss_mib']} | {r['anon_mib']} |"
        )
    lines += [
        "",
        f"- Totals: {totals['rank_ok']} rankings ({totals['rank_rps']} /s), p50 {totals['rank_p50_ms']} ms, "
        f"p99 {totals['rank_p99_ms']} ms, p99.9 {totals['rank_p999_ms']} ms; push-to-visible n {totals['visible_n']}, "
        f"p50 {totals['visible_p50_ms']} ms, p99 {totals['visible_p99_ms']} ms, max {totals['visible_max_ms']} ms; "
        f"bundle swaps {totals['swaps_ok']}; failed requests {totals['failures']}.",
        f"- Server RSS: {_mib(rss['at_start'])} after start-up, {_mib(rss['soak_start'])} at soak start, "
        f"{_mib(rss['at_end'])} at end (max {_mib(rss['max'])}); anonymous (RssAnon, no mapped files) "
        f"{_mib(rss['anon_soak_start'])} at soak start, {_mib(rss['anon_at_end'])} at end. Table: MiB.",
        f"- Server's own push-to-visible (GET /admin/status): {report['server_status'].get('push_to_visible')}.",
        f"- Failures by request: {report['failures_by_request'] or 'none'}; "
        f"locust exit code {report['locust_exit_code']}.",
    ]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m liverank.loadtest.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=int, default=600, help="soak length (600)")
    p.add_argument("--rps", type=float, help="maximum rank/s to take 70 %% of (default: measure with a ramp)")
    p.add_argument("--fraction", type=float, default=0.7, help="share of the maximum to soak at (0.7)")
    p.add_argument("--users", type=int, default=12, help="ranking users during the soak (12: slack for slow answers)")
    p.add_argument("--ramp-s", type=int, default=60, help="ramp length (60 s, 4 steps)")
    p.add_argument("--ramp-users", type=int, default=8, help="ranking users at the ramp's last step (8)")
    p.add_argument("--delta-interval-s", type=float, default=1.0)
    p.add_argument("--swap-interval-s", type=float, default=60.0)
    p.add_argument("--delta-rows", type=int, default=100)
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, help="default results/soak-<timestamp>")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = results_folder(args.results_dir, "soak")
    server = LocalServer(results / "server.log", seed=args.seed)
    common = {"LIVERANK_CANDIDATES": str(args.candidates)}
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seed": args.seed, "machine": machine()}
    report["loadavg_start"] = os.getloadavg()[0]
    rss: dict[str, int | None] = {}
    try:
        server.start()
        rss["at_start"] = server.rss_bytes()
        env = {
            "LIVERANK_ADMIN_TOKEN": server.token,
            "LIVERANK_BUNDLE_ARCHIVE": os.pathsep.join(map(str, server.archives)),
        }
        max_rps, source = args.rps, "given with --rps"
        if max_rps is None:
            ramp = results / "ramp"
            ramp.mkdir(exist_ok=True)
            steps = 4
            locust_env = {**common, "LIVERANK_TIMELINE_JSON": str(ramp / "timeline.json"), "LIVERANK_STEPS": str(steps)}
            config = RunConfig(args.ramp_s, args.ramp_users, shape="step", seed=args.seed, locust_env=locust_env)
            print(f"soak: ramp to {args.ramp_users} ranking users over {args.ramp_s} s", flush=True)
            locust_run(config, server.url, ramp, env, classes=("RankingUser",))
            per_step = step_throughputs(load_samples(ramp / "timeline.json"), args.ramp_s, steps)
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
            "delta_rows": args.delta_rows,
            "delta_interval_s": args.delta_interval_s,
            "swap_interval_s": args.swap_interval_s,
            "duration_s": args.duration_s,
        }
        soak_env = {
            **common,
            "LIVERANK_RANK_RPS_PER_USER": f"{target / args.users:.4f}",
            "LIVERANK_DELTA_INTERVAL_S": str(args.delta_interval_s),
            "LIVERANK_DELTA_ROWS": str(args.delta_rows),
            "LIVERANK_SWAP_INTERVAL_S": str(args.swap_interval_s),
            "LIVERANK_TIMELINE_JSON": str(results / "timeline.json"),
        }
        config = RunConfig(args.duration_s, args.users, seed=args.seed, locust_env=soak_env)
        command, full_env = locust_command(config, server.url, results, env)
        print(f"soak: {target:.1f} rank/s for {args.duration_s} s, results in {results}", flush=True)
        rss["soak_start"] = server.rss_bytes()
        rss["anon_soak_start"] = server.rss_bytes("RssAnon")
        samples_rss: list[tuple[float, int]] = []
        samples_anon: list[tuple[float, int]] = []
        started = time.time()
        with subprocess.Popen(command, env=full_env) as locust:
            while locust.poll() is None:
                for readings, name in ((samples_rss, "VmRSS"), (samples_anon, "RssAnon")):
                    value = server.rss_bytes(name)
                    if value is not None:
                        readings.append((time.time(), value))
                time.sleep(RSS_EVERY_S)
        report["locust_exit_code"] = locust.returncode
        rss["at_end"] = server.rss_bytes()
        rss["anon_at_end"] = server.rss_bytes("RssAnon")
        rss["max"] = max((v for _, v in samples_rss), default=None)
        report["server_status"] = server_status(server.url, server.token)
    finally:
        report["server_exit_code"] = server.stop()
    report["loadavg_end"] = os.getloadavg()[0]
    report["rss_bytes"] = rss
    samples = load_samples(results / "timeline.json")
    minutes = max(1, round(args.duration_s / 60))
    report["minutes"] = per_minute(samples, started, minutes, samples_rss, samples_anon)
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
    final = summary(results)
    report["failures_by_request"] = {k: v["failures"] for k, v in final["requests"].items() if v["failures"]}
    report["locust_summary"] = final
    report["config"] = asdict(config)
    (results / "soak.json").write_text(json.dumps(report, indent=2, default=str))
    (results / "summary.md").write_text(markdown(report))
    print((results / "summary.md").read_text())
    failed = (
        report["totals"]["failures"] or report["locust_exit_code"] != 0 or report["server_exit_code"] not in (0, None)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
