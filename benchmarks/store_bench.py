"""``liverank bench store``: the embedding store against its peers, every figure from one run.

For each table size: build a store through ``EmbeddingStore.apply``, load the same rows into Redis, a Python dict and
a bare hash index; measure per-key lookup cost of every peer (alternating) on uniform and Zipf ids; first lookups
after an idle pause (optional); delta apply throughput with durability "process" and "power", with and without a
concurrent reader; and open-to-first-lookup.
"""

from __future__ import annotations

import gc
import shutil
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverank.benchmarks.delta_bench import DeltaMaker, run_deltas
from liverank.benchmarks.lmdb_worker import LmdbWorker
from liverank.benchmarks.lookup_bench import PeerSet, run_idle_lookups, run_lookups
from liverank.benchmarks.machine import SystemLoad, machine_info
from liverank.benchmarks.open_bench import StoreHandle
from liverank.benchmarks.peers import (
    DICT,
    HOT,
    KERNEL,
    NUMPY,
    REDIS,
    dict_gather,
    kernel_probe,
    numpy_probe,
    redis_mget,
)
from liverank.benchmarks.peers import store_lookup as store_lookup_fn
from liverank.benchmarks.redis_peer import RedisServer
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.store_build import build_store, load_redis
from liverank.benchmarks.targets import evaluate_targets
from liverank.benchmarks.workdir import run_dir
from liverank.benchmarks.workload import Distribution, Popularity, RowSampler, Table, make_table
from liverank.store import Durability, EmbeddingStore
from liverank.store.hash_index import HashIndex, capacity_for, kernel_available

SLOT = "item"
DURABILITIES: tuple[Durability, ...] = ("process", "power")
RESULT_SCHEMA = 1
_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StoreBenchSettings:
    """Everything that shapes a run; recorded with the results."""

    sizes: tuple[int, ...] = (1_000_000, 10_000_000)
    batch_sizes: tuple[int, ...] = (1_000, 10_000)
    dists: tuple[Distribution, ...] = ("uniform", "zipf")
    repeats: int = 5
    keys_per_run: int = 300_000
    dim: int = 32
    zipf_s: float = 1.1
    seed: int = 20_240_601
    delta_rows: int = 10_000
    new_id_fraction: float = 0.05
    deltas_per_run: int = 10
    build_delta_rows: int = 100_000
    open_repeats: int = 3
    idle_s: float = 0.0
    workdir: Path | None = None
    keep: bool = False
    redis_server: str = "redis-server"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["workdir"] = None if self.workdir is None else str(self.workdir)
        return out


def _run_dir(settings: StoreBenchSettings, log: StepLog) -> AbstractContextManager[Path]:
    return run_dir(settings.workdir, settings.keep, "liverank-bench-", log)


def run(settings: StoreBenchSettings, log: StepLog) -> dict[str, Any]:
    """Run the whole benchmark and return the JSON-ready result."""
    started = time.perf_counter()
    machine = machine_info(_REPO)
    result: dict[str, Any] = {
        "benchmark": "store",
        "schema": RESULT_SCHEMA,
        "date": machine["date"],
        "commit": machine["git"]["commit"],
        "machine": machine,
        "seed": settings.seed,
        "settings": settings.to_json(),
        "method": {
            "slot": f"{SLOT}: int ids (64-bit, scattered), dim {settings.dim}, float32",
            "kernel_available": kernel_available(),
            "gc": "gc.collect() + gc.freeze() before the timed lookup rounds",
            "lookup": "ns per key = wall time of back-to-back batches / keys (duplicates counted); "
            "every peer returns a (batch, dim) float32 array",
            "lmdb_peers": "liverank LMDB-only and getmulti run in a child process holding the same store opened "
            "with ram_budget_rows=0 (LMDB allows one environment per path per process)",
            "apply": "EmbeddingStore.apply(delta, payload=its binary form), timed per call; decoding excluded",
            "redis": "redis-server on 127.0.0.1, --save '' --appendonly no, same keys and values as LMDB",
        },
        "sizes": [],
    }
    with _run_dir(settings, log) as workdir, RedisServer(settings.redis_server, workdir / "redis") as redis_server:
        result["machine"]["redis_server"] = redis_server.info()["redis_version"]
        for n_rows in settings.sizes:
            result["sizes"].append(_bench_size(n_rows, settings, redis_server, workdir, log))
            gc.collect()
    result["wall_s"] = time.perf_counter() - started
    return result


