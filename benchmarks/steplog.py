"""Progress lines on stderr: seconds since the run began, then what the benchmark is doing."""

from __future__ import annotations

import sys
import time
from typing import IO


class StepLog:
    """Writes one line per step, so a long run can be followed (and a run under nohup leaves a readable log)."""

    def __init__(self, stream: IO[str] | None = None, *, quiet: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._quiet = quiet
        self._started = time.monotonic()

    def __call__(self, message: str, *args: object) -> None:
        if self._quiet:
            return
        text = message % args if args else message
        self._stream.write(f"[{time.monotonic() - self._started:8.1f} s] {text}\n")
        self._stream.flush()
