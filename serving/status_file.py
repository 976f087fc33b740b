"""Small JSON records in files, replaced whole (write a temporary file, then rename): readers see the old record or
the new one, never half of one, and neither side takes a lock.

Used for what the processes of one server tell each other often: each worker's heartbeat (``worker_sync``) and the
writer's status (``writer``). The writer's status used to be an LMDB record, but a write transaction waits for the
writer's own LMDB thread (``liverank.store.lmdb_applier``), and ``?wait=visible`` waits for that status.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson


def write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share a temporary
    tmp.write_bytes(orjson.dumps(record))
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record, or None if there is none (or it is not JSON: not written by this module)."""
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def remove_record(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
