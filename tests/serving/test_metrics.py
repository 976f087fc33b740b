"""Per-request metrics are tallied in memory and written in one go (``serving/metrics.py``): what a scrape reads after
a flush must equal what direct ``observe``/``inc`` calls would have written, in both the single-process registry
and prometheus_client's multiprocess mode (a scrape aggregating the files of several processes)."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from liverank.serving.metrics import FLUSH_EVERY_S, Metrics
from liverank.serving.ranker import RankResult

SLOTS = ("user_id", "item_id", "tags")
# Values on bucket bounds, between them, past the last finite bound, and NaN: every branch of bucket placement.
AGES = (0.0, 1.0, 1.5, 5.0, 899.0, 86400.0, 10 * 86400.0, math.nan)
LATENCIES = (0.0004, 0.0005, 0.00051, 0.02, 0.7, 1.0, 3.0)


def result(i: int) -> RankResult:
    return RankResult(
        top=np.arange(3),
        scores=np.zeros(3, np.float32),
        heads={},
        ids=None,
        dense_version="v",
        sparse_seq={},
        generation=1,
        unseen_by_slot={"item_id": i % 3},
        ids_by_slot=dict.fromkeys(SLOTS, 10 + i),
        embedding_age_max_s=AGES[i % len(AGES)],
        embedding_age_median_s=None,
        embedding_age_max_s_by_slot={slot: AGES[(i + j) % len(AGES)] for j, slot in enumerate(SLOTS)},
        lookup_s=LATENCIES[i % len(LATENCIES)],
        dense_s=LATENCIES[(i + 1) % len(LATENCIES)],
        dense_cpu_s=0.001 * (i % 4),
        source=("ram", "ram+lmdb")[i % 2],
    )


def direct_record(metrics: Metrics, r: RankResult, route: str, status: int, seconds: float) -> None:
    """What the tallies stand for: one direct prometheus_client call per series and request."""
    metrics.lookup_seconds.observe(r.lookup_s)
    metrics.dense_seconds.observe(r.dense_s)
    metrics.onnx_cpu_seconds.inc(r.dense_cpu_s)
    metrics.lookup_source.labels(r.source).inc()
    for slot, n in r.ids_by_slot.items():
        metrics.lookup_ids.labels(slot).inc(n)
        metrics.unseen_ids.labels(slot).inc(r.unseen_by_slot.get(slot, 0))
    if r.embedding_age_max_s is not None:
        metrics.embedding_age_seconds.observe(r.embedding_age_max_s)
    for slot, age_s in r.embedding_age_max_s_by_slot.items():
        metrics.slot_embedding_age_seconds.labels(slot).observe(age_s)
    metrics.request_seconds.labels(route, str(status)).observe(seconds)


PER_REQUEST = (
    "liverank_request_duration_seconds",
    "liverank_lookup_duration_seconds",
    "liverank_dense_duration_seconds",
    "liverank_onnx_cpu_seconds",
    "liverank_lookup_ids_total",
    "liverank_unseen_ids_total",
    "liverank_lookups_total",
    "liverank_embedding_age_seconds",
    "liverank_slot_embedding_age_seconds",
)


def per_request(values: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in values.items() if name.startswith(PER_REQUEST)}


def exposition(registry: CollectorRegistry) -> dict[str, float]:
    """Sample name and labels -> value, without the ``_created`` timestamps (they differ between registries)."""
    values: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def test_tallied_metrics_expose_what_direct_calls_would() -> None:
    tallied, direct = Metrics(), Metrics()
    for i in range(40):
        r = result(i)
        tallied.record_rank(r)
        tallied.record_request("/v1/rank", 200 if i % 5 else 422, LATENCIES[i % len(LATENCIES)])
        direct_record(direct, r, "/v1/rank", 200 if i % 5 else 422, LATENCIES[i % len(LATENCIES)])
    tallied.flush()
    got, want = exposition(tallied.registry), exposition(direct.registry)
    assert got.keys() == want.keys()
    assert len(per_request(want)) > 100  # every per-request series, buckets included
    for name, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, rel=1e-12), name


def test_a_flush_writes_the_tallies_once() -> None:
    metrics = Metrics()
    metrics.flush()  # the tallies' clock starts now: the next record is normally not due for a write
    metrics.record_rank(result(1))
    before = exposition(metrics.registry).get("liverank_dense_duration_seconds_count", 0.0)
    # 0 unless the machine paused for FLUSH_EVERY_S between the two calls (then the record wrote itself).
    assert before in (0.0, 1.0)
    metrics.flush()
    metrics.flush()
    after = exposition(metrics.registry)
    assert after["liverank_dense_duration_seconds_count"] == 1.0
    assert after['liverank_lookup_ids_total{slot="item_id"}'] == 11.0


def test_a_record_past_the_flush_interval_writes_without_a_flush_call() -> None:
    metrics = Metrics()
    metrics.record_rank(result(2))
    event = threading.Event()
    event.wait(FLUSH_EVERY_S * 1.5)  # the interval must pass: the write is due by time, not by count
    metrics.record_rank(result(2))  # this record is past the interval: it writes both
    values = exposition(metrics.registry)
    assert values["liverank_dense_duration_seconds_count"] == 2.0


def test_concurrent_records_are_each_counted_once() -> None:
    metrics = Metrics()
    per_thread = 500

    def ranker() -> None:
        for i in range(per_thread):
            metrics.record_rank(result(i))

    threads = [threading.Thread(target=ranker) for _ in range(4)]
    for thread in threads:
        thread.start()
    flusher_stop = threading.Event()

    def flusher() -> None:
        while not flusher_stop.is_set():
            metrics.flush()

    flushing = threading.Thread(target=flusher)
    flushing.start()
    for thread in threads:
        thread.join()
    flusher_stop.set()
    flushing.join()
    metrics.flush()
    values = exposition(metrics.registry)
    assert values["liverank_dense_duration_seconds_count"] == 4 * per_thread
    assert values['liverank_lookup_ids_total{slot="tags"}'] == 4 * sum(10 + i for i in range(per_thread))


_CHILD = """
from tests.serving.test_metrics import result
from liverank.serving.metrics import Metrics
metrics = Metrics()
for i in range({n}):
    metrics.record_rank(result(i))
    metrics.record_request("/v1/rank", 200, 0.01)
metrics.flush()
"""


def test_multiprocess_scrape_sums_every_process_tallies_once(tmp_path: Path) -> None:
    """Two processes tally and flush into PROMETHEUS_MULTIPROC_DIR; the aggregated scrape equals one process's
    direct calls for both processes' requests."""
    multiproc_dir = tmp_path / "prom"
    multiproc_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "PATH": "/usr/bin:/bin"}
    for n in (17, 23):
        subprocess.run(
            [sys.executable, "-c", _CHILD.format(n=n)],
            env={**env, "PYTHONPATH": ":".join(sys.path)},  # this repository's root among them: tests.* imports
            check=True,
            timeout=120,
        )
    aggregated = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregated, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    direct = Metrics()
    for n in (17, 23):
        for i in range(n):
            direct_record(direct, result(i), "/v1/rank", 200, 0.01)
    got, want = per_request(exposition(aggregated)), per_request(exposition(direct.registry))
    assert got.keys() == want.keys()
    for name, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, rel=1e-12), name
