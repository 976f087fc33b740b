"""Parsing a columnar ranking request against the live manifest. HTTP-free: takes the decoded JSON document.

Request::

    {"user": {"user_id": 42, "hist_item_ids": [3, 9], ...},
     "candidates": {"item_id": [..N..], "tags": [[..], ..N..], ...},
     "k": 50, "blend": {"click": 0.7, "finish": 0.3}}

Columnar JSON turned into numpy arrays costs tens of microseconds for 500 candidates; pydantic row models cost
about 20 times more (DESIGN.md), so validation here is hand-written and strict. The served path reads the body with
``serving/rank_body.py``: its integer id columns arrive as uint64 arrays already, every other value as the objects
orjson makes.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from liverank.serving.columns import BadId, NotAList, flat_int_ids, id_list_lengths, int_ids
from liverank.serving.errors import (
    EmptyCandidates,
    LimitExceeded,
    MissingFeature,
    RaggedColumns,
    UnknownFeature,
    UnknownHead,
    WrongType,
)
from liverank.store import SlotConfig
from liverank.store.format import IntIds
from liverank.store.manifest import Feature, Manifest

Ids = IntIds | tuple[str, ...]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Lengths = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class Column:
    """One feature's values for all rows of a side. ``ids`` for id features (with ``lengths`` per row for
    id lists: ``ids`` is then all lists flattened), ``numbers`` for numeric features."""

    feature: Feature
    ids: Ids | None = None
    lengths: Lengths | None = None
    numbers: FloatArray | None = None


@dataclass(frozen=True)
class RankRequest:
    user: dict[str, Column]
    candidates: dict[str, Column]
    n_candidates: int
    k: int
    blend: dict[str, float]


@dataclass(frozen=True)
class Limits:
    max_candidates: int
    max_list_ids: int
    max_k: int


def parse_rank_request(doc: Any, manifest: Manifest, limits: Limits) -> RankRequest:
    """Validate ``doc`` against the manifest's features and the limits; a ``RequestInvalid`` subclass if not."""
    if not isinstance(doc, dict):
        raise WrongType("the request body must be a JSON object with 'user' and 'candidates'")
    unknown_keys = set(doc) - {"user", "candidates", "k", "blend"}
    if unknown_keys:
        raise UnknownFeature(f"unknown request fields: {sorted(unknown_keys)} (allowed: user, candidates, k, blend)")
    user_doc, cand_doc = doc.get("user", {}), doc.get("candidates")
    if not isinstance(user_doc, dict):
        raise WrongType("'user' must be an object mapping user feature names to values")
    if not isinstance(cand_doc, dict):
        raise WrongType("'candidates' must be an object mapping candidate feature names to columns")
    _check_names(user_doc, manifest.user_features, "user")
    _check_names(cand_doc, manifest.candidate_features, "candidate")
    n = _column_length(cand_doc, manifest)
    if n > limits.max_candidates:
        raise LimitExceeded(f"{n} candidates; this server ranks at most {limits.max_candidates} per request")
    user = {f.name: _user_value(f, user_doc[f.name], _slot_of(manifest, f), limits) for f in manifest.user_features}
    candidates = {
        f.name: _candidate_column(f, cand_doc[f.name], _slot_of(manifest, f), limits)
        for f in manifest.candidate_features
    }
    return RankRequest(
        user, candidates, n, _parse_k(doc.get("k", 50), n, limits), _parse_blend(doc.get("blend"), manifest)
    )


def takes_uint64_ids(feature: Feature, slot: SlotConfig | None) -> bool:
    """An id feature whose column a uint64 array holds exactly: ids of an int slot, or of a str_hash slot (which takes
    ints as they are). ``serving/rank_body.py`` reads these columns as arrays."""
    return feature.kind == "id" and slot is not None and slot.id_kind in ("int", "str_hash")


def _slot_of(manifest: Manifest, feature: Feature) -> SlotConfig | None:
    return None if feature.slot is None else manifest.slot(feature.slot)


def _check_names(given: dict[str, Any], features: tuple[Feature, ...], side: str) -> None:
    known = {f.name for f in features}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UnknownFeature(f"unknown {side} features: {unknown} (the live model reads: {sorted(known)})")
    missing = sorted(known - set(given))
    if missing:
        raise MissingFeature(f"missing {side} features: {missing}")


def _column_length(cand_doc: dict[str, Any], manifest: Manifest) -> int:
    lengths = {}
    for feature in manifest.candidate_features:
        column = cand_doc[feature.name]
        if not isinstance(column, list | np.ndarray):  # an array: an id column read by serving/rank_body.py
            raise WrongType(f"candidate feature {feature.name!r} must be a list with one value per candidate")
        lengths[feature.name] = len(column)
    if not lengths or not any(lengths.values()):
        raise EmptyCandidates("no candidates to rank: candidate columns are empty")
    if len(set(lengths.values())) > 1:
        raise RaggedColumns(f"candidate columns differ in length: {lengths}")
    return next(iter(lengths.values()))


