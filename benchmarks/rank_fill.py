"""Filling both ranking peers with the same W-500 rows, in one pass over the generated chunks.

liverank: the store is opened directly (before its server starts), the bundle's slots are declared and its schema hash
bound, and the rows go in through ``EmbeddingStore.apply`` as deltas (in key order). Redis: the same rows under keys
``<slot>:<id>`` with raw float32 vector bytes as values (pipelined MSETs), as the baseline reads them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from liverank.benchmarks.redis_peer import load_rows
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.w500 import W500Tables, fill_deltas
from liverank.store import EmbeddingStore
from liverank.store.format import IntIds
from liverank.store.manifest import Manifest

FILL_PRODUCER = "bench-fill"
MAP_SIZE_BYTES = 64 * 1024**3  # the server's default, so the server reopens the map at the size it was made


def redis_keys(slot: str, ids: IntIds) -> list[bytes]:
    """The baseline's keys: ``b"<slot>:<decimal id>"``."""
    prefix = slot.encode() + b":"
    return [prefix + b"%d" % i for i in ids.tolist()]


def fill_stores(
    store_path: Path,
    redis_client: redis.Redis | None,
    manifest: Manifest,
    tables: W500Tables,
    dim: int,
    chunk_rows: int,
    log: StepLog,
    *,
    map_size_bytes: int = MAP_SIZE_BYTES,
) -> dict[str, Any]:
    """Write every row of ``tables`` to a new liverank store (and to Redis, if given). Returns the fill figures.
    ``map_size_bytes``: the map size of the server that will open the store."""
    started = time.perf_counter()
    store_s = redis_s = 0.0
    done = 0
    next_report = 0.1
    total = tables.n_rows
    if redis_client is not None:
        redis_client.flushall()
    with EmbeddingStore.open(
        store_path, slots=list(manifest.slots), map_size_bytes=map_size_bytes, durability="process"
    ) as store:
        store.bind_schema(manifest.schema_hash)
        now_ms = time.time_ns() // 1_000_000
        deltas = fill_deltas(
            tables, dim, chunk_rows, producer=FILL_PRODUCER, schema_hash=manifest.schema_hash, updated_at_ms=now_ms
        )
        for delta in deltas:
            t0 = time.perf_counter()
            store.apply(delta)
            t1 = time.perf_counter()
            store_s += t1 - t0
            if redis_client is not None:
                for slot, rows in delta.slots.items():
                    assert not isinstance(rows.ids, tuple)
                    values = rows.values.tobytes()
                    width = rows.values.shape[1] * 4
                    load_rows(
                        redis_client,
                        redis_keys(slot, rows.ids),
                        [values[i : i + width] for i in range(0, len(values), width)],
                    )
                redis_s += time.perf_counter() - t1
            done += delta.n_rows
            if done / total >= next_report or done == total:
                peers = f"liverank {store_s:.0f} s" + ("" if redis_client is None else f", redis {redis_s:.0f} s")
                log("  fill: %s / %s rows (%s)", f"{done:,}", f"{total:,}", peers)
                next_report += 0.1
        flush_started = time.perf_counter()
        store.flush()
        store_s += time.perf_counter() - flush_started
        stats = store.stats()
    out: dict[str, Any] = {
        "rows": total,
        "rows_by_slot": tables.rows_by_slot(),
        "delta_rows": chunk_rows,
        "liverank_apply_s": store_s,
        "liverank_rows_per_s": total / store_s if store_s else None,
        "lmdb_used_bytes": stats.used_bytes,
        "wall_s": time.perf_counter() - started,
    }
    if redis_client is not None:
        keys = int(redis_client.dbsize())
        if keys != total:
            raise RuntimeError(f"redis holds {keys} keys after loading {total} rows")
        out["redis_load_s"] = redis_s
        out["redis_used_memory_bytes"] = redis_client.info("memory").get("used_memory")
    return out
