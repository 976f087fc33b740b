"""A server as a child process: start it, read its port back, wait until it is ready, stop it.

The one helper behind every ``liverank serve`` that liverank starts for itself: the demo and the replay
experiments, the benchmarks (which also start their baseline app through it), the load tests, the reliability tests
and ``scripts/kill9_series.py``. It imports no server code, only ``liverank.errors`` (the load tests, which may import
none, use it too): the server runs as ``python -m liverank.cli serve`` (or any other command line) in its own
process.

Port 0 by default: the server binds a free port itself and the port is read back from uvicorn's start-up line
(``Uvicorn running on http://127.0.0.1:<port>``), so two servers can never race for one port. The child's stdout
and stderr go to one log file, appended to on every start, so a server can be restarted (after a stop or a kill)
on the same data directory. ``stop`` sends SIGTERM (uvicorn's graceful shutdown) and SIGKILL after a grace period;
``kill`` sends SIGKILL at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from liverank.errors import LiverankError

_PORT_LINE = re.compile(rb"Uvicorn running on http://[^:\s]+:(\d+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 30.0
_POLL_S = 0.05


def python_liverank() -> list[str]:
    """``liverank`` run by this interpreter: the same venv and the same sys.path (PYTHONPATH included)."""
    return [sys.executable, "-m", "liverank.cli"]


def serve_command(
    data_dir: Path, bundle: Path | None = None, args: Sequence[str] = (), *, launcher: Sequence[str] | None = None
) -> list[str]:
    """The command line of ``liverank serve`` on port 0 (the port is read back from the log)."""
    command = [*(launcher or python_liverank()), "serve", "--data-dir", str(data_dir), "--port", "0"]
    if bundle is not None:
        command += ["--bundle", str(bundle)]
    return command + list(args)


class ServerNotStarted(LiverankError):
    """A server child process did not become ready: it ended (e.g. a refused start-up) or ran out of time. The
    message carries the end of its log."""

    code = "server_not_started"


class ServerExited(ServerNotStarted):
    """The server process ended before it was ready (e.g. a refused start-up)."""

    code = "server_exited"

    def __init__(self, name: str, returncode: int, log_tail: str) -> None:
        super().__init__(f"{name} exited with {returncode}:\n{log_tail}")
        self.returncode = returncode
        self.log_tail = log_tail


class ServerProcess:
    """One server child process on 127.0.0.1, logging to ``log_path``; restartable; a context manager (stops it).

    ``port=None`` reads the port back from uvicorn's start-up line (the command must then ask for port 0 and log at
    info level, as ``serve_command`` does); a given port is used as is.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        ready_path: str = "/readyz",
        name: str = "liverank serve",
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.ready_path = ready_path
        self.name = name
        self._port = port
        self._fixed_port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.startup_s: float | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} has no port yet: start it first")
        return self._port

    @property
    def url(self) -> str:
        return "" if self._port is None else f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, ready: bool = True, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        """Start the process; return once its port is known and (``ready``) ``ready_path`` answers 200."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")  # a caller's mistake, not a user's
        self._close_log()
        started = time.monotonic()
        deadline = started + timeout_s
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process; closed when reaped
        self._port = self._fixed_port
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        self.starts += 1
        while self._port is None:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                found = _PORT_LINE.search(log.read())
            if found:
                self._port = int(found.group(1))
                break
            self._check_alive_before(deadline)
            time.sleep(_POLL_S)
        if ready:
            self.wait_ready(deadline - time.monotonic())
        self.startup_s = time.monotonic() - started
        return self

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll ``ready_path`` until it answers 200; raise if the process ends or the time runs out."""
        deadline = time.monotonic() + max(timeout_s, 1.0)
        wait_ready(
            self.url, deadline - time.monotonic(), self.ready_path, check=lambda: self._check_alive_before(deadline)
        )

    def _check_alive_before(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            returncode = self.proc.returncode
            self._close_log()
            raise ServerExited(self.name, returncode, self.log_text()[-4000:])
        if time.monotonic() > deadline:
            self.kill()
            raise ServerNotStarted(
                f"{self.name} was not ready in time; log {self.log_path}:\n{self.log_text()[-4000:]}"
            )

    def wait_exit(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """For a process expected to end by itself (a refused start-up): its exit code."""
        assert self.proc is not None
        try:
            returncode = self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.kill()
        self._close_log()
        return returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM (graceful shutdown: the app's lifespan closes the store), SIGKILL if it hangs. The exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self, timeout_s: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_bytes(self, field: str = "VmRSS") -> int | None:
        """A memory figure of /proc/<pid>/status (``VmRSS``; ``RssAnon`` leaves out mapped files such as LMDB's),
        in bytes; None if the process is gone."""
        return None if self.pid is None else process_status_bytes(self.pid, field)

    def pss(self) -> dict[str, int] | None:
        """The whole server's memory, shared pages counted once: PSS summed over this process and every descendant
        (the master, the writer process, the worker processes), with its anon/file/shmem split (``PSS_FIELDS``), in
        bytes; None if it is not running."""
        return None if self.pid is None else process_tree_pss(self.pid)

    def pss_bytes(self) -> int | None:
        """The whole server's PSS (``pss``), in bytes."""
        return None if self.pid is None else process_tree_pss_bytes(self.pid)

    def process_count(self) -> int:
        """How many processes the server runs now: this one and its live descendants."""
        return 0 if self.pid is None else len(process_tree(self.pid))

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used so far: all threads of the process and of every
        descendant (worker processes, the writer process), including descendants that have exited since."""
        assert self.pid is not None
        return process_tree_cpu_s(self.pid)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def wait_ready(
    url: str, timeout_s: float, ready_path: str = "/readyz", *, check: Callable[[], None] | None = None
) -> None:
    """Poll ``url + ready_path`` until it answers 200; ``check`` (called between polls) may raise to give up early.
    Raises ServerNotStarted when the time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=5.0) as client:
        while True:
            try:
                if client.get(ready_path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise ServerNotStarted(f"{url} was not ready after {timeout_s:.0f} s")
            time.sleep(_POLL_S)


def process_status_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of /proc/<pid>/status in bytes; None if the process is gone or the field unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (field 3 on), or None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (children, their children, ...), root first; empty if ``root`` is gone.
    One pass over /proc: a process that starts or ends during the walk may be missed, never counted twice."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    if _stat_fields(root) is None:
        return []
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def process_tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and all its descendants. Each process counts its own time (utime + stime) and the
    time of children it has reaped (cutime + cstime): every process of the tree is counted once, alive or not."""
    total_ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total_ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total_ticks / _CLK_TCK


# Fields of /proc/<pid>/smaps_rollup: the proportional set size (a page shared by k processes counts 1/k in each)
# and its split into anonymous memory (heaps), file pages (LMDB's map, libraries) and shared memory (/dev/shm).
PSS_FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")


def process_pss(pid: int) -> dict[str, int] | None:
    """The ``PSS_FIELDS`` of one process that its kernel reports, in bytes; None if the process is gone (or a
    zombie) or its rollup is unreadable."""
    wanted = {name.encode() + b":": name for name in PSS_FIELDS}
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                name = wanted.get(line.split(None, 1)[0]) if line.strip() else None
                if name is not None:
                    out[name] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return out if "Pss" in out else None


def process_tree_pss(root: int) -> dict[str, int] | None:
    """``process_pss`` summed over ``root`` and all its descendants: the tree's memory with shared pages counted once.
    A page mapped by k processes of the tree adds 1/k to each, so the tier in /dev/shm that the writer and every
    worker map, LMDB's file pages and the interpreter's shared libraries count once in the sum (pages also mapped by
    processes outside the tree count only the tree's share). None if ``root`` is gone."""
    readings = [process_pss(pid) for pid in process_tree(root)]
    if not readings or readings[0] is None:
        return None
    total: dict[str, int] = {}
    for reading in readings:
        for name, value in (reading or {}).items():
            total[name] = total.get(name, 0) + value
    return total


def process_tree_pss_bytes(root: int) -> int | None:
    """The PSS of ``root`` and all its descendants summed (``process_tree_pss``), in bytes; None if it is gone."""
    total = process_tree_pss(root)
    return None if total is None else total["Pss"]
