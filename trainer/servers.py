"""``liverank serve`` child processes for the demo and the replay experiments: a fresh data dir and admin token each.

They serve through real server processes over HTTP, exactly as users run them; starting, readiness and the stop
are ``liverank.server_process``'s, shared with the benchmarks, the load tests and the reliability tests.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from liverank.server_process import ServerProcess, serve_command

_MAP_SIZE_BYTES = 8 * 1024**3


class LiverankServer(ServerProcess):
    """One ``liverank serve`` on 127.0.0.1 with its own data dir, a random admin token (``token``) and a log file
    ``server-<name>.log`` in ``log_dir``; ``start`` returns it once it is ready."""

    def __init__(
        self, name: str, data_dir: Path, bundle: Path, log_dir: Path, *, extra_env: dict[str, str] | None = None
    ):
        self.token = secrets.token_urlsafe(16)
        env = {
            **os.environ,
            "LIVERANK_ADMIN_TOKEN": self.token,
            "LIVERANK_MAP_SIZE_BYTES": str(_MAP_SIZE_BYTES),
            **(extra_env or {}),
        }
        super().__init__(serve_command(data_dir, bundle), log_path=log_dir / f"server-{name}.log", env=env, name=name)
        self.data_dir = data_dir
        self.bundle = bundle