def _bench_size(
    n_rows: int, settings: StoreBenchSettings, redis_server: RedisServer, workdir: Path, log: StepLog
) -> dict[str, Any]:
    log("size %s: generating the table (dim %s)", f"{n_rows:,}", settings.dim)
    table = make_table(n_rows, settings.dim, settings.seed, updated_at_ms=time.time_ns() // 1_000_000)
    popularity = Popularity(n_rows, settings.zipf_s, settings.seed)
    path = workdir / f"store-{n_rows}"
    out: dict[str, Any] = {"n_keys": n_rows}

    log("size %s: building the store", f"{n_rows:,}")
    out["build"] = build_store(path, table, SLOT, settings.build_delta_rows, log)
    first_ids = table.ids[RowSampler(popularity, settings.seed, stream=50).zipf(min(1000, n_rows))]
    handle = StoreHandle(path, SLOT)
    try:
        out["open_after_build"] = handle.reopen(first_ids)
        log("size %s: store open in %.1f s", f"{n_rows:,}", out["open_after_build"]["open_s"])
        out["system_load"] = {}
        _lookup_phase(handle.store, table, popularity, settings, redis_server, path, workdir, out, log)
        if settings.idle_s > 0:
            # Right after the pause (its first lookups touched only a few thousand keys' pages): how long a restart
            # takes once the VM paged the file cache out.
            out["idle"]["open_after_idle"] = handle.reopen(first_ids)
            log("size %s: reopened after idle in %.1f s", f"{n_rows:,}", out["idle"]["open_after_idle"]["total_s"])
        out["deltas"] = []
        load = SystemLoad()
        maker = DeltaMaker(table, popularity, SLOT, settings.delta_rows, settings.new_id_fraction, settings.seed)
        for durability in DURABILITIES:
            if handle.store.lmdb.durability != durability:
                handle.reopen(first_ids, durability)
            log("size %s: deltas, durability %s", f"{n_rows:,}", durability)
            out["deltas"] += run_deltas(
                handle.store,
                maker,
                popularity,
                durability=durability,
                repeats=settings.repeats,
                deltas_per_run=settings.deltas_per_run,
                seed=settings.seed,
                log=log,
            )
        out["system_load"]["deltas"] = load.sample()
        out["open"] = []
        load = SystemLoad()
        for i in range(settings.open_repeats):
            out["open"].append(handle.reopen(first_ids))
            total_s = out["open"][-1]["total_s"]
            log(
                "size %s: open %s / %s: %.1f s to the first answer",
                f"{n_rows:,}",
                i + 1,
                settings.open_repeats,
                total_s,
            )
        out["system_load"]["opens"] = load.sample()
    finally:
        handle.close()
    out["targets"] = evaluate_targets(out)
    if not settings.keep:
        shutil.rmtree(path, ignore_errors=True)
    return out


def _lookup_phase(
    store: EmbeddingStore,
    table: Table,
    popularity: Popularity,
    settings: StoreBenchSettings,
    redis_server: RedisServer,
    path: Path,
    workdir: Path,
    out: dict[str, Any],
    log: StepLog,
) -> None:
    """Lookups (and first lookups after an idle pause) with every peer loaded, all from the same table."""
    n = f"{table.n_rows:,}"
    config, slot_code = store.lmdb.slot_table()[SLOT]
    client = redis_server.client()
    try:
        log("size %s: loading Redis", n)
        out["redis_load"] = load_redis(client, table, slot_code, log)
        out["redis_load"]["used_memory_bytes"] = redis_server.info()["used_memory_bytes"]
        log("size %s: building the dict and the bare hash index", n)
        index = HashIndex(capacity_for(table.n_rows))
        index.insert(table.ids, np.arange(table.n_rows, dtype=np.int64))
        rows = dict(zip(table.ids.tolist(), table.vectors, strict=True))
        local = {
            HOT.name: store_lookup_fn(store, SLOT),
            KERNEL.name: kernel_probe(index, table.vectors),
            NUMPY.name: numpy_probe(index, table.vectors),
            REDIS.name: redis_mget(client, slot_code, config.dim),
            DICT.name: dict_gather(rows),
        }
        batch_dir = workdir / "batches"
        batch_dir.mkdir(exist_ok=True)
        with LmdbWorker() as worker:
            log("size %s: opening the LMDB-only store in the worker", n)
            out["lmdb_only_open"] = worker.open(path, SLOT)
            log("size %s: LMDB-only store open in %.1f s", n, out["lmdb_only_open"]["open_s"])
            peers = PeerSet(local, worker)
            load = SystemLoad()
            out["lookups"] = run_lookups(
                peers,
                table,
                popularity,
                dists=settings.dists,
                batch_sizes=settings.batch_sizes,
                keys_per_run=settings.keys_per_run,
                repeats=settings.repeats,
                seed=settings.seed,
                batch_dir=batch_dir,
                log=log,
            )
            out["system_load"]["lookups"] = load.sample()
            if settings.idle_s > 0:
                out["idle"] = run_idle_lookups(
                    peers, table, popularity, idle_s=settings.idle_s, seed=settings.seed, batch_dir=batch_dir, log=log
                )
        del local, rows, index
        client.flushall()
    finally:
        client.close()
    gc.collect()
