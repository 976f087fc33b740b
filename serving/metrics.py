"""Prometheus metrics (``liverank_`` prefix, base units, ``_total`` counters), one registry per app.

A registry per app (not the global default) lets tests and benchmarks run several apps in one process.

Under ``liverank serve`` every worker and the writer write their values to ``PROMETHEUS_MULTIPROC_DIR`` (set by
the master before any of them starts) and a scrape aggregates the files (``scrape_registry``): counters and
histograms sum over processes, so each request counts once; each gauge says how it combines (``multiprocess_mode``):
the applied sequence is the largest any process saw, values a scrape sets are the most recent one of a live process.

Per-request series are tallied in process memory and written in one go (``Metrics.flush``): at most every
``FLUSH_EVERY_S`` from the request path, at every worker beat, before a scrape or status reading of this process, and
at close. In multiprocess mode each write to a value takes a lock and rewrites its slot of the process's file, and a
W-500 request touched about 85 values (25 slots' id counts and age histograms): 85 us per request in a micro-benchmark
(11 us tallied), about 0.16 ms under load. A scrape therefore sees another worker's requests at most one beat
(0.25 s) late, each still once.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

if TYPE_CHECKING:
    from liverank.serving.ranker import RankResult

# Ranking latency sits between ~1 ms and ~100 ms; the finer low buckets separate p50 from p99.
_LATENCY_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
_FRESHNESS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_AGE_S = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)

# Longest a request path's tally waits for a write; the worker beat (0.25 s) writes idle processes' tallies.
FLUSH_EVERY_S = 0.25


class _CounterTally:
    """Increments of one counter series not yet written."""

    __slots__ = ("amount", "counter")

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.amount = 0.0

    def write(self) -> None:
        if self.amount:
            self.counter.inc(self.amount)
            self.amount = 0.0


class _HistogramTally:
    """Observations of one histogram series not yet written: counts per bucket and their sum.

    Written through the series' own bucket and sum values (``_buckets``, ``_sum``, ``_upper_bounds``: the layout
    prometheus_client has kept since 0.4; ``test_metrics`` checks the written series against direct ``observe``
    calls). A histogram without that layout is observed directly, value by value.
    """

    __slots__ = ("counts", "direct", "histogram", "pending", "total", "upper_bounds")

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        bounds = getattr(histogram, "_upper_bounds", None)
        self.direct = not (isinstance(bounds, list) and hasattr(histogram, "_buckets") and hasattr(histogram, "_sum"))
        self.upper_bounds: list[float] = [] if self.direct else list(bounds)  # type: ignore[arg-type]
        self.counts = [0] * len(self.upper_bounds)
        self.total = 0.0
        self.pending: list[float] = []

    def add(self, value: float) -> None:
        if self.direct:
            self.pending.append(value)
            return
        self.total += value
        if value <= self.upper_bounds[-1]:  # NaN lands in no bucket, as observe() has it
            self.counts[bisect_left(self.upper_bounds, value)] += 1

    def write(self) -> None:
        histogram = self.histogram
        if self.direct:
            for value in self.pending:
                histogram.observe(value)
            self.pending.clear()
            return
        if not any(self.counts) and self.total == 0.0:
            return
        histogram._sum.inc(self.total)
        for i, count in enumerate(self.counts):
            if count:
                histogram._buckets[i].inc(count)
                self.counts[i] = 0
        self.total = 0.0


class Metrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram(
            "liverank_request_duration_seconds",
            "HTTP request latency",
            ["route", "status"],
            buckets=_LATENCY_S,
            registry=r,
        )
        self.lookup_seconds = Histogram(
            "liverank_lookup_duration_seconds",
            "Embedding lookups of one ranking request",
            buckets=_LATENCY_S,
            registry=r,
        )
        self.dense_seconds = Histogram(
            "liverank_dense_duration_seconds",
            "Dense network run of one ranking request",
            buckets=_LATENCY_S,
            registry=r,
        )
        # CPU, not wall time: a server's CPU per request minus this is what it spends outside ONNX Runtime. Measured
        # on the ranking thread, which runs the whole session when ONNX Runtime has one intra-op thread (the default).
        self.onnx_cpu_seconds = Counter(
            "liverank_onnx_cpu_seconds",
            "CPU time of the ranking thread inside ONNX Runtime runs (all of it with one intra-op thread)",
            registry=r,
        )
        self.lookup_ids = Counter("liverank_lookup_ids_total", "Ids looked up, per slot", ["slot"], registry=r)
        self.unseen_ids = Counter(
            "liverank_unseen_ids_total", "Ids read as the slot default, per slot", ["slot"], registry=r
        )
        self.lookup_source = Counter(
            "liverank_lookups_total",
            "Ranking lookups by where rows came from (ram, ram+lmdb, lmdb)",
            ["source"],
            registry=r,
        )
        self.tier_retries = Counter(
            "liverank_shared_tier_retries_total",
            "Shared-tier reads redone because a publish overlapped them (the normal way past a publish)",
            registry=r,
        )
        self.tier_fallbacks = Counter(
            "liverank_shared_tier_fallbacks_total",
            "Lookups answered wholly from LMDB although the shared tier exists (retries ran out, or it was behind)",
            registry=r,
        )
        self.embedding_age_seconds = Histogram(
            "liverank_embedding_age_seconds",
            "Oldest last-update age among the rows of one ranking answer",
            buckets=_AGE_S,
            registry=r,
        )
        self.slot_embedding_age_seconds = Histogram(
            "liverank_slot_embedding_age_seconds",
            "Oldest last-update age among one slot's rows of one ranking answer, per slot",
            ["slot"],
            buckets=_AGE_S,
            registry=r,
        )
        self.applied_sequence = Gauge(
            "liverank_applied_sequence",
            "Last applied delta sequence, per producer",
            ["producer"],
            registry=r,
            multiprocess_mode="max",
        )
        self.deltas_applied = Counter("liverank_deltas_applied_total", "Deltas applied", registry=r)
        self.delta_rows_applied = Counter("liverank_delta_rows_applied_total", "Rows written by deltas", registry=r)
        self.deltas_received = Counter(
            "liverank_deltas_received_total", "Deltas pushed, by outcome", ["outcome"], registry=r
        )
        self.push_to_visible_seconds = Histogram(
            "liverank_push_to_visible_seconds",
            "From a delta's receipt to its rows being visible to ranking",
            buckets=_FRESHNESS_S,
            registry=r,
        )
        self.inbox_depth = Gauge(
            "liverank_inbox_depth", "Deltas queued, not yet applied", registry=r, multiprocess_mode="livemostrecent"
        )
        self.updater_failures = Counter(
            "liverank_updater_failures_total", "Updater failures, by kind", ["kind"], registry=r
        )
        self.rows_expired = Counter("liverank_rows_expired_total", "Rows removed by TTL sweeps", ["slot"], registry=r)
        self.bundle_info = Gauge(
            "liverank_bundle_info",
            "The live bundle (value 1)",
            ["bundle_id", "model", "version", "schema_hash"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.bundle_swaps = Counter("liverank_bundle_swaps_total", "Bundles made live, by how", ["how"], registry=r)
        self.store_rows = Gauge(
            "liverank_store_rows", "Rows stored, per slot", ["slot"], registry=r, multiprocess_mode="livemostrecent"
        )
        self.store_used_bytes = Gauge(
            "liverank_store_used_bytes", "Bytes used in the LMDB map", registry=r, multiprocess_mode="livemostrecent"
        )
        self.store_map_bytes = Gauge(
            "liverank_store_map_size_bytes", "Size of the LMDB map", registry=r, multiprocess_mode="livemostrecent"
        )

        # Labelled children by label value, for the per-request path: ``labels()`` takes a lock and builds a key
        # on every call, and a W-500 request touches about 50 labelled series (about 0.3 ms per request, measured).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Per-request observations not yet written (see the module docstring), under one lock: ranking threads add,
        # the beat and scrapes write.
        self._tally_lock = threading.Lock()
        self._counted: dict[Any, _CounterTally] = {}
        self._observed: dict[Any, _HistogramTally] = {}
        self._slot_tallies: dict[str, tuple[_CounterTally, _CounterTally, _HistogramTally]] = {}
        self._written_at = time.monotonic()

    def labelled(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: for series written on every request."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def record_rank(self, result: RankResult) -> None:
        """Count and time one ranked request (lookup and dense time, ids and unseen ids by slot, embedding age)."""
        unseen_by_slot = result.unseen_by_slot
        age_by_slot = result.embedding_age_max_s_by_slot
        with self._tally_lock:
            self._observed_tally(self.lookup_seconds).add(result.lookup_s)
            self._observed_tally(self.dense_seconds).add(result.dense_s)
            self._counted_tally(self.onnx_cpu_seconds).amount += result.dense_cpu_s
            self._counted_tally(self.labelled(self.lookup_source, result.source)).amount += 1
            tallies = self._slot_tallies
            for slot, n in result.ids_by_slot.items():
                ids, unseen, _ = tallies.get(slot) or self._new_slot_tallies(slot)
                ids.amount += n
                unseen.amount += unseen_by_slot.get(slot, 0)
            for slot, age_s in age_by_slot.items():
                (tallies.get(slot) or self._new_slot_tallies(slot))[2].add(age_s)
            if result.embedding_age_max_s is not None:
                self._observed_tally(self.embedding_age_seconds).add(result.embedding_age_max_s)
        self._flush_if_due()

    def record_request(self, route: str, status: int, seconds: float) -> None:
        """Time one HTTP request by route template and status."""
        series = self.labelled(self.request_seconds, route, str(status))
        with self._tally_lock:
            self._observed_tally(series).add(seconds)
        self._flush_if_due()

    def flush(self) -> None:
        """Write every tallied observation to its series (what a scrape of any process then reads)."""
        with self._tally_lock:
            self._written_at = time.monotonic()
            for counted in self._counted.values():
                counted.write()
            for observed in self._observed.values():
                observed.write()

    def _flush_if_due(self) -> None:
        if time.monotonic() - self._written_at >= FLUSH_EVERY_S:
            self.flush()

    # The tally getters below are called with _tally_lock held.

    def _counted_tally(self, series: Any) -> _CounterTally:
        tally = self._counted.get(series)
        if tally is None:
            tally = self._counted[series] = _CounterTally(series)
        return tally

    def _observed_tally(self, series: Any) -> _HistogramTally:
        tally = self._observed.get(series)
        if tally is None:
            tally = self._observed[series] = _HistogramTally(series)
        return tally

    def _new_slot_tallies(self, slot: str) -> tuple[_CounterTally, _CounterTally, _HistogramTally]:
        tallies = (
            self._counted_tally(self.labelled(self.lookup_ids, slot)),
            self._counted_tally(self.labelled(self.unseen_ids, slot)),
            self._observed_tally(self.labelled(self.slot_embedding_age_seconds, slot)),
        )
        self._slot_tallies[slot] = tallies
        return tallies


def add_new(totals: dict[str, int], seen: dict[str, int], counter: Counter, label: str) -> None:
    """Add to ``counter`` what the writer's running ``totals`` (by label value) grew by since last seen."""
    for value, total in totals.items():
        new = total - seen.get(value, 0)
        if new > 0:
            counter.labels(**{label: value}).inc(new)
        seen[value] = total


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What a scrape reports: every process's values when the server runs several (multiprocess mode), else this
    app's registry."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return registry
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
    return combined


def forget_process(pid: int) -> None:
    """A dead process's "live" gauges leave the scrape (multiprocess mode; its counters and histograms stay, so
    totals do not go backwards). Called by the master when a worker it replaces has exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
