"""Running ``liverank serve`` as a child process: a free port, a fresh data dir, readiness, and a clean stop.

The demo and the replay experiments serve through real server processes over HTTP, exactly as users run them.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from liverank.processes import stop_process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One ``liverank serve`` on 127.0.0.1 with its own data dir and admin token; a context manager."""

    def __init__(
        self, name: str, data_dir: Path, bundle: Path, log_dir: Path, *, extra_env: dict[str, str] | None = None
    ):
        self.name = name
        self.data_dir = data_dir
        self.bundle = bundle
        self.token = secrets.token_urlsafe(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{name}.log"
        self._extra_env = extra_env or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        env = {
            **os.environ,
            "LIVERANK_ADMIN_TOKEN": self.token,
            "LIVERANK_MAP_SIZE_BYTES": str(8 * 1024**3),
            **self._extra_env,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process; closed in stop()
        self._log_file = log
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "liverank.cli",
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--bundle",
                str(self.bundle),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    self.stop()  # closes the log file
                    raise RuntimeError(
                        f"server {self.name} exited with {self._process.returncode}; see {self.log_path}"
                    )
                try:
                    if client.get("/readyz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server {self.name} was not ready within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_process(self._process, timeout_s)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def rss_bytes(self) -> int | None:
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
