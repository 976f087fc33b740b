"""The memory of a whole process tree with shared pages counted once (PSS), on a real tree of two processes that
map one shared file: the tree's sum counts the shared pages once, so it is at least what either process holds and
well below the sum of their RSS."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from liverank.server_process import process_status_bytes, process_tree, process_tree_pss, process_tree_pss_bytes

SHARED_BYTES = 64 * 1024**2
PRIVATE_BYTES = 32 * 1024**2  # more than an idle interpreter's own memory, so the tree outweighs either process
PAGE = 4096

# Maps the shared file and writes to every page of it (MAP_SHARED: the writes land in the one page cache copy),
# touches a private buffer, then (parent only) starts the child; says "ready" once both are done; waits for stdin
# to close.
_SCRIPT = f"""
import mmap, subprocess, sys
path, role = sys.argv[1], sys.argv[2]
with open(path, "r+b") as f:
    shared = mmap.mmap(f.fileno(), {SHARED_BYTES})
for offset in range(0, {SHARED_BYTES}, {PAGE}):
    shared[offset] = 1
private = bytearray({PRIVATE_BYTES})
private[::{PAGE}] = b"\\x01" * ({PRIVATE_BYTES} // {PAGE})
child = None
if role == "parent":
    child = subprocess.Popen([sys.executable, "-c", sys.argv[3], path, "child"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\\n"
print("ready", flush=True)
sys.stdin.read()
if child is not None:
    child.stdin.close()
    child.wait()
"""


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    shared = tmp_path / "shared.bin"
    shared.write_bytes(b"")
    with shared.open("r+b") as handle:
        handle.truncate(SHARED_BYTES)
    parent = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(shared), "parent", _SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    assert parent.stdin is not None
    try:
        assert parent.stdout.readline() == b"ready\n"
        yield parent
    finally:
        parent.stdin.close()
        parent.wait(60)
        parent.stdout.close()


def test_the_tree_counts_shared_pages_once(two_processes: subprocess.Popen[bytes]) -> None:
    tree = process_tree(two_processes.pid)
    assert len(tree) == 2
    assert tree[0] == two_processes.pid
    rss = [process_status_bytes(pid) for pid in tree]
    assert all(r is not None and r >= SHARED_BYTES + PRIVATE_BYTES for r in rss), rss
    pss = process_tree_pss_bytes(two_processes.pid)
    assert pss is not None
    # Both private buffers, and the shared file once (its pages are mapped by these two processes only).
    assert pss >= SHARED_BYTES + 2 * PRIVATE_BYTES
    assert pss >= max(r for r in rss if r is not None)
    # The shared file is not counted twice, as a sum of RSS would count it.
    assert pss < sum(r for r in rss if r is not None) - SHARED_BYTES // 2
    split = process_tree_pss(two_processes.pid)
    assert split is not None
    assert split["Pss"] == pss
    if "Pss_File" in split:  # kernels since 5.14 split PSS: the file once, in file pages; the buffers, anonymous
        assert split["Pss_File"] >= SHARED_BYTES
        assert split["Pss_Anon"] >= 2 * PRIVATE_BYTES


def test_a_process_that_is_gone_has_no_tree() -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait(60)
    assert process_tree(finished.pid) == []
    assert process_tree_pss_bytes(finished.pid) is None
