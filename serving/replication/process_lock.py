"""Mutual exclusion between the worker processes of one server (and the threads of each): an ``flock`` on a file
in the data directory. Replicated mode's per-server duties (carrying out a bundle record, publishing a snapshot)
must run once per server, whichever worker gets there first."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock on ``path`` for the block; yields False (without holding it) if ``wait`` is off and another
    process holds it. Closing the file releases the lock, also when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
