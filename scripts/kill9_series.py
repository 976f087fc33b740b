"""The long kill -9 series: a real ``liverank serve`` SIGKILLed at random moments while a producer streams deltas.

Each trial starts the server on the same data directory, checks that it reports exactly the sequence the stopped
store held, resumes the producer from it, streams acknowledged deltas (binary form), SIGKILLs the server after a
random delay, and opens the stopped store to check that every acknowledged delta is applied or queued, every
applied one whole and once, nothing of a later one visible. The harness is ``tests/reliability/conftest.py``.

    .venv/bin/python scripts/kill9_series.py --trials 50 --out kill9-results
    .venv/bin/python scripts/kill9_series.py --trials 50 --target worker --out kill9-worker   # or --target writer

``--target``: what the SIGKILL hits: the whole ``server`` (master, writer and workers at once; the default), the
``writer`` process, or one ``worker``; after a partial kill the server must replace the process and become ready
again while the producer streams on, then the whole server is killed for the store check. ``--workers``: workers
per server (default 2).

writes ``kill9-results.json`` (every trial) and ``kill9-results.md`` (the outcome table); exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.reliability.conftest import Kill9Report, Kill9Trial, build_bundle, run_kill9_series  # noqa: E402


def _markdown(report: Kill9Report, seed: int, target: str) -> str:
    summary = report.summary()
    lines = [
        f"# kill -9 series: {summary['trials']} trials, SIGKILL aimed at the {target} "
        f"(seed {seed}, {summary['seconds']} s)",
        "",
        f"- acknowledged deltas: {summary['acked_deltas']}; final applied sequence {summary['final_applied_seq']}",
        f"- kills with acknowledged deltas still queued (acked, not yet applied): "
        f"{summary['kills_with_acked_deltas_still_queued']}",
        f"- kills after a commit but before its acknowledgement arrived: {summary['kills_after_commit_before_ack']}",
        f"- kills between a delta's LMDB commit and its inbox entry's removal (entry left, retired as a duplicate by "
        f"the next writer): {summary['kills_between_apply_and_entry_removal']}",
        f"- restarts that began with a deliberate gap (409 named the resume sequence): {summary['gap_probes']}",
        f"- violations: {len(summary['violations'])}",
        "",
        "| trial | delay s | resumed from | acked | applied at kill | queued at kill | outcome |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in report.trials:
        outcome = "; ".join(t.violations) if t.violations else "ok"
        lines.append(
            f"| {t.trial} | {t.delay_s:.3f} | {t.resumed_from} | {t.acked} | {t.applied_at_kill} | "
            f"{t.queued_at_kill} | {outcome} |"
        )
    if report.final_violations:
        lines += ["", "Final restart: " + "; ".join(report.final_violations)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20240607)
    parser.add_argument("--out", type=Path, default=Path("kill9-results"), help="path prefix of the .json and .md")
    parser.add_argument("--min-delay", type=float, default=0.05)
    parser.add_argument("--max-delay", type=float, default=1.0)
    parser.add_argument("--target", choices=("server", "writer", "worker"), default="server")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    def progress(t: Kill9Trial) -> None:
        state = "ok" if not t.violations else "VIOLATION " + "; ".join(t.violations)
        print(
            f"trial {t.trial:3d}: delay {t.delay_s:.3f} s, acked {t.acked:4d}, applied {t.applied_at_kill}, "
            f"queued {t.queued_at_kill}: {state}",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="liverank-kill9-") as tmp:
        workdir = Path(tmp)
        bundle = build_bundle(workdir / "bundle", "1")
        report = run_kill9_series(
            workdir,
            bundle,
            trials=args.trials,
            seed=args.seed,
            delay_range_s=(args.min_delay, args.max_delay),
            progress=progress,
            target=args.target,
            workers=args.workers,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"seed": args.seed, **report.to_json()}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report, args.seed, args.target))
    print(json.dumps(report.summary(), indent=1))
    return 1 if report.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
