"""``Ranker``: one ranking request from parsed columns to the top-k, with the epoch and stats of the answer.

All lookups of a request come from one store snapshot (one ``lookup_many`` call) and one dense runner (the live
model taken once at the start).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from liverank.serving.model_slot import LiveModel, ModelSlot
from liverank.serving.request import Column, Limits, RankRequest, parse_rank_request
from liverank.store import EmbeddingStore, Lookup
from liverank.store.manifest import Manifest

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class RankedItem:
    index: int
    id: Any
    score: float
    heads: dict[str, float]


@dataclass(frozen=True)
class RankResult:
    items: list[RankedItem]
    dense_version: str
    sparse_seq: dict[str, int]
    generation: int
    unseen_by_slot: dict[str, int]
    ids_by_slot: dict[str, int]
    embedding_age_max_s: float | None
    embedding_age_median_s: float | None
    embedding_age_max_s_by_slot: dict[str, float]
    lookup_s: float
    dense_s: float
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [{"index": it.index, "id": it.id, "score": it.score, "heads": it.heads} for it in self.items],
            "epoch": {"dense_version": self.dense_version, "sparse_seq": self.sparse_seq},
            "stats": {
                "unseen_ids": self.unseen_by_slot,
                "embedding_age_s": {"max": self.embedding_age_max_s, "median": self.embedding_age_median_s},
            },
        }


@dataclass
class _Segment:
    """Where one feature's ids sit inside its slot's concatenated lookup."""

    column: Column
    start: int
    stop: int


class Ranker:
    """Ranks candidates for one user with the live model and the store. HTTP-free; thread-safe."""

    def __init__(self, store: EmbeddingStore, model_slot: ModelSlot, limits: Limits) -> None:
        self._store = store
        self._slot = model_slot
        self._limits = limits

    def rank(self, doc: Any) -> RankResult:
        live = self._slot.current()
        request = parse_rank_request(doc, live.manifest, self._limits)
        return self.rank_parsed(live, request)

    def rank_parsed(self, live: LiveModel, request: RankRequest) -> RankResult:
        manifest = live.manifest
        segments, per_slot = _plan_lookups(request)
        started = time.perf_counter()
        now_ms = time.time_ns() // 1_000_000
        lookup = self._store.lookup_many(per_slot, now_ms=now_ms)
        user = _assemble(manifest, "user", request.user, segments, lookup, 1)
        candidates = _assemble(manifest, "candidate", request.candidates, segments, lookup, request.n_candidates)
        looked_up = time.perf_counter()
        heads = live.runner.run(user, candidates)
        dense_done = time.perf_counter()
        score = np.zeros(request.n_candidates, dtype=np.float32)
        for head, weight in request.blend.items():
            score += np.float32(weight) * heads[head]
        top = _top_k(score, request.k)
        id_column = _item_id_column(request)
        items = [
            RankedItem(
                index=int(i),
                id=None if id_column is None else _id_at(id_column, int(i)),
                score=float(score[i]),
                heads={name: float(values[i]) for name, values in heads.items()},
            )
            for i in top
        ]
        age_max, age_median = _ages(lookup, now_ms)
        return RankResult(
            items=items,
            dense_version=live.version,
            sparse_seq=lookup.applied_seq,
            generation=lookup.generation,
            unseen_by_slot={slot: got.n_unseen for slot, got in lookup.slots.items()},
            ids_by_slot={slot: len(got.unseen) for slot, got in lookup.slots.items()},
            embedding_age_max_s=age_max,
            embedding_age_median_s=age_median,
            embedding_age_max_s_by_slot=_slot_ages(lookup, now_ms),
            lookup_s=looked_up - started,
            dense_s=dense_done - looked_up,
            source=lookup.source,
        )


def _plan_lookups(request: RankRequest) -> tuple[dict[str, _Segment], dict[str, Any]]:
    """Concatenate every feature's ids per slot, so that one ``lookup_many`` call reads them all."""
    parts: dict[str, list[Any]] = {}
    segments: dict[str, _Segment] = {}
    sizes: dict[str, int] = {}
    for column in (*request.user.values(), *request.candidates.values()):
        slot = column.feature.slot
        if slot is None or column.ids is None:
            continue
        start = sizes.get(slot, 0)
        sizes[slot] = start + len(column.ids)
        parts.setdefault(slot, []).append(column.ids)
        segments[column.feature.name] = _Segment(column, start, start + len(column.ids))
    per_slot: dict[str, Any] = {}
    for slot, chunks in parts.items():
        if isinstance(chunks[0], tuple):
            per_slot[slot] = tuple(s for chunk in chunks for s in chunk)
        else:
            per_slot[slot] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return segments, per_slot


