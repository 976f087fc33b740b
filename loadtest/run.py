"""``make loadtest`` (``python -m liverank.loadtest.run``): a headless locust run against a liverank server.

Without ``HOST`` it starts a server of its own: a fresh temporary data dir, two synthetic W-500 bundles of one
schema made by ``liverank export synthetic`` (version 1 goes live at start; archives of versions 2 and 1 are what
the bundle-swapping user uploads in turn), and ``liverank serve`` on a free port with a random admin token. With
``HOST=http://...`` it uses that server, the token from ``LIVERANK_ADMIN_TOKEN`` (no token: ranking users only) and
bundle archives from ``LIVERANK_BUNDLE_ARCHIVE`` (none: no bundle swaps).

Options come from flags or the environment: ``DURATION`` (s, default 30), ``USERS`` (ranking users, default 3; the
delta and bundle users come on top), ``SPAWN_RATE``, ``HOST``, ``SHAPE`` (``step`` or ``spike``: ``USERS`` is then
the peak and ``DURATION`` the shape's length), ``RESULTS_DIR``; the ``LIVERANK_*`` settings of the locustfile pass
through. Results: ``results/loadtest-<timestamp>/`` (locust CSVs, ``report.html``, ``locust.log``, ``server.log``,
``run.json``). The exit code is non-zero if any request failed, a user raised, or nothing was ranked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from liverank.server_process import ServerNotStarted, ServerProcess, serve_command, wait_ready

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAP_SIZE_BYTES = 4 * 1024**3
MAP_BYTES_PER_PREFILL_ROW = 1024
READY_TIMEOUT_S = 60.0
TIER_BUILD_ROWS_PER_S = 20_000  # a pessimistic rate (loaded machine), for the ready timeout of a pre-filled server
STOP_TIMEOUT_S = 10


def liverank_command() -> list[str]:
    """The ``liverank`` console script beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("liverank")
    found = str(beside) if beside.exists() else shutil.which("liverank")
    if found is None:
        raise RuntimeError("the liverank command is not installed (pip install -e . in this venv)")
    return [found]


class LocalServer:
    """A liverank server of the load test's own: temp data dir, synthetic bundles, random admin token.

    ``prefill_rows``: before ``serve`` starts, ``liverank bench fill`` writes W-500 rows into the data directory
    (that many in each of the largest slots, user_id and item_id; every other slot at its W-500 cardinality), with
    the ids the load test draws when ``LIVERANK_LARGEST_IDS`` is the same number (the soak sets it for locust). Its
    figures (rows, seconds) end up in ``fill``. ``workers``: ``liverank serve --workers`` (None: the server's
    default, one per core).
    """

    def __init__(
        self,
        log_path: Path,
        *,
        preset: str = "w500",
        dim: int = 32,
        seed: int = 0,
        prefill_rows: int = 0,
        workers: int | None = None,
    ) -> None:
        self.log_path = log_path
        self.preset, self.dim, self.seed = preset, dim, seed
        self.prefill_rows, self.workers = prefill_rows, workers
        self.token = secrets.token_urlsafe(24)
        self.workdir = Path(tempfile.mkdtemp(prefix="liverank-loadtest-"))
        self.archives: list[Path] = []
        self.server: ServerProcess | None = None
        self.fill: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return "" if self.server is None else self.server.url

    def _export(self, version: str, seed: int) -> Path:
        bundle = self.workdir / f"bundle-v{version}"
        args = ["synthetic", "--out", str(bundle), "--preset", self.preset, "--dim", str(self.dim)]
        self._liverank("export", *args, "--version", version, "--seed", str(seed))
        return bundle

    def _liverank(self, *args: str, quiet: bool = True) -> None:
        subprocess.run([*liverank_command(), *args], check=True, stdout=subprocess.DEVNULL if quiet else None)

    @property
    def map_size_bytes(self) -> int:
        """The LMDB map: room for the pre-filled rows (about 2 x ``prefill_rows`` of them, 200-300 bytes each on
        disk at dim 32) and for what the run writes on top."""
        return MAP_SIZE_BYTES + self.prefill_rows * MAP_BYTES_PER_PREFILL_ROW

    def _prefill(self, bundle: Path) -> dict[str, Any]:
        """``liverank bench fill`` into the data directory (its progress lines go to stderr); its figures."""
        figures = self.workdir / "fill.json"
        args = ["--data-dir", str(self.workdir / "data"), "--bundle", str(bundle), "--rows", str(self.prefill_rows)]
        args += ["--map-size-bytes", str(self.map_size_bytes), "--seed", str(self.seed), "--json", str(figures)]
        self._liverank("bench", "fill", *args, quiet=False)
        fill: dict[str, Any] = json.loads(figures.read_text())
        return fill

    def start(self) -> LocalServer:
        live = self._export("1", self.seed)
        for bundle in (self._export("2", self.seed + 1), live):
            archive = bundle.with_suffix(".tar.gz")
            self._liverank("export", "archive", "--bundle", str(bundle), "--out", str(archive))
            self.archives.append(archive)
        if self.prefill_rows:
            self.fill = self._prefill(live)
        args = ["--host", "127.0.0.1", "--map-size-bytes", str(self.map_size_bytes)]
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        command = serve_command(self.workdir / "data", live, args, launcher=liverank_command())
        env = {**os.environ, "LIVERANK_ADMIN_TOKEN": self.token}
        self.server = ServerProcess(command, log_path=self.log_path, env=env)
        # The writer builds the shared tier from every stored row before the server is ready.
        self.server.start(timeout_s=READY_TIMEOUT_S + self.prefill_rows / TIER_BUILD_ROWS_PER_S)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.server is None else self.server.pid

    def rss_bytes(self, field: str = "VmRSS") -> int | None:
        """A memory figure of the master process alone (``ServerProcess.rss_bytes``)."""
        return None if self.server is None else self.server.rss_bytes(field)

    def pss(self) -> dict[str, int] | None:
        """The whole server's memory, shared pages counted once, with its split (``ServerProcess.pss``)."""
        return None if self.server is None else self.server.pss()

    def pss_bytes(self) -> int | None:
        return None if self.server is None else self.server.pss_bytes()

    def process_count(self) -> int:
        return 0 if self.server is None else self.server.process_count()

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, as a container runtime would; SIGKILL after 30 s). Its exit code."""
        code = None if self.server is None else self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it: -SIGTERM is the clean exit here.
        return 0 if code == -signal.SIGTERM else code

    def __enter__(self) -> LocalServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class RunConfig:
    """One headless locust run."""

    duration_s: int = 30
    users: int = 3  # ranking users; the delta and bundle users come on top
    spawn_rate: float | None = None
    host: str | None = None
    shape: str | None = None
    results_dir: Path | None = None
    seed: int = 0
    locust_env: dict[str, str] = field(default_factory=dict)


def locust_env(config: RunConfig, env: dict[str, str]) -> dict[str, str]:
    """The locust process's environment: ours, the server's token and archives, the run's settings."""
    full = {**os.environ, **env, "LIVERANK_SEED": str(config.seed), **config.locust_env}
    if config.shape:
        full["LIVERANK_SHAPE"] = config.shape
    return full


