"""Delta apply throughput: D-10k-style deltas (one slot, Zipf over existing ids plus new ids) into an open store,
with and without a reader thread looking rows up at the same time."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from liverank.benchmarks.stats import Summary
from liverank.benchmarks.steplog import StepLog
from liverank.benchmarks.workload import Popularity, RowSampler, Table, fresh_ids, make_batches
from liverank.store import EmbeddingStore, SlotDelta, SparseDelta, encode_delta

PRODUCER = "bench-deltas"
READER_BATCH = 1000
_READER_BATCHES = 64


class DeltaMaker:
    """Builds deltas of ``rows`` rows: distinct Zipf-popular existing ids plus a share of never-seen ids."""

    def __init__(self, table: Table, popularity: Popularity, slot: str, rows: int, new_fraction: float, seed: int):
        self.table = table
        self.slot = slot
        self.n_new = round(rows * new_fraction)
        self.n_existing = rows - self.n_new
        self._sampler = RowSampler(popularity, seed, stream=30)
        self._rng = np.random.default_rng([seed, table.n_rows, 31])
        self._next_new = 0

    def make(self, seq: int) -> tuple[SparseDelta, bytes]:
        existing = self.table.ids[self._sampler.distinct_zipf(self.n_existing)]
        new = fresh_ids(self.table.n_rows, self._next_new, self.n_new)
        self._next_new += self.n_new
        ids = np.concatenate([existing, new])
        vectors = self._rng.standard_normal((len(ids), self.table.dim), dtype=np.float32)
        now_ms = time.time_ns() // 1_000_000
        delta = SparseDelta(
            PRODUCER, seq, "", now_ms, {self.slot: SlotDelta(ids, vectors, np.full(len(ids), now_ms, dtype=np.int64))}
        )
        return delta, encode_delta(delta)


@dataclass
class ReaderThread:
    """Looks rows up in a loop (1k Zipf ids per call) until stopped; counts keys and where answers came from."""

    store: EmbeddingStore
    slot: str
    batches: np.ndarray[Any, np.dtype[np.uint64]]
    keys: int = 0
    elapsed_ns: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise RuntimeError("the reader thread failed") from self.error

    def _run(self) -> None:
        started = time.perf_counter_ns()
        i = 0
        try:
            while not self._stop.is_set():
                ids = self.batches[i % len(self.batches)]
                self.sources[self.store.lookup_many({self.slot: ids}).source] += 1
                self.keys += len(ids)
                i += 1
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        self.elapsed_ns = time.perf_counter_ns() - started


def run_deltas(
    store: EmbeddingStore,
    maker: DeltaMaker,
    popularity: Popularity,
    *,
    durability: str,
    repeats: int,
    deltas_per_run: int,
    seed: int,
    log: StepLog,
) -> list[dict[str, Any]]:
    """Apply ``deltas_per_run`` deltas per run, ``repeats`` runs for each reader mode (alternating)."""
    reader_ids = make_batches(
        maker.table,
        RowSampler(popularity, seed, stream=40),
        "zipf",
        min(READER_BATCH, maker.table.n_rows),
        _READER_BATCHES,
    ).ids
    rates: dict[bool, list[float]] = {False: [], True: []}
    apply_ms: dict[bool, list[float]] = {False: [], True: []}
    reader_ns: list[float] = []
    reader_sources: Counter[str] = Counter()
    for repeat in range(repeats):
        for with_reader in (False, True) if repeat % 2 == 0 else (True, False):
            seq = store.applied_seq(PRODUCER) + 1
            deltas = [maker.make(seq + i) for i in range(deltas_per_run)]
            reader = ReaderThread(store, maker.slot, reader_ids) if with_reader else None
            if reader is not None:
                reader.start()
            times_ns: list[int] = []
            try:
                for delta, payload in deltas:
                    started = time.perf_counter_ns()
                    result = store.apply(delta, payload=payload)
                    times_ns.append(time.perf_counter_ns() - started)
                    if result.status != "applied":
                        raise RuntimeError(f"delta {delta.seq} was not applied: {result}")
            finally:
                if reader is not None:
                    reader.stop()
            rows = sum(delta.n_rows for delta, _ in deltas)
            rates[with_reader].append(rows / (sum(times_ns) / 1e9))
            apply_ms[with_reader].extend(t / 1e6 for t in times_ns)
            if reader is not None and reader.keys:
                reader_ns.append(reader.elapsed_ns / reader.keys)
                reader_sources.update(reader.sources)
        log(
            "  deltas (%s): run %s / %s: %.0f rows/s alone, %.0f with a reader",
            durability,
            repeat + 1,
            repeats,
            rates[False][-1],
            rates[True][-1],
        )
    results = []
    for with_reader in (False, True):
        entry: dict[str, Any] = {
            "durability": durability,
            "reader": with_reader,
            "rows_per_delta": maker.n_existing + maker.n_new,
            "deltas_per_run": deltas_per_run,
            "rows_per_s": Summary.of(rates[with_reader]).to_json(),
            "apply_ms": {k: v for k, v in Summary.of(apply_ms[with_reader]).to_json().items() if k != "runs"},
        }
        if with_reader:
            entry["reader_ns_per_key"] = Summary.of(reader_ns).to_json() if reader_ns else None
            entry["reader_sources"] = dict(reader_sources)
        results.append(entry)
    return results
