"""The two ranking servers of the rank benchmark as child processes: ``liverank serve`` and the baseline app.

Starting, readiness and the stop (SIGTERM, then SIGKILL after a grace period) are ``liverank.server_process``'s.
Their CPU time is read from ``/proc/<pid>/stat`` for the whole process tree (``ServerProcess.cpu_s``: a server's
workers and its writer process included), so the benchmark can say how much of the machine each server used while it
was measured.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import httpx

from liverank.benchmarks.redis_peer import free_port
from liverank.server_process import ServerProcess, serve_command

_REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK


def liverank_server(
    data_dir: Path, bundle: Path, token: str, onnx_threads: int, log_dir: Path, workers: int | None = None
) -> ServerProcess:
    """``liverank serve`` with a fresh data dir, the bundle to go live, an admin token; ``workers`` worker processes
    (``--workers``; None: the command's own default, and no flag is passed)."""
    args = ["--onnx-threads", str(onnx_threads)]
    if workers is not None:
        args += ["--workers", str(workers)]
    env = {**os.environ, "LIVERANK_ADMIN_TOKEN": token}
    suffix = "" if workers is None else f"-w{workers}"
    command = serve_command(data_dir, bundle, args)
    return ServerProcess(command, log_path=log_dir / f"liverank-serve{suffix}.log", env=env, cwd=_REPO)


@functools.cache
def serve_has_workers_flag() -> bool:
    """Whether this tree's ``liverank serve`` takes ``--workers`` (multi-worker serving)."""
    shown = subprocess.run(
        [sys.executable, "-m", "liverank.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=_REPO,
        check=False,
    )
    return "--workers" in shown.stdout


def metric_total(server: ServerProcess, name: str) -> float | None:
    """A Prometheus counter from the server's ``/metrics``, summed over its label sets (None: not exported)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30.0).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if _is_sample_of(line, name)]
    return sum(values) if values else None


def _is_sample_of(line: str, name: str) -> bool:
    return line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")


def baseline_server(bundle: Path, redis_port: int, onnx_threads: int, log_dir: Path) -> ServerProcess:
    """The baseline app (FastAPI + Redis MGET + ORT + pydantic), one uvicorn process."""
    port = free_port()
    command = [sys.executable, "-m", "liverank.benchmarks.baseline_app", "--bundle", str(bundle)]
    command += ["--redis-port", str(redis_port), "--port", str(port), "--onnx-threads", str(onnx_threads)]
    return ServerProcess(
        command, log_path=log_dir / "baseline.log", cwd=_REPO, port=port, ready_path="/healthz", name="baseline"
    )
