"""Simulated users ranking on several servers at once, scored against the stream's hidden ground truth.

Every request goes to every server (the same user, candidates and sampled labels), so the servers are compared
pair for pair: the click scores each one returns are judged by AUC against clicks drawn from the true click
probabilities at the stream's current event time.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from liverank.exporter.auc import roc_auc
from liverank.trainer.synthetic_stream import ShortVideoStream


def auc(scores: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float | None:
    """ROC AUC of ``scores`` against 0/1 ``labels``; None when only one class is present."""
    value = roc_auc(labels, scores)
    return None if math.isnan(value) else value


@dataclass
class ServerScore:
    """What one server's answers looked like: latencies, failures, and scored (score, label) pairs over time."""

    name: str
    latencies_s: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=5000))
    requests: int = 0
    failures: int = 0
    last_error: str = ""
    pairs: collections.deque[tuple[float, np.ndarray[Any, Any], np.ndarray[Any, Any]]] = field(
        default_factory=lambda: collections.deque(maxlen=20000)
    )
    epoch: dict[str, Any] = field(default_factory=dict)

    def rolling_auc(self, window_s: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        chosen = [(s, y) for t, s, y in list(self.pairs) if now - t <= window_s]
        if not chosen:
            return None
        return auc(np.concatenate([s for s, _ in chosen]), np.concatenate([y for _, y in chosen]))

    def auc_between(self, start: float, end: float) -> float | None:
        chosen = [(s, y) for t, s, y in list(self.pairs) if start <= t < end]
        if not chosen:
            return None
        return auc(np.concatenate([s for s, _ in chosen]), np.concatenate([y for _, y in chosen]))

    def latency_percentile_ms(self, q: float) -> float | None:
        values = list(self.latencies_s)
        return None if not values else float(np.percentile(values, q) * 1000)


class TrafficGenerator(threading.Thread):
    """Ranks for random users on every server at about ``rate_per_s`` requests per second, until stopped."""

    def __init__(
        self,
        stream: ShortVideoStream,
        servers: dict[str, str],
        now_ms: Callable[[], int],
        *,
        seed: int,
        n_candidates: int = 100,
        rate_per_s: float = 20.0,
        hist_max_len: int = 20,
    ) -> None:
        super().__init__(name="liverank-traffic", daemon=True)
        self._stream = stream
        self._urls = servers
        self._now_ms = now_ms
        self._rng = np.random.default_rng(seed)
        self._n = n_candidates
        self._interval_s = 1.0 / rate_per_s
        self._hist_max_len = hist_max_len
        self.scores = {name: ServerScore(name) for name in servers}
        self.stop_event = threading.Event()

    def run(self) -> None:
        clients = {name: httpx.Client(base_url=url, timeout=30.0) for name, url in self._urls.items()}
        try:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                self._one_round(clients)
                next_at += self._interval_s
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - 1.0)  # do not burst to catch up after a stall
        finally:
            for client in clients.values():
                client.close()

    def _one_round(self, clients: dict[str, httpx.Client]) -> None:
        at_ms = self._now_ms()
        user = self._stream.user_ids(self._rng.integers(0, self._stream.n_users, size=1))[0]
        candidates = self._stream.candidates_for(int(user), self._n, at_ms, self._rng)
        history = self._stream.user_history(int(user))[: self._hist_max_len]
        body = {
            "user": {"user_id": int(user), "hist_item_ids": [int(x) for x in history]},
            "candidates": {
                "item_id": [int(x) for x in candidates.item_ids],
                "author_id": [int(x) for x in candidates.author_ids],
                "tags": candidates.tag_lists(),
            },
            "k": len(candidates),
        }
        truth = self._stream.ground_truth_click(np.asarray([user], dtype=np.uint64), candidates.item_ids, at_ms)
        labels = self._rng.random(len(truth)) < truth
        now = time.monotonic()
        for name, client in clients.items():
            score = self.scores[name]
            started = time.perf_counter()
            try:
                answer = client.post("/v1/rank", json=body)
            except httpx.HTTPError as exc:
                score.failures += 1
                score.last_error = f"{type(exc).__name__}: {exc}"
                continue
            score.requests += 1
            score.latencies_s.append(time.perf_counter() - started)
            if answer.status_code != 200:
                score.failures += 1
                score.last_error = f"{answer.status_code}: {answer.text[:200]}"
                continue
            result = answer.json()
            clicks = np.zeros(len(candidates), dtype=np.float64)
            for item in result["items"]:
                clicks[item["index"]] = item["heads"]["click"]
            score.pairs.append((now, clicks, labels))
            score.epoch = result["epoch"]
