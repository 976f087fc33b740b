"""A private redis-server for the benchmark: 127.0.0.1, a free port, no persistence; started and stopped by us."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 20.0


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process holding nothing on disk (``--save ''``, ``--appendonly no``)."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "redis-server.log"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [
            self.executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self._log),
        ]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        client = self.client()
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}; see {self._log}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING within {_START_TIMEOUT_S} s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_STOP_TIMEOUT_S)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=600)

    def info(self) -> dict[str, Any]:
        """Server version and memory use (``INFO server`` and ``INFO memory``)."""
        client = self.client()
        try:
            server: dict[str, Any] = client.info("server")
            memory: dict[str, Any] = client.info("memory")
        finally:
            client.close()
        return {
            "redis_version": server.get("redis_version"),
            "used_memory_bytes": memory.get("used_memory"),
            "io_threads": server.get("io_threads_active"),
        }


def load_rows(client: redis.Redis, keys: list[bytes], values: list[bytes], mset_pairs: int = 10_000) -> None:
    """Write rows with pipelined MSETs of ``mset_pairs`` keys each (one round trip per call)."""
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(keys), mset_pairs):
        pipe.mset(dict(zip(keys[start : start + mset_pairs], values[start : start + mset_pairs], strict=True)))
    pipe.execute()