def _parse_k(raw: Any, n: int, limits: Limits) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise WrongType(f"'k' must be a positive integer, got {raw!r}")
    if raw > limits.max_k:
        raise LimitExceeded(f"k={raw}; this server returns at most {limits.max_k}")
    return min(raw, n)


def _parse_blend(raw: Any, manifest: Manifest) -> dict[str, float]:
    if raw is None:
        return {head.name: head.weight for head in manifest.heads}
    if not isinstance(raw, dict) or not raw:
        raise WrongType("'blend' must be a non-empty object mapping head names to weights")
    heads = {head.name for head in manifest.heads}
    unknown = sorted(set(raw) - heads)
    if unknown:
        raise UnknownHead(f"unknown heads in 'blend': {unknown} (the live model has: {sorted(heads)})")
    out: dict[str, float] = {}
    for name, weight in raw.items():
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not np.isfinite(weight):
            raise WrongType(f"blend weight of {name!r} must be a finite number, got {weight!r}")
        out[name] = float(weight)
    return out


def _ids(values: list[Any], slot: SlotConfig, what: str) -> Ids:
    """Ids of one slot's kind, exactly; a clear error for anything else."""
    if _string_ids(values, slot):
        if not all(isinstance(v, str) and v for v in values):
            raise WrongType(f"{what}: ids of slot {slot.name!r} are non-empty strings")
        return tuple(values)
    try:
        return int_ids(values)
    except BadId as exc:
        raise _bad_id(exc, slot, what) from None


def _string_ids(values: list[Any], slot: SlotConfig) -> bool:
    return slot.id_kind == "str" or (slot.id_kind == "str_hash" and bool(values) and isinstance(values[0], str))


def _bad_id(exc: BadId, slot: SlotConfig, what: str) -> WrongType:
    return WrongType(f"{what}: ids must be integers in 0..2**64-1 (slot {slot.name!r}), got {reprlib.repr(exc.value)}")


def _max_len(feature: Feature, limits: Limits) -> int:
    return min(limits.max_list_ids, feature.max_len or limits.max_list_ids)


def _user_value(feature: Feature, raw: Any, slot: SlotConfig | None, limits: Limits) -> Column:
    what = f"user feature {feature.name!r}"
    if feature.kind == "numeric":
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not np.isfinite(raw):
            raise WrongType(f"{what} must be a finite number")
        return Column(feature, numbers=np.asarray([raw], dtype=np.float32))
    assert slot is not None
    if feature.kind == "id":
        if isinstance(raw, list | dict) or raw is None:
            raise WrongType(f"{what} must be one id")
        return Column(feature, ids=_ids([raw], slot, what))
    if not isinstance(raw, list):
        raise WrongType(f"{what} must be a list of ids")
    if len(raw) > _max_len(feature, limits):
        raise LimitExceeded(f"{what} has {len(raw)} ids; at most {_max_len(feature, limits)} are accepted")
    return Column(feature, ids=_ids(raw, slot, what), lengths=np.asarray([len(raw)], dtype=np.int64))


def _candidate_column(feature: Feature, given: list[Any] | IntIds, slot: SlotConfig | None, limits: Limits) -> Column:
    what = f"candidate feature {feature.name!r}"
    raw: list[Any]
    if isinstance(given, np.ndarray):
        # Already uint64 ids (serving/rank_body.py, for the manifest's integer id features): taken as they are, or,
        # if the live manifest changed since and reads this feature otherwise, validated as the list it was.
        if takes_uint64_ids(feature, slot):
            return Column(feature, ids=given)
        raw = given.tolist()
    else:
        raw = given
    if feature.kind == "numeric":
        try:
            numbers = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise WrongType(f"{what} must be a list of numbers") from exc
        if numbers.ndim != 1 or not np.isfinite(numbers).all():
            raise WrongType(f"{what} must be a list of finite numbers")
        return Column(feature, numbers=numbers)
    assert slot is not None
    if feature.kind == "id":
        return Column(feature, ids=_ids(raw, slot, what))
    try:
        lengths = id_list_lengths(raw)
    except NotAList:
        raise WrongType(f"{what} must be a list of id lists, one per candidate") from None
    longest = int(lengths.max()) if lengths.size else 0
    if longest > _max_len(feature, limits):
        raise LimitExceeded(f"{what} has a list of {longest} ids; at most {_max_len(feature, limits)} are accepted")
    if slot.id_kind == "int":
        try:
            return Column(feature, ids=flat_int_ids(raw, lengths), lengths=lengths)
        except BadId as exc:
            raise _bad_id(exc, slot, what) from None
    # String ids (or str_hash, which takes strings or ints): the slot's kind decides per column, as for one list.
    return Column(feature, ids=_ids(list(chain.from_iterable(raw)), slot, what), lengths=lengths)
