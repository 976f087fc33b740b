"""``StatusHistory``: the time series of the status page, a bounded in-memory ring sampled from the server's metrics.

Every ``interval_s`` a background thread takes an ``Observation`` (the Prometheus registry's counters, the epoch,
store rows and RAM-tier residency, inbox depth) and appends one ``point``: the counters' growth since the previous
observation as rates, means and histogram percentiles. The counters are the ones ``/metrics`` exports, so when they
are aggregated across worker processes the ring plots the aggregate without changing here. ``capacity`` points are
kept; the oldest fall off. HTTP-free: ``serving.api`` serves ``snapshot`` as JSON.
"""

from __future__ import annotations

import bisect
import collections
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

RANK_ROUTE = "/v1/rank"

# Sample names as prometheus_client reports them (a histogram ``h`` yields ``h_bucket``, ``h_sum``, ``h_count``).
_DELTAS = "liverank_deltas_applied_total"
_ROWS = "liverank_delta_rows_applied_total"
_REQUESTS = "liverank_request_duration_seconds"
_PUSH_TO_VISIBLE = "liverank_push_to_visible_seconds"
_LOOKUP_IDS = "liverank_lookup_ids_total"
_UNSEEN_IDS = "liverank_unseen_ids_total"
_SLOT_AGE = "liverank_slot_embedding_age_seconds"

Labels = dict[str, str]
Samples = dict[str, list[tuple[Labels, float]]]


def read_samples(families: Iterable[Metric]) -> Samples:
    """Every sample of ``families`` by sample name."""
    out: Samples = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        key = labels.get(label)
        if key is not None:
            out[key] = out.get(key, 0.0) + value
    return out


@dataclass(frozen=True)
class Histo:
    """A histogram's cumulative bucket counts (upper bounds ascending, +Inf last), summed over its other labels."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float

    @classmethod
    def read(cls, samples: Samples, name: str, **match: str) -> Histo:
        counts: dict[float, float] = {}
        for labels, value in samples.get(f"{name}_bucket", []):
            if all(labels.get(k) == x for k, x in match.items()):
                bound = float(labels["le"])
                counts[bound] = counts.get(bound, 0.0) + value
        bounds = tuple(sorted(counts))
        return cls(bounds, tuple(counts[b] for b in bounds), _total(samples, f"{name}_sum", **match))

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def minus(self, earlier: Histo) -> Histo:
        """What was observed between ``earlier`` and this reading (a restarted counter counts from zero)."""
        if earlier.bounds != self.bounds or earlier.count > self.count:
            return self
        return Histo(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.sum - earlier.sum,
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus' ``histogram_quantile``: linear within the bucket that holds the q-th observation."""
        if self.count <= 0:
            return None
        rank = q * self.count
        i = bisect.bisect_left(self.cumulative, rank)
        if i >= len(self.bounds) - 1 and math.isinf(self.bounds[-1]):
            return self.bounds[-2] if len(self.bounds) > 1 else None  # past the last finite bound: report it
        lower = self.bounds[i - 1] if i > 0 else 0.0
        below = self.cumulative[i - 1] if i > 0 else 0.0
        in_bucket = self.cumulative[i] - below
        if in_bucket <= 0:
            return self.bounds[i]
        return lower + (self.bounds[i] - lower) * (rank - below) / in_bucket

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def distribution(self) -> dict[str, list[float | None]]:
        """Per-bucket counts (not cumulative) by upper bound in ms; the +Inf bucket is reported as ``null``."""
        counts = [c - (self.cumulative[i - 1] if i else 0.0) for i, c in enumerate(self.cumulative)]
        upper_ms: list[float | None] = [b * 1000.0 if math.isfinite(b) else None for b in self.bounds]
        return {"le_ms": upper_ms, "count": list(counts)}


@dataclass(frozen=True)
class Observation:
    """The raw readings of one instant: the registry's samples and the state the core reports."""

    t_ms: int
    samples: Samples
    epoch: dict[str, Any]
    rows_by_slot: dict[str, int]
    resident_rows_by_slot: dict[str, int]
    inbox_depth: int


