"""Handing freed heap back to the operating system after a dense swap.

An old ONNX Runtime session is freed when its last request finishes, but glibc keeps the freed pages in its
per-thread arenas, so resident memory grew by ~10 MB per swap under concurrent ranking (the soak run in
BENCHMARKS.md). ``malloc_trim(0)`` returns them: measured 62 -> 73 MB after 20 swaps with 4 ranking threads,
against 62 -> 125 MB without it. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

_TRIM_DELAY_S = 2.0  # in-flight requests on the old session finish first


def _load_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_trim()


def release_free_memory() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def release_free_memory_soon() -> None:
    """Trim once the requests that still hold the replaced model are done."""
    if _malloc_trim is None:
        return
    timer = threading.Timer(_TRIM_DELAY_S, release_free_memory)
    timer.daemon = True
    timer.start()
