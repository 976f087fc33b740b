"""The two ranking servers of the rank benchmark as child processes: ``liverank serve`` and the baseline app.

Starting, readiness and the stop (SIGTERM, then SIGKILL after a grace period) are ``liverank.server_process``'s.
Their CPU time is read from ``/proc/<pid>/stat`` (``ServerProcess.cpu_s``), so the benchmark can say how much of the
machine each process used while it was measured.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from liverank.benchmarks.redis_peer import free_port
from liverank.server_process import ServerProcess, serve_command

_REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK


def liverank_server(data_dir: Path, bundle: Path, token: str, onnx_threads: int, log_dir: Path) -> ServerProcess:
    """``liverank serve`` with a fresh data dir, the bundle to go live, an admin token, one process."""
    command = serve_command(data_dir, bundle, ["--onnx-threads", str(onnx_threads)])
    env = {**os.environ, "LIVERANK_ADMIN_TOKEN": token}
    return ServerProcess(command, log_path=log_dir / "liverank-serve.log", env=env, cwd=_REPO)


def baseline_server(bundle: Path, redis_port: int, onnx_threads: int, log_dir: Path) -> ServerProcess:
    """The baseline app (FastAPI + Redis MGET + ORT + pydantic), one uvicorn process."""
    port = free_port()
    command = [sys.executable, "-m", "liverank.benchmarks.baseline_app", "--bundle", str(bundle)]
    command += ["--redis-port", str(redis_port), "--port", str(port), "--onnx-threads", str(onnx_threads)]
    return ServerProcess(
        command, log_path=log_dir / "baseline.log", cwd=_REPO, port=port, ready_path="/healthz", name="baseline"
    )