def _assemble(
    manifest: Manifest,
    side: str,
    columns: dict[str, Column],
    segments: dict[str, _Segment],
    lookup: Lookup,
    n_rows: int,
) -> FloatArray:
    """The dense network's input for one side: each feature's (pooled) rows in its column block."""
    width = manifest.user_width if side == "user" else manifest.candidate_width
    out = np.empty((n_rows, width), dtype=np.float32)
    for feature, start, stop in manifest.feature_offsets(side):  # type: ignore[arg-type]
        column = columns[feature.name]
        if feature.kind == "numeric":
            assert column.numbers is not None
            out[:, start] = column.numbers
            continue
        segment = segments[feature.name]
        assert feature.slot is not None
        rows = lookup.slots[feature.slot].vectors[segment.start : segment.stop]
        if feature.kind == "id":
            out[:, start:stop] = rows
        else:
            assert column.lengths is not None
            out[:, start:stop] = _pool(rows, column.lengths, feature.pooling == "mean")
    return out


def _pool(rows: FloatArray, lengths: np.ndarray[Any, np.dtype[np.int64]], mean: bool) -> FloatArray:
    """Sum (or mean) of consecutive runs of ``rows``, one run per length; an empty list pools to zeros."""
    pooled = np.zeros((len(lengths), rows.shape[1]), dtype=np.float32)
    nonempty = lengths > 0
    if rows.shape[0]:
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        pooled[nonempty] = np.add.reduceat(rows, starts, axis=0)
        if mean:
            pooled[nonempty] /= lengths[nonempty, None].astype(np.float32)
    return pooled


def _top_k(score: FloatArray, k: int) -> np.ndarray[Any, np.dtype[np.intp]]:
    if k >= len(score):
        return np.argsort(-score, kind="stable")
    part = np.argpartition(-score, k - 1)[:k]
    return part[np.argsort(-score[part], kind="stable")]


def _item_id_column(request: RankRequest) -> Column | None:
    """The first candidate id feature (typically item_id) names the items in the answer."""
    for column in request.candidates.values():
        if column.feature.kind == "id":
            return column
    return None


def _id_at(column: Column, index: int) -> Any:
    assert column.ids is not None
    value = column.ids[index]
    return value if isinstance(value, str) else int(value)


def _slot_ages(lookup: Lookup, now_ms: int) -> dict[str, float]:
    """Per slot, the oldest age (s since last update) among the rows this answer used; slots with none are left out."""
    out = {}
    for slot, got in lookup.slots.items():
        seen = got.updated_at_ms[~got.unseen]
        if seen.size:
            out[slot] = (now_ms - int(seen.min())) / 1000.0
    return out


def _ages(lookup: Lookup, now_ms: int) -> tuple[float | None, float | None]:
    """Max and median age (s since last update) of the rows this answer used; unseen ids have no age."""
    times = [got.updated_at_ms[~got.unseen] for got in lookup.slots.values()]
    seen = np.concatenate(times) if times else np.zeros(0, dtype=np.int64)
    if not seen.size:
        return None, None
    ages_s = (now_ms - seen) / 1000.0
    return float(ages_s.max()), float(np.median(ages_s))
