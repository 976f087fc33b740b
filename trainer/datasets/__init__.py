"""Real data sets as time-ordered event logs for the replay experiments (``liverank.trainer.replay``).

``movielens`` (the ratings forms of MovieLens and RecBole), ``criteo`` (the Kaggle ``train.txt`` form), ``cache``
(MovieLens-100K from the RecBole wheel on PyPI). ``load`` turns a named data set or a user's file into
``ReplayData``: the model's manifest, every event's columns in time order, and how events group into ranking
requests (by user for MovieLens; consecutive runs for Criteo, which has no users).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from liverank.store.manifest import Manifest
from liverank.trainer.datasets.cache import DatasetFormatInvalid, DatasetUnavailable, cache_dir, fetch_movielens_100k
from liverank.trainer.datasets.criteo import criteo_events, criteo_manifest, read_criteo, write_synthetic_criteo
from liverank.trainer.datasets.movielens import (
    describe,
    movielens_events,
    movielens_manifest,
    read_ratings,
    write_synthetic_ratings,
)
from liverank.trainer.events import I64Array
from liverank.trainer.generic import ColumnBatch

__all__ = ["DATASETS", "DatasetFormatInvalid", "DatasetUnavailable", "ReplayData", "load"]

Format = Literal["movielens", "criteo"]
DATASETS: tuple[str, ...] = ("movielens-100k", "synthetic-movielens", "synthetic-criteo")
CRITEO_REQUEST_SIZE = 200
SYNTHETIC_EVENTS = 20_000


@dataclass(frozen=True)
class ReplayData:
    """A data set ready to replay: ``events`` in time order; events of one shard that share a ``request_keys``
    value are ranked in one request (user features from the first of them, in time order)."""

    name: str
    manifest: Manifest
    events: ColumnBatch
    request_keys: I64Array
    source: str
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events)


def load(
    *,
    dataset: str | None = None,
    data: Path | None = None,
    format: Format | None = None,
    dim: int = 16,
    max_events: int | None = None,
    cache: Path | None = None,
    synthetic_events: int | None = None,
) -> ReplayData:
    """``dataset`` by name (one of ``DATASETS``) or ``data`` in ``format``; the first ``max_events`` events.

    Raises ``DatasetUnavailable`` when a named data set cannot be had here.
    """
    if (dataset is None) == (data is None):
        raise ValueError("give either a data set name or a data file")
    if dataset is not None:
        if dataset == "movielens-100k":
            data, format = fetch_movielens_100k(cache), "movielens"
        elif dataset in ("synthetic-movielens", "synthetic-criteo"):
            # Generated (seeded, so always the same file) and then read back through the real reader.
            n = synthetic_events or SYNTHETIC_EVENTS
            scratch = cache_dir(cache) / "synthetic"
            scratch.mkdir(parents=True, exist_ok=True)
            if dataset == "synthetic-movielens":
                data = write_synthetic_ratings(scratch / f"movielens-{n}.data", n_events=n)
                format = "movielens"
            else:
                data = write_synthetic_criteo(scratch / f"criteo-{n}.txt", n_events=n)
                format = "criteo"
        else:
            raise ValueError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
    assert data is not None
    name = dataset or Path(data).name
    if format == "movielens":
        ratings = read_ratings(data)
        if max_events is not None:
            ratings = ratings.head(max_events)
        return ReplayData(
            name=name,
            manifest=movielens_manifest(dim, created_at_ms=0),
            events=movielens_events(ratings),
            request_keys=ratings.user_ids.astype(np.int64),
            source=str(data),
            stats=describe(ratings),
        )
    if format == "criteo":
        log = read_criteo(data, max_events=max_events)
        return ReplayData(
            name=name,
            manifest=criteo_manifest(dim, created_at_ms=0),
            events=criteo_events(log),
            request_keys=np.arange(len(log), dtype=np.int64) // CRITEO_REQUEST_SIZE,
            source=str(data),
            stats={"events": len(log), "positive_rate": round(float(log.labels.mean()), 4)},
        )
    raise ValueError(f"unknown format {format!r}; known: movielens, criteo")