def locust_command(
    config: RunConfig, url: str, results: Path, env: dict[str, str], *, classes: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    """The headless locust command writing into ``results`` (``classes``: only these user classes), and its env."""
    full_env = locust_env(config, env)
    token, archives = bool(full_env.get("LIVERANK_ADMIN_TOKEN")), bool(full_env.get("LIVERANK_BUNDLE_ARCHIVE"))
    background = int(token) + int(token and archives)
    if classes:
        background = sum(name in ("DeltaUser", "BundleSwapUser") for name in classes)
    total = config.users + background
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url]
    command += ["-u", str(total), "-r", str(config.spawn_rate or total), "-t", f"{config.duration_s}s"]
    command += ["--csv", str(results / "locust"), "--json-file", str(results / "locust_stats")]
    command += ["--html", str(results / "report.html")]
    command += ["--logfile", str(results / "locust.log"), "--only-summary", "--stop-timeout", str(STOP_TIMEOUT_S)]
    return [*command, *classes], full_env


def locust_run(
    config: RunConfig, url: str, results: Path, env: dict[str, str], *, classes: tuple[str, ...] = ()
) -> int:
    """Run headless locust into ``results``; its exit code."""
    command, full_env = locust_command(config, url, results, env, classes=classes)
    return subprocess.run(command, env=full_env, check=False).returncode


