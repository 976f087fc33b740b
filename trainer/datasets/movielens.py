"""MovieLens ratings as a time-ordered event log, and the MovieLens model's manifest and features.

Readers (the format is recognised from the file's first line):

- ``u.data`` (MovieLens 100K): ``user<TAB>item<TAB>rating<TAB>timestamp``, no header;
- ``ratings.dat`` (1M, 10M): ``user::item::rating::timestamp``;
- RecBole's ``.inter``: a header naming typed columns, e.g. ``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>
  timestamp:float``, then tab-separated rows in that column order;
- ``ratings.csv`` (ml-latest, 20M, 25M): a header ``userId,movieId,rating,timestamp``, comma separated.

Events are stably sorted by timestamp (seconds). A rating of 4 or more is a positive (label 1.0).

The model: user side ``user_id`` (id) and ``hist_item_ids`` (id list, mean-pooled, slot ``item_id``: the user's last
20 positively rated items with a timestamp before the event's, most recent first); candidate side ``item_id`` (id).
No genres or other side information: ids and the history only. One head, ``click`` (the rating >= 4 label).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverank.store.manifest import Feature, Head, Manifest, build_manifest
from liverank.store.slots import SlotConfig
from liverank.trainer.datasets.cache import DatasetFormatInvalid
from liverank.trainer.events import F32Array, I64Array, U64Array
from liverank.trainer.features import IdColumn, single
from liverank.trainer.generic import ColumnBatch

MODEL_NAME = "movielens"
HIST_MAX_LEN = 20
POSITIVE_RATING = 4.0

FEATURES: tuple[Feature, ...] = (
    Feature("user_id", "user", "id", "user_id"),
    Feature("hist_item_ids", "user", "id_list", "item_id", "mean", HIST_MAX_LEN),
    Feature("item_id", "candidate", "id", "item_id"),
)


@dataclass(frozen=True)
class Ratings:
    """A ratings log in time order: one row per rating; ``timestamps`` in seconds."""

    user_ids: U64Array
    item_ids: U64Array
    ratings: F32Array
    timestamps: I64Array

    def __len__(self) -> int:
        return len(self.user_ids)

    def head(self, n: int) -> Ratings:
        """The first ``n`` ratings (in time order)."""
        return Ratings(self.user_ids[:n], self.item_ids[:n], self.ratings[:n], self.timestamps[:n])

    @property
    def labels(self) -> F32Array:
        out: F32Array = (self.ratings >= POSITIVE_RATING).astype(np.float32)
        return out


def read_ratings(path: str | Path) -> Ratings:
    """Read a MovieLens ratings file in any of the known forms; rows stably sorted by timestamp."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        first = f.readline()
        if not first.strip():
            raise DatasetFormatInvalid(f"{path}: empty file")
        columns, sep, has_header = _sniff(first, path)
        rows: list[list[str]] = [] if has_header else [_split(first, sep, path, 1, len(columns))]
        for number, line in enumerate(f, start=2):
            if line.strip():
                rows.append(_split(line, sep, path, number, len(columns)))
    if not rows:
        raise DatasetFormatInvalid(f"{path}: a header and no ratings")
    table = list(zip(*rows, strict=True))
    try:
        ratings = np.asarray(table[columns["rating"]], dtype=np.float32)
        timestamps = np.asarray([int(float(t)) for t in table[columns["timestamp"]]], dtype=np.int64)
    except ValueError as exc:
        raise DatasetFormatInvalid(f"{path}: a rating or timestamp is not a number ({exc})") from exc
    order = np.argsort(timestamps, kind="stable")
    return Ratings(
        user_ids=_token_ids(table[columns["user"]])[order],
        item_ids=_token_ids(table[columns["item"]])[order],
        ratings=ratings[order],
        timestamps=timestamps[order],
    )


_HEADER_NAMES = {
    "user": ("user_id", "userid", "user"),
    "item": ("item_id", "movieid", "movie_id", "item"),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time"),
}


def _sniff(first: str, path: Path) -> tuple[dict[str, int], str, bool]:
    """Column positions, separator and whether ``first`` is a header."""
    line = first.rstrip("\r\n")
    sep = "::" if "::" in line else "\t" if "\t" in line else "," if "," in line else None
    if sep is None:
        raise DatasetFormatInvalid(f"{path}: cannot tell the separator of {line[:80]!r} (expected tab, '::' or ',')")
    fields = line.split(sep)
    if all(_is_number(x) for x in fields):
        if len(fields) < 4:
            raise DatasetFormatInvalid(f"{path}: expected user, item, rating, timestamp; got {len(fields)} fields")
        return {"user": 0, "item": 1, "rating": 2, "timestamp": 3}, sep, False
    names = [x.split(":", 1)[0].strip().lower() for x in fields]  # RecBole's "name:type"
    columns = {}
    for key, aliases in _HEADER_NAMES.items():
        found = [i for i, name in enumerate(names) if name in aliases]
        if not found:
            raise DatasetFormatInvalid(f"{path}: the header {line[:120]!r} names no {key} column")
        columns[key] = found[0]
    return columns, sep, True


def _split(line: str, sep: str, path: Path, number: int, n_columns: int) -> list[str]:
    fields = line.rstrip("\r\n").split(sep)
    if len(fields) < n_columns:
        raise DatasetFormatInvalid(f"{path}:{number}: expected {n_columns} fields, got {len(fields)}: {line[:80]!r}")
    return fields


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _token_ids(tokens: tuple[str, ...] | list[str]) -> U64Array:
    """Integer ids as they are; any other token as a stable 64-bit hash of its text (blake2b)."""
    try:
        values = [int(t) for t in tokens]
    except ValueError:
        values = [
            int(t) if t.isdigit() else int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")
            for t in tokens
        ]
    if values and min(values) < 0:
        raise DatasetFormatInvalid("ids must be non-negative integers or tokens")
    return np.asarray(values, dtype=np.uint64)


