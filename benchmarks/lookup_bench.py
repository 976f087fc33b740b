"""Per-key lookup cost of every peer on the same batches, peers alternating, and first lookups after an idle pause."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverank.benchmarks.lmdb_worker import LmdbWorker
from liverank.benchmarks.peers import (
    ALL_PEERS,
    DICT,
    GETMULTI,
    HOT,
    KERNEL,
    LMDB_ONLY,
    NUMPY,
    REDIS,
    LookupFn,
    time_lookups,
)
from liverank.benchmarks.stats import Summary
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.workload import BatchSet, Distribution, Popularity, RowSampler, Table, make_batches

# (numerator peer, denominator peer): how many times slower the numerator is.
RATIOS: tuple[tuple[str, str], ...] = (
    (REDIS.name, HOT.name),
    (GETMULTI.name, HOT.name),
    (LMDB_ONLY.name, HOT.name),
    (DICT.name, HOT.name),
    (NUMPY.name, KERNEL.name),
    (HOT.name, KERNEL.name),
)
IDLE_BATCH = 1000


@dataclass
class PeerSet:
    """Where each peer runs: in this process (``local``) or in the LMDB worker child (``remote``)."""

    local: Mapping[str, LookupFn]
    worker: LmdbWorker
    remote: Sequence[str] = (LMDB_ONLY.name, GETMULTI.name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in ALL_PEERS if p.name in self.local or p.name in self.remote]

    def measure_ns(self, name: str, batches: BatchSet, saved: Path, table: Table | None = None) -> int:
        """Nanoseconds for all of ``batches``; with ``table``, also check the peer's answer to the first batch."""
        if name in self.remote:
            answer = self.worker.measure(name, saved)
            if table is not None:
                expected = float(table.vectors[batches.rows[0]].sum(dtype=np.float64))
                if not np.isclose(answer["first_sum"], expected, rtol=1e-9, atol=1e-6):
                    raise RuntimeError(f"{name} returned wrong vectors (sum {answer['first_sum']} != {expected})")
            return int(answer["elapsed_ns"])
        lookup = self.local[name]
        if table is not None:
            got = lookup(batches.ids[0])
            if not np.array_equal(got, table.vectors[batches.rows[0]]):
                raise RuntimeError(f"{name} returned wrong vectors for the first batch")
        return time_lookups(lookup, batches.ids)


def _save(batches: BatchSet, directory: Path, tag: str) -> Path:
    path = directory / f"batches-{tag}-{batches.dist}-{batches.batch_size}.npy"
    np.save(path, batches.ids)
    return path


def run_lookups(
    peers: PeerSet,
    table: Table,
    popularity: Popularity,
    *,
    dists: Sequence[Distribution],
    batch_sizes: Sequence[int],
    keys_per_run: int,
    repeats: int,
    seed: int,
    batch_dir: Path,
    log: StepLog,
) -> list[dict[str, Any]]:
    """Every peer on every (distribution, batch size), ``repeats`` times, peers rotating order each round."""
    sampler = RowSampler(popularity, seed, stream=10)
    combos: list[tuple[BatchSet, Path]] = []
    for dist in dists:
        for size in batch_sizes:
            batches = make_batches(table, sampler, dist, size, max(1, -(-keys_per_run // size)))
            combos.append((batches, _save(batches, batch_dir, "lookup")))
    names = peers.names
    log("  lookups: checking answers and warming up %s peers", len(names))
    for batches, saved in combos:
        for name in names:
            peers.measure_ns(name, batches, saved, table)
    runs: list[dict[str, list[float]]] = [{name: [] for name in names} for _ in combos]
    gc.collect()
    gc.freeze()  # what a server does after start-up; keeps collections of the big setup out of the timings
    try:
        for repeat in range(repeats):
            for i, (batches, saved) in enumerate(combos):
                shift = (repeat + i) % len(names)
                for name in names[shift:] + names[:shift]:
                    runs[i][name].append(peers.measure_ns(name, batches, saved) / batches.n_keys)
            log("  lookups: round %s / %s done", repeat + 1, repeats)
    finally:
        gc.unfreeze()
    results = []
    for (batches, _), per_peer in zip(combos, runs, strict=True):
        summaries = {name: Summary.of(values) for name, values in per_peer.items()}
        ratios = {
            f"{a}/{b}": summaries[a].median / summaries[b].median
            for a, b in RATIOS
            if a in summaries and b in summaries
        }
        results.append(
            {
                "dist": batches.dist,
                "batch": batches.batch_size,
                "batches_per_run": len(batches.ids),
                "keys_per_run": batches.n_keys,
                "ns_per_key": {name: s.to_json() for name, s in summaries.items()},
                "ratios": ratios,
            }
        )
    return results


def run_idle_lookups(
    peers: PeerSet, table: Table, popularity: Popularity, *, idle_s: float, seed: int, batch_dir: Path, log: StepLog
) -> dict[str, Any]:
    """Sleep ``idle_s`` with everything open, then time each peer's first batch (fresh uniform ids per peer)."""
    sampler = RowSampler(popularity, seed, stream=20)
    log("  idle: sleeping %s s with every peer open", idle_s)
    time.sleep(idle_s)
    first: dict[str, Any] = {}
    for name in peers.names:
        batches = make_batches(table, sampler, "uniform", min(IDLE_BATCH, table.n_rows), 1)
        saved = _save(batches, batch_dir, f"idle-{name}")
        elapsed_ns = peers.measure_ns(name, batches, saved)
        first[name] = {"ns_per_key": elapsed_ns / batches.n_keys, "batch_ms": elapsed_ns / 1e6}
        log("  idle: %s first batch %.2f ms", name, elapsed_ns / 1e6)
    return {"idle_s": idle_s, "batch": min(IDLE_BATCH, table.n_rows), "dist": "uniform", "first_batch": first}
