"""The two ranking servers as child processes: ``liverank serve`` and the baseline app, on 127.0.0.1.

Each is started, polled until it answers its readiness URL, and stopped with SIGTERM (then SIGKILL after a grace
period). Their CPU time is read from ``/proc/<pid>/stat`` for the whole process tree (a server's workers and its
writer process included), so the benchmark can say how much of the machine each server used while it was measured.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from liverank.benchmarks.redis_peer import free_port

_REPO = Path(__file__).resolve().parent.parent
_STOP_GRACE_S = 30.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A server child process, logging to a file; ``start`` returns once ``ready_path`` answers 200."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.port = port
        self.ready_path = ready_path
        self.log_path = log_path
        self.env = env
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout_s: float) -> None:
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=_REPO, env=self.env
            )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self._proc.returncode}; see {self.log_path}")
                try:
                    if client.get(self.ready_path).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} was not ready within {timeout_s:.0f} s; see {self.log_path}")
                time.sleep(0.1)
        self.startup_s = time.perf_counter() - started

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used so far: all threads of the process and of every
        descendant (workers, the writer process), including descendants that have exited since."""
        return process_tree_cpu_s(self.pid)

    def counter(self, name: str) -> float | None:
        """A Prometheus counter from the server's ``/metrics``, summed over its label sets (None: not exported)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=30.0).text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if _is_sample_of(line, name)]
        return sum(values) if values else None

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def _is_sample_of(line: str, name: str) -> bool:
    return line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (field 3 on), or None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def process_tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and all its descendants. Each process counts its own time (utime + stime) and the
    time of children it has reaped (cutime + cstime): every process of the tree is counted once, alive or not."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total_ticks = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        fields = _stat_fields(pid)
        if fields is None:
            continue
        total_ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        pending.extend(children.get(pid, ()))
    return total_ticks / _CLK_TCK


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


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK


def liverank_server(
    data_dir: Path, bundle: Path, token: str, onnx_threads: int, log_dir: Path, workers: int | None = None
) -> ServerProcess:
    """``liverank serve`` with a fresh data dir, the bundle to go live, an admin token; ``workers`` worker processes
    (``--workers``; None: the command's own default, and no flag is passed)."""
    port = free_port()
    argv = [sys.executable, "-m", "liverank.cli", "serve", "--data-dir", str(data_dir), "--bundle", str(bundle)]
    argv += ["--port", str(port), "--onnx-threads", str(onnx_threads), "--log-level", "warning"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    env = {**os.environ, "LIVERANK_ADMIN_TOKEN": token}
    suffix = "" if workers is None else f"-w{workers}"
    return ServerProcess("liverank serve", argv, port, "/readyz", log_dir / f"liverank-serve{suffix}.log", env)


def baseline_server(bundle: Path, redis_port: int, onnx_threads: int, log_dir: Path) -> ServerProcess:
    """The baseline app (FastAPI + Redis MGET + ORT + pydantic), one uvicorn process."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "liverank.benchmarks.baseline_app",
        "--bundle",
        str(bundle),
        "--redis-port",
        str(redis_port),
    ]
    argv += ["--port", str(port), "--onnx-threads", str(onnx_threads)]
    return ServerProcess("baseline", argv, port, "/healthz", log_dir / "baseline.log", dict(os.environ))
