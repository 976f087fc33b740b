"""What a result was measured on: machine, software versions, commit and date."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("numpy", "lmdb", "redis", "rich")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, from the first line of /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class SystemLoad:
    """How busy the whole machine was (every process, not only ours) between ``start`` and ``sample``.

    Other work on a shared machine skews timings; this is recorded beside them so a reader can tell.
    """

    def __init__(self) -> None:
        self._start = _cpu_jiffies()

    def sample(self) -> dict[str, Any]:
        end = _cpu_jiffies()
        busy: float | None = None
        if self._start is not None and end is not None and end[1] > self._start[1]:
            busy = (end[0] - self._start[0]) / (end[1] - self._start[1])
        return {"cpu_busy_fraction": busy, "load_avg_1_5_15": list(os.getloadavg())}


def _git(args: list[str], cwd: Path) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: read-only queries must not refresh (write) the index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(cwd: Path) -> dict[str, Any]:
    """The commit the code ran at, and whether tracked files differed from it."""
    commit = _git(["rev-parse", "HEAD"], cwd)
    changes = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info(repo: Path) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_bytes": memory_total_bytes(),
        "kernel": platform.release(),
        "git": git_commit(repo),
        "versions": package_versions(),
    }