@dataclass(frozen=True)
class _Totals:
    at_s: float
    deltas: float
    rows: float
    rank: Histo
    push_to_visible: Histo
    lookup_ids: dict[str, float]
    unseen_ids: dict[str, float]
    slot_age_sum: dict[str, float]
    slot_age_count: dict[str, float]

    @classmethod
    def of(cls, obs: Observation) -> _Totals:
        s = obs.samples
        return cls(
            at_s=obs.t_ms / 1000.0,
            deltas=_total(s, _DELTAS),
            rows=_total(s, _ROWS),
            rank=Histo.read(s, _REQUESTS, route=RANK_ROUTE),
            push_to_visible=Histo.read(s, _PUSH_TO_VISIBLE),
            lookup_ids=_by_label(s, _LOOKUP_IDS, "slot"),
            unseen_ids=_by_label(s, _UNSEEN_IDS, "slot"),
            slot_age_sum=_by_label(s, f"{_SLOT_AGE}_sum", "slot"),
            slot_age_count=_by_label(s, f"{_SLOT_AGE}_count", "slot"),
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _growth(now: dict[str, float], before: dict[str, float], slot: str) -> float:
    return max(0.0, now.get(slot, 0.0) - before.get(slot, 0.0))


def _point(obs: Observation, now: _Totals, before: _Totals) -> dict[str, Any]:
    elapsed_s = max(now.at_s - before.at_s, 1e-9)
    rank = now.rank.minus(before.rank)
    ptv = now.push_to_visible.minus(before.push_to_visible)
    unseen_rate: dict[str, float | None] = {}
    age_s: dict[str, float | None] = {}
    for slot in obs.rows_by_slot:
        looked_up = _growth(now.lookup_ids, before.lookup_ids, slot)
        unseen_rate[slot] = _growth(now.unseen_ids, before.unseen_ids, slot) / looked_up if looked_up else None
        answers = _growth(now.slot_age_count, before.slot_age_count, slot)
        age_s[slot] = _growth(now.slot_age_sum, before.slot_age_sum, slot) / answers if answers else None
    return {
        "t_ms": obs.t_ms,
        "dense_version": obs.epoch.get("dense_version"),
        "sparse_seq": obs.epoch.get("sparse_seq", {}),
        "deltas_per_s": max(0.0, now.deltas - before.deltas) / elapsed_s,
        "rows_per_s": max(0.0, now.rows - before.rows) / elapsed_s,
        "rank_rps": rank.count / elapsed_s,
        "rank_p50_ms": _ms(rank.quantile(0.5)),
        "rank_p99_ms": _ms(rank.quantile(0.99)),
        "push_to_visible_mean_ms": _ms(ptv.mean()),
        "push_to_visible_p99_ms": _ms(ptv.quantile(0.99)),
        "inbox_depth": obs.inbox_depth,
        "rows_by_slot": obs.rows_by_slot,
        "resident_rows_by_slot": obs.resident_rows_by_slot,
        "unseen_rate_by_slot": unseen_rate,
        "embedding_age_s_by_slot": age_s,
    }


class StatusHistory:
    """The ring. ``sample`` appends one point (the first observation only sets the baseline); ``start`` runs it
    every ``interval_s`` on a daemon thread until ``stop``."""

    def __init__(self, *, interval_s: float, capacity: int) -> None:
        self.interval_s = interval_s
        self.capacity = capacity
        self._lock = threading.Lock()
        self._points: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        # Totals of every kept point plus the baseline before the oldest: the window the distribution covers.
        self._totals: collections.deque[_Totals] = collections.deque(maxlen=capacity + 1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, obs: Observation) -> None:
        totals = _Totals.of(obs)
        with self._lock:
            if self._totals:
                self._points.append(_point(obs, totals, self._totals[-1]))
            self._totals.append(totals)

    def snapshot(self, since_ms: int = -1) -> dict[str, Any]:
        """The points newer than ``since_ms`` (all by default), and the push-to-visible distribution of the window."""
        with self._lock:
            points = [p for p in self._points if p["t_ms"] > since_ms]
            window = self._totals[-1].push_to_visible.minus(self._totals[0].push_to_visible) if self._totals else None
        return {
            "interval_s": self.interval_s,
            "capacity": self.capacity,
            "points": points,
            "push_to_visible_distribution": None if window is None else window.distribution(),
        }

    def start(self, observe: Callable[[], Observation]) -> None:
        def run() -> None:
            while True:
                try:
                    self.sample(observe())
                except Exception:  # the page must not take the server down; the next tick tries again
                    log.exception("status history: sampling failed")
                if self._stop.wait(self.interval_s):
                    return

        self._thread = threading.Thread(target=run, name="liverank-status-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
