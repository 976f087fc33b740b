"""What every benchmark command shares: a work directory (kept on request) and the JSON result file."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from liverank.benchmarks.steplog import StepLog


@contextmanager
def run_dir(workdir: Path | None, keep: bool, prefix: str, log: StepLog) -> Iterator[Path]:
    """A fresh directory under ``workdir`` (or the system temp dir), removed afterwards unless ``keep``."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    log("work directory: %s", path)
    try:
        yield path
    finally:
        if keep:
            log("kept %s", path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