# --- the model ----------------------------------------------------------------------------------------------


def movielens_manifest(dim: int = 16, version: str = "1", *, created_at_ms: int | None = None) -> Manifest:
    """Slots ``user_id`` and ``item_id`` (float32, ``dim``); features as the module docstring says; head click."""
    return build_manifest(
        model=MODEL_NAME,
        version=version,
        slots=[SlotConfig(name="user_id", dim=dim), SlotConfig(name="item_id", dim=dim)],
        features=FEATURES,
        heads=[Head("click", "p_click", 1.0)],
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
    )


def positive_histories(ratings: Ratings, max_len: int = HIST_MAX_LEN) -> tuple[U64Array, I64Array]:
    """Per event: the user's last ``max_len`` positively rated items with an earlier timestamp, most recent first.

    Ratings made in the same second as the event are not yet history (MovieLens users rate in bursts; a model
    must not see the answers of the burst it is scoring). Returns [n, max_len] ids (0-padded) and lengths.
    """
    n = len(ratings)
    hist = np.zeros((n, max_len), dtype=np.uint64)
    lengths = np.zeros(n, dtype=np.int64)
    positives: dict[int, list[tuple[int, int]]] = {}  # user -> [(timestamp, item)] in time order
    labels = ratings.labels
    for i, (user, item, ts, label) in enumerate(
        zip(
            ratings.user_ids.tolist(),
            ratings.item_ids.tolist(),
            ratings.timestamps.tolist(),
            labels.tolist(),
            strict=True,
        )
    ):
        mine = positives.setdefault(user, [])
        end = len(mine)
        while end and mine[end - 1][0] >= ts:
            end -= 1
        recent = [it for _, it in mine[max(0, end - max_len) : end]][::-1]
        hist[i, : len(recent)] = recent
        lengths[i] = len(recent)
        if label:
            mine.append((ts, item))
    return hist, lengths


def movielens_events(ratings: Ratings, max_len: int = HIST_MAX_LEN) -> ColumnBatch:
    """The model's columns for every rating (time order), with click labels; event time = timestamp in ms."""
    hist, lengths = positive_histories(ratings, max_len)
    return ColumnBatch(
        ids={
            "user_id": single(ratings.user_ids),
            "hist_item_ids": IdColumn(hist, lengths),
            "item_id": single(ratings.item_ids),
        },
        numbers={},
        labels={"click": ratings.labels},
        event_time_ms=ratings.timestamps * 1000,
    )


# --- synthetic data -----------------------------------------------------------------------------------------


def write_synthetic_ratings(
    path: str | Path,
    *,
    n_events: int = 6000,
    n_users: int = 150,
    n_items: int = 120,
    n_tastes: int = 4,
    drift_at: float = 0.75,
    seed: int = 0,
    start_s: int = 880_000_000,
) -> Path:
    """A MovieLens-format (``u.data``) file with a learnable pattern and drift, for tests and smoke runs.

    Each user has a taste group and each item a group and a quality: a user likes good items, and items of their
    own group more often. Only the ids carry this, so a model must learn each item's quality and group and each
    user's taste (from their id or their history). Users and items arrive over time (ids in order of arrival) and
    users rate in bursts, as in MovieLens. Drift: from ``drift_at`` of the timeline on, half of the items have
    their quality drawn anew (tastes in films change), which a model frozen before then cannot know and one that
    keeps learning picks up.
    """
    rng = np.random.default_rng(seed)
    user_taste = rng.integers(0, n_tastes, n_users)
    item_taste = rng.integers(0, n_tastes, n_items)
    quality_before = rng.normal(0.0, 1.5, n_items)
    quality_after = np.where(rng.random(n_items) < 0.5, rng.normal(0.0, 1.5, n_items), quality_before)
    lines: list[str] = []
    t = start_s
    while len(lines) < n_events:
        progress = len(lines) / n_events
        live_users = max(1, int(n_users * (0.3 + 0.7 * progress)))
        live_items = max(1, int(n_items * (0.3 + 0.7 * progress)))
        user = int(rng.integers(max(0, live_users - n_users // 2), live_users))
        quality = quality_after if progress >= drift_at else quality_before
        items = rng.choice(live_items, size=min(int(rng.integers(3, 16)), live_items), replace=False)
        for item in items.tolist():
            logit = 1.5 * (1.0 if user_taste[user] == item_taste[item] else -0.5) + quality[item]
            liked = rng.random() < 1.0 / (1.0 + np.exp(-logit))
            rating = int(rng.integers(4, 6)) if liked else int(rng.integers(1, 4))
            lines.append(f"{user + 1}\t{item + 1}\t{rating}\t{t}")
            t += int(rng.integers(0, 3))
        t += int(rng.integers(30, 600))
    path = Path(path)
    path.write_text("\n".join(lines[:n_events]) + "\n", encoding="utf-8")
    return path


def describe(ratings: Ratings) -> dict[str, Any]:
    """Counts for a report: events, users, items, positive rate, time span."""
    return {
        "events": len(ratings),
        "users": len(np.unique(ratings.user_ids)),
        "items": len(np.unique(ratings.item_ids)),
        "positive_rate": round(float(ratings.labels.mean()), 4) if len(ratings) else None,
        "first_timestamp": int(ratings.timestamps[0]) if len(ratings) else None,
        "last_timestamp": int(ratings.timestamps[-1]) if len(ratings) else None,
    }
