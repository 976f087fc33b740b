"""Filling the peers with the table: the liverank store (through ``EmbeddingStore.apply``) and Redis (MSET)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from liverank.benchmarks.redis_peer import load_rows
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.workload import Table
from liverank.store import EmbeddingStore, SlotConfig, SlotDelta, SparseDelta
from liverank.store.format import encode_int_keys, encode_values

BUILD_PRODUCER = "bench-build"
_REDIS_CHUNK_ROWS = 100_000


def build_store(path: Path, table: Table, slot: str, delta_rows: int, log: StepLog) -> dict[str, Any]:
    """Write the table into a new store with deltas of ``delta_rows`` rows (durability "process"), in key order.

    Returns the build figures; the store is closed (and flushed) afterwards.
    """
    n_deltas = -(-table.n_rows // delta_rows)
    started = time.perf_counter()
    apply_s = 0.0
    with EmbeddingStore.open(path, slots=[SlotConfig(slot, table.dim)], durability="process") as store:
        next_report = 0.1
        for seq, start in enumerate(range(0, table.n_rows, delta_rows), start=1):
            stop = min(start + delta_rows, table.n_rows)
            delta = SparseDelta(
                BUILD_PRODUCER,
                seq,
                "",
                table.updated_at_ms,
                {
                    slot: SlotDelta(
                        table.ids[start:stop],
                        table.vectors[start:stop],
                        np.full(stop - start, table.updated_at_ms, dtype=np.int64),
                    )
                },
            )
            t0 = time.perf_counter()
            store.apply(delta)
            apply_s += time.perf_counter() - t0
            if seq / n_deltas >= next_report or seq == n_deltas:
                log("  store build: %s / %s rows (%.0f rows/s)", f"{stop:,}", f"{table.n_rows:,}", stop / apply_s)
                next_report += 0.1
        flush_started = time.perf_counter()
        store.flush()
        flush_s = time.perf_counter() - flush_started
        stats = store.stats()
    return {
        "rows": table.n_rows,
        "delta_rows": delta_rows,
        "deltas": n_deltas,
        "durability": "process",
        "apply_s": apply_s,
        "rows_per_s": table.n_rows / apply_s,
        "flush_s": flush_s,
        "wall_s": time.perf_counter() - started,
        "lmdb_used_bytes": stats.used_bytes,
    }


def load_redis(client: redis.Redis, table: Table, slot_code: int, log: StepLog) -> dict[str, Any]:
    """Write the same rows to Redis under the same keys and values as LMDB holds (pipelined MSETs)."""
    client.flushall()
    started = time.perf_counter()
    updated = np.full(_REDIS_CHUNK_ROWS, table.updated_at_ms, dtype=np.int64)
    for start in range(0, table.n_rows, _REDIS_CHUNK_ROWS):
        stop = min(start + _REDIS_CHUNK_ROWS, table.n_rows)
        keys = encode_int_keys(slot_code, table.ids[start:stop])
        values = encode_values(table.vectors[start:stop], updated[: stop - start], np.dtype(np.float32))
        load_rows(client, keys, values)
        if stop == table.n_rows or (stop // _REDIS_CHUNK_ROWS) % 20 == 0:
            log("  redis load: %s / %s rows", f"{stop:,}", f"{table.n_rows:,}")
    seconds = time.perf_counter() - started
    loaded = int(client.dbsize())
    if loaded != table.n_rows:
        raise RuntimeError(f"redis holds {loaded} keys after loading {table.n_rows} rows")
    return {"rows": table.n_rows, "seconds": seconds, "rows_per_s": table.n_rows / seconds}
