"""Backpressure with a real server: the durable inbox is bounded (``LIVERANK_INBOX_MAX_DEPTH=3``), so producers that
push large deltas faster than the updater applies them get ``429`` with ``Retry-After`` past the bound, the queue
never grows past it, the server's heap does not grow with the refused bytes, and every delta acknowledged with 202
is applied in the end (producers retry the refused ones).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from liverank.store import SlotDelta, SparseDelta, encode_delta
from tests.reliability.conftest import ADMIN, DIM, ServerProcess

pytestmark = pytest.mark.slow

MAX_DEPTH = 3
PRODUCERS = 4
DELTAS_PER_PRODUCER = 40
ROWS_PER_DELTA = 20_000  # ~1 MB binary; ids spread over the key space, so applying dirties many pages
RETRY_S = 0.02  # faster than Retry-After asks: a pushy client, which the bound must hold against too


def _delta(schema: str, producer: int, seq: int) -> bytes:
    # Each producer rewrites the same rows (values, not gradients): the table, and the RAM tier, stay one size.
    ids = np.arange(ROWS_PER_DELTA, dtype=np.uint64) * np.uint64(1 << 20) + np.uint64(producer)
    rows = SlotDelta(
        ids, np.full((ROWS_PER_DELTA, DIM), float(seq), dtype=np.float32), np.full(ROWS_PER_DELTA, seq, dtype=np.int64)
    )
    return encode_delta(SparseDelta(f"p{producer}", seq, schema, seq, {"item_id": rows}))


def _rss_anon_bytes(server: ServerProcess) -> int:
    """Anonymous resident memory (the heap): LMDB's file-backed pages, which grow with the rows, do not count."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/<pid>/status")


def test_a_full_inbox_answers_429_with_retry_after_and_stays_bounded(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(env={"LIVERANK_INBOX_MAX_DEPTH": str(MAX_DEPTH)}).start()
    with server.client() as client:
        schema = client.get("/v1/model").json()["manifest"]["schema_hash"]
    statuses: Counter[int] = Counter()
    retry_after: set[str | None] = set()
    unexpected: list[str] = []
    depths: list[int] = []  # /admin/status, polled from outside
    # Read in the enqueue's own write transaction, so exact whatever the timing: the depth after each accepted
    # delta (202 answers carry it), and the depth each refusal found (429 messages name it).
    accepted_depths: list[int] = []
    refused_depths: list[int] = []
    pushed_bytes = [0]
    lock = threading.Lock()
    done = threading.Event()

    def produce(index: int, seqs: range) -> None:
        with server.client(timeout_s=60) as own:
            for seq in seqs:
                payload = _delta(schema, index, seq)
                while True:
                    answer = own.post("/admin/deltas", content=payload, headers=ADMIN)
                    with lock:
                        statuses[answer.status_code] += 1
                        pushed_bytes[0] += len(payload)
                    if answer.status_code == 202:
                        with lock:
                            accepted_depths.append(answer.json()["inbox_depth"])
                        break
                    if answer.status_code != 429 or answer.json().get("code") != "inbox_full":
                        unexpected.append(f"p{index}/{seq}: {answer.status_code} {answer.text[:200]}")
                        return
                    found = re.search(r"the inbox holds (\d+) deltas", answer.json().get("detail", ""))
                    with lock:
                        retry_after.add(answer.headers.get("retry-after"))
                        refused_depths.append(int(found.group(1)) if found else -1)
                    time.sleep(RETRY_S)

    def push_round(seqs: range) -> None:
        threads = [threading.Thread(target=produce, args=(i, seqs)) for i in range(PRODUCERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)

    def watch_depth() -> None:
        with server.client() as own:
            while not done.is_set():
                depths.append(own.get("/admin/status", headers=ADMIN).json()["inbox_depth"])
                time.sleep(0.005)

    watcher = threading.Thread(target=watch_depth)
    watcher.start()
    # The first round fills the allocator's arenas and the RAM tier (every round rewrites the same rows); the
    # second pushes as much again, and the heap must not grow with it.
    half = DELTAS_PER_PRODUCER // 2
    push_round(range(1, half + 1))
    heap_before = _rss_anon_bytes(server)
    bytes_before = pushed_bytes[0]
    push_round(range(half + 1, DELTAS_PER_PRODUCER + 1))
    heap_after = _rss_anon_bytes(server)
    done.set()
    watcher.join(30)

    assert not unexpected, unexpected
    assert statuses[202] == PRODUCERS * DELTAS_PER_PRODUCER
    assert set(statuses) == {202, 429}, statuses  # the bound was really hit
    assert retry_after == {"1"}
    assert set(refused_depths) == {MAX_DEPTH}, Counter(refused_depths)  # refused exactly at the bound
    assert max(accepted_depths) == MAX_DEPTH  # filled up to it
    assert max(depths) <= MAX_DEPTH, max(depths)  # and never past it, seen from outside too
    growth = heap_after - heap_before
    second_round_bytes = pushed_bytes[0] - bytes_before
    assert growth < 16 * 1024**2, f"heap grew by {growth} bytes while {second_round_bytes} more bytes were pushed"
    with server.client() as client:
        deadline = time.monotonic() + 300
        while (status := client.get("/admin/status", headers=ADMIN).json())["inbox_depth"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    assert status["applied_seq"] == {f"p{i}": DELTAS_PER_PRODUCER for i in range(PRODUCERS)}
    server.stop()
    print(
        f"backpressure: {dict(statuses)}; max depth {max(depths)}; heap growth {growth / 1e6:.1f} MB "
        f"over a second round of {second_round_bytes / 1e6:.0f} MB pushed"
    )
