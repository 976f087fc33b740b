"""The README runs as written: its command blocks, in order, in a fresh directory, against a real server.

The test changes one thing: the port. The README shows the default port 8000; the test runs on a free port (several
test runs may share a machine): it sets ``LIVERANK_PORT`` for the blocks and substitutes the port for 8000 in their
text. Everything else runs exactly as pasted, with ``.venv`` in the working directory pointing at the interpreter's
own virtual environment (the one ``make test`` created).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.docs.readme_blocks import Block, read_blocks

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_PORT = "8000"
BLOCK_TIMEOUT_S = 600
READY_DEADLINE_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _error_bodies(output: str) -> list[str]:
    """Lines that are a liverank error body (``{"detail", "code"}``) or an OIP one (``{"error"}``)."""
    found = []
    for line in output.splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and ({"detail", "code"} <= doc.keys() or "error" in doc):
            found.append(line)
    return found


def test_every_command_block_says_how_the_test_treats_it() -> None:
    blocks = read_blocks(README)
    unmarked = [f"README.md:{b.line}" for b in blocks if b.is_command and b.mode is None]
    assert not unmarked, f"command blocks without a readme-test marker: {unmarked}"
    no_reason = [f"README.md:{b.line}" for b in blocks if b.mode == "skip" and not b.reason]
    assert not no_reason, f"skipped blocks must say why: {no_reason}"
    modes = {b.mode for b in blocks}
    assert {"run", "background"} <= modes, "the quick start must start a server and run commands against it"


class _Session:
    """The working directory, environment and background processes of one README run."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        (workdir / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        # A server refuses LIVERANK_* variables it does not know: start from an environment without the caller's.
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("LIVERANK_")}
        self.env["LIVERANK_PORT"] = str(port)
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []

    def text(self, block: Block) -> str:
        return re.sub(rf"\b{DEFAULT_PORT}\b", str(self.port), block.text)

    def run(self, block: Block) -> None:
        text = self.text(block)
        if block.language == "python":
            command = [sys.executable, "-c", text]
        else:
            command = ["bash", "-c", f"set -euo pipefail\n{text}"]
        done = subprocess.run(
            command,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        output = done.stdout + done.stderr
        where = f"README.md:{block.line}"
        assert done.returncode == 0, f"{where} exited {done.returncode}:\n{text}\n--- output ---\n{output}"
        errors = _error_bodies(done.stdout)
        assert not errors, f"{where} printed an error body:\n{text}\n--- errors ---\n" + "\n".join(errors)

    def start(self, block: Block) -> None:
        log_path = self.workdir / f"background-{block.line}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", f"set -euo pipefail\n{self.text(block)}"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops everything it started
            )
        self.background.append((process, log_path))
        deadline = time.monotonic() + READY_DEADLINE_S
        url = f"http://127.0.0.1:{self.port}/readyz"
        while True:
            if process.poll() is not None:
                pytest.fail(f"README.md:{block.line} exited {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                log_text = log_path.read_text()
                pytest.fail(f"README.md:{block.line}: {url} not ready after {READY_DEADLINE_S} s:\n{log_text}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process, _ in reversed(self.background):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(30)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[_Session]:
    running = _Session(tmp_path, _free_port())
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
def test_readme_blocks_run_as_pasted(session: _Session) -> None:
    ran = 0
    for block in read_blocks(README):
        if block.mode == "run":
            session.run(block)
            ran += 1
        elif block.mode == "background":
            session.start(block)
    assert ran, "no runnable README block"
    assert session.background, "the README's quick start starts no server"
