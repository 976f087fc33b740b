"""The per-request path of ``/v1/rank`` as it was before the compiled one (issue 11), in plain numpy and Python.

Two uses: the reference the serving path must match exactly (``tests/serving/test_rank_fast_path.py`` compares
inputs, scores and answers), and the "before" column of the stage profile (``rank_profile``), timed side by side
with the serving path in the same run. Valid requests with integer ids and numeric features only (W-500 and the
tiny preset): the serving path's validation is tested on its own.

Stages, as the serving path has them: ``parse`` (numpy infers each id column's dtype from the list, then Python
looks for JSON booleans among 0/1 values), ``assemble`` (a fresh array per side, pooling with ``add.reduceat``:
``columns.pool_numpy``),
``answer`` (one object per ranked item, then the JSON document).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from liverank.serving.columns import pool_numpy
from liverank.serving.model_slot import LiveModel
from liverank.serving.ranker import _plan_lookups, _Segment
from liverank.serving.request import Column, RankRequest
from liverank.store import Lookup
from liverank.store.manifest import Feature, Manifest

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Lengths = np.ndarray[Any, np.dtype[np.int64]]


def _int_ids(values: list[Any]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    arr = np.asarray(values)
    if arr.ndim == 1 and arr.size and arr.dtype.kind not in "iu":
        # numpy makes float64 or object of ids above 2**63 - 1 mixed with smaller ones: check each exactly.
        if not all(type(v) is int and 0 <= v < 2**64 for v in values):
            raise ValueError("the reference takes integer ids in 0..2**64-1 only")
        return np.asarray(values, dtype=np.uint64)
    if arr.size and arr.min() <= 1 and any(type(v) is bool for v in values):
        raise ValueError("a JSON boolean among the ids")
    return arr.astype(np.uint64)


def _column(feature: Feature, raw: Any, user: bool) -> Column:
    if feature.kind == "numeric":
        return Column(feature, numbers=np.asarray([raw] if user else raw, dtype=np.float32))
    if feature.kind == "id":
        return Column(feature, ids=_int_ids([raw] if user else raw))
    rows = [raw] if user else raw
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    return Column(feature, ids=_int_ids(list(itertools.chain.from_iterable(rows))), lengths=lengths)


def parse(doc: dict[str, Any], manifest: Manifest) -> RankRequest:
    """The request's columns as numpy arrays (no validation: the reference takes valid requests only)."""
    user = {f.name: _column(f, doc["user"][f.name], True) for f in manifest.user_features}
    candidates = {f.name: _column(f, doc["candidates"][f.name], False) for f in manifest.candidate_features}
    n = len(doc["candidates"][manifest.candidate_features[0].name])
    blend = doc.get("blend") or {head.name: head.weight for head in manifest.heads}
    return RankRequest(user, candidates, n, min(int(doc.get("k", 50)), n), {k: float(v) for k, v in blend.items()})


def assemble(
    manifest: Manifest, side: str, columns: dict[str, Column], segments: dict[str, _Segment], lookup: Lookup, n: int
) -> FloatArray:
    """The dense network's input for one side, in a fresh array."""
    width = manifest.user_width if side == "user" else manifest.candidate_width
    out = np.empty((n, width), dtype=np.float32)
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
            out[:, start:stop] = pool_numpy(rows, column.lengths, feature.pooling == "mean")
    return out


def blend_top_k(request: RankRequest, heads: dict[str, FloatArray]) -> tuple[FloatArray, np.ndarray[Any, Any]]:
    """Blended scores and the top-k positions, best first (ties: the earlier candidate first)."""
    score = np.zeros(request.n_candidates, dtype=np.float32)
    for head, weight in request.blend.items():
        score += np.float32(weight) * heads[head]
    order = np.argsort(-score, kind="stable")[: request.k]
    return score, order


def answer(
    live: LiveModel, request: RankRequest, lookup: Lookup, score: FloatArray, heads: dict[str, FloatArray], top: Any
) -> dict[str, Any]:
    """The JSON document of the answer, one Python object per ranked item (embedding ages left out)."""
    id_column = next((c for c in request.candidates.values() if c.feature.kind == "id"), None)
    items = []
    for i in top:
        position = int(i)
        item_id = None if id_column is None or id_column.ids is None else int(id_column.ids[position])
        items.append(
            {
                "index": position,
                "id": item_id,
                "score": float(score[position]),
                "heads": {name: float(values[position]) for name, values in heads.items()},
            }
        )
    return {
        "items": items,
        "epoch": {"dense_version": live.version, "sparse_seq": lookup.applied_seq},
        "stats": {"unseen_ids": {slot: got.n_unseen for slot, got in lookup.slots.items()}},
    }


def rank(live: LiveModel, lookup_many: Any, doc: dict[str, Any]) -> tuple[dict[str, Any], FloatArray, FloatArray]:
    """The whole reference path for one request: (answer without ages, user input, candidate input)."""
    request = parse(doc, live.manifest)
    segments, per_slot = _plan_lookups(request)
    lookup = lookup_many(per_slot)
    user = assemble(live.manifest, "user", request.user, segments, lookup, 1)
    candidates = assemble(live.manifest, "candidate", request.candidates, segments, lookup, request.n_candidates)
    heads = live.runner.run(user, candidates)
    score, top = blend_top_k(request, heads)
    return answer(live, request, lookup, score, heads, top), user, candidates