def histogram_percentile(histogram: dict[float, int], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a {value: count} histogram (locust's rounded response times)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = math.ceil(q / 100.0 * total), 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


def summary(results: Path) -> dict[str, Any]:
    """Per request type and name: count, failures, p50, p99, max (ms), from the final stats locust writes at exit
    (``locust_stats.json``; the CSVs are rewritten every 2 s and can miss the last requests)."""
    path = results / "locust_stats.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        histogram = {float(ms): int(n) for ms, n in entry["response_times"].items()}
        rows[f"{entry['method']} {entry['name']}"] = {
            "count": entry["num_requests"],
            "failures": entry["num_failures"],
            "p50_ms": histogram_percentile(histogram, 50),
            "p99_ms": histogram_percentile(histogram, 99),
            "max_ms": entry["max_response_time"],
        }
    return {"requests": rows, "failures": sum(row["failures"] for row in rows.values())}


def format_summary(result: dict[str, Any]) -> str:
    lines = [f"{'request':<28} {'count':>7} {'fails':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for name, row in result["requests"].items():
        p50, p99 = (f"{row[k]:.0f}" if row[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
        lines.append(f"{name:<28} {row['count']:>7} {row['failures']:>6} {p50:>8} {p99:>8} {row['max_ms']:>8.0f}")
    return "\n".join(lines)


def verdict(locust_code: int, result: dict[str, Any], *, expect_deltas: bool) -> list[str]:
    """Why the run failed; empty if it passed."""
    problems = []
    requests = result["requests"]
    if result["failures"]:
        problems.append(f"{result['failures']} failed requests (see locust_failures.csv and report.html)")
    if not requests.get("POST /v1/rank", {}).get("count"):
        problems.append("no /v1/rank request was made")
    if expect_deltas and not requests.get("VISIBLE push-to-visible", {}).get("count"):
        problems.append("no push-to-visible was measured")
    if locust_code != 0 and not problems:
        problems.append(f"locust exited with code {locust_code} (exceptions in users? see locust.log)")
    return problems


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m liverank.loadtest.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=int(env("DURATION") or 30), help="seconds (DURATION, 30)")
    p.add_argument("--users", type=int, default=int(env("USERS") or 3), help="ranking users (USERS, 3)")
    p.add_argument("--spawn-rate", type=float, default=float(env("SPAWN_RATE") or 0) or None, help="SPAWN_RATE")
    p.add_argument("--host", default=env("HOST") or None, help="an existing server (HOST); default: start one")
    p.add_argument("--shape", choices=["step", "spike"], default=env("SHAPE") or None, help="load shape (SHAPE)")
    p.add_argument("--results-dir", type=Path, default=env("RESULTS_DIR") or None, help="default results/loadtest-<ts>")
    p.add_argument("--seed", type=int, default=int(env("LIVERANK_SEED") or 0), help="payload and bundle seed")
    p.add_argument("--delta-interval-s", type=float, help="LIVERANK_DELTA_INTERVAL_S (1.0)")
    p.add_argument("--swap-interval-s", type=float, help="LIVERANK_SWAP_INTERVAL_S (60)")
    p.add_argument("--candidates", type=int, help="LIVERANK_CANDIDATES (500)")
    return p


def results_folder(given: Path | None, kind: str) -> Path:
    folder = given or Path("results") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = (
        ("LIVERANK_DELTA_INTERVAL_S", args.delta_interval_s),
        ("LIVERANK_SWAP_INTERVAL_S", args.swap_interval_s),
        ("LIVERANK_CANDIDATES", args.candidates),
    )
    config = RunConfig(args.duration, args.users, args.spawn_rate, args.host, args.shape, seed=args.seed)
    config.locust_env = {name: str(value) for name, value in settings if value is not None}
    config.results_dir = results = results_folder(args.results_dir, "loadtest")
    server = None if config.host else LocalServer(results / "server.log", seed=config.seed)
    env: dict[str, str] = {}
    try:
        if server is None:
            url = (config.host or "").rstrip("/")
            wait_ready(url, 10.0)
        else:
            url = server.start().url
            env = {
                "LIVERANK_ADMIN_TOKEN": server.token,
                "LIVERANK_BUNDLE_ARCHIVE": os.pathsep.join(map(str, server.archives)),
            }
        if not locust_env(config, env).get("LIVERANK_ADMIN_TOKEN"):
            print("loadtest: LIVERANK_ADMIN_TOKEN is not set: ranking users only (no deltas, no bundle swaps)")
        print(f"loadtest: {url}, results in {results}", flush=True)
        code = locust_run(config, url, results, env)
    except (ServerNotStarted, RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"loadtest: cannot start: {exc} (server log: {results / 'server.log'})", file=sys.stderr)
        return 2
    finally:
        server_code = None if server is None else server.stop()
    result = summary(results)
    problems = verdict(code, result, expect_deltas=bool(locust_env(config, env).get("LIVERANK_ADMIN_TOKEN")))
    if server_code not in (0, None):
        problems.append(f"the server exited with code {server_code} (see server.log)")
    record = {"config": asdict(config), "url": url, "locust_exit_code": code, "server_exit_code": server_code}
    (results / "run.json").write_text(json.dumps({**record, **result, "problems": problems}, indent=2, default=str))
    print(format_summary(result))
    for problem in problems:
        print(f"loadtest: FAILED: {problem}", file=sys.stderr)
    if not problems:
        total = sum(row["count"] for row in result["requests"].values())
        print(f"loadtest: passed: {total} requests, no failures")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
