"""Checking a decoded delta against the store's slots, and turning it into sorted LMDB keys and values.

Everything that can be wrong with a delta is found here, before a write transaction starts: a delta that passes
is applied whole; one that fails changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from liverank.store.errors import (
    DeltaCorrupt,
    DimMismatch,
    DtypeMismatch,
    IdOutOfRange,
    NonFiniteValues,
    SchemaMismatch,
    UnknownSlot,
)
from liverank.store.format import (
    Array,
    Ids,
    IntIds,
    SparseDelta,
    encode_int_keys,
    encode_str_key,
    encode_values,
    hash_str_id,
)
from liverank.store.slots import SlotConfig


@dataclass(frozen=True)
class PreparedSlot:
    """One slot's rows and tombstones, validated, sorted by key, encoded for LMDB and typed for the RAM tier."""

    config: SlotConfig
    code: int
    keys: list[bytes]
    values: list[bytes]
    int_ids: IntIds | None  # int and str_hash slots, sorted
    str_ids: tuple[str, ...] | None  # str slots, in key order
    vectors: Array  # (n, dim) in the slot's storage dtype, aligned with keys
    updated_at_ms: Array
    tombstone_keys: list[bytes]
    tombstone_int_ids: IntIds | None
    tombstone_str_ids: tuple[str, ...] | None


@dataclass(frozen=True)
class PreparedDelta:
    delta: SparseDelta
    slots: tuple[PreparedSlot, ...]

    @property
    def n_rows(self) -> int:
        return sum(len(s.vectors) for s in self.slots)


def _int_ids_for(config: SlotConfig, ids: Ids, what: str) -> IntIds:
    if isinstance(ids, tuple):
        if config.id_kind != "str_hash":
            if not ids:
                return np.zeros(0, dtype=np.uint64)
            raise IdOutOfRange(f"{what}: slot {config.name!r} takes integer ids, got strings")
        for value in ids:
            raw = value.encode("utf-8")
            if not raw or len(raw) > 4096:
                raise IdOutOfRange(f"{what}: string ids must be 1..4096 UTF-8 bytes")
        return np.asarray([hash_str_id(s) for s in ids], dtype=np.uint64)
    arr = np.asarray(ids)
    if arr.dtype != np.uint64:
        raise IdOutOfRange(f"{what}: integer ids must be unsigned 64-bit, got dtype {arr.dtype}")
    return arr


def _str_ids_for(config: SlotConfig, ids: Ids, what: str) -> tuple[str, ...]:
    if isinstance(ids, tuple):
        return ids
    if len(ids) == 0:
        return ()
    raise IdOutOfRange(f"{what}: slot {config.name!r} takes string ids, got integers")


def _check_unique(sorted_ids: Any, what: str) -> None:
    if len(sorted_ids) > 1:
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) if isinstance(sorted_ids, np.ndarray) else None
        if dup is not None and dup.size:
            raise DeltaCorrupt(f"{what}: id {int(sorted_ids[dup[0]])} appears more than once")


def _check_vectors(config: SlotConfig, values: Array, n: int, what: str) -> Array:
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DimMismatch(f"{what}: expected {n} vectors as an (n, dim) array, got shape {arr.shape}")
    if n and arr.shape[1] != config.dim:
        raise DimMismatch(f"{what}: vectors have dim {arr.shape[1]}, slot {config.name!r} has dim {config.dim}")
    if n and arr.dtype != config.np_dtype:
        raise DtypeMismatch(f"{what}: vectors are {arr.dtype}, slot {config.name!r} stores {config.dtype}")
    if n and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise NonFiniteValues(f"{what}: row {bad} contains NaN or infinity")
    return arr.reshape(n, config.dim) if n else np.zeros((0, config.dim), dtype=config.np_dtype)


def prepare_delta(
    delta: SparseDelta, slots: Mapping[str, tuple[SlotConfig, int]], schema_hash: str | None, *, for_lmdb: bool = True
) -> PreparedDelta:
    """Validate ``delta`` against ``slots`` (name -> (config, slot code)) and the store's schema hash.

    ``schema_hash`` None means the store is not bound to a model schema yet (a bare store): any delta fits.
    ``for_lmdb`` False skips encoding LMDB keys and values (a RAM tier following a delta another process wrote
    needs only the typed arrays).
    """
    if schema_hash is not None and delta.schema_hash != schema_hash:
        raise SchemaMismatch(
            f"delta was built for schema {delta.schema_hash!r}, the live model's schema is {schema_hash!r}"
        )
    prepared: list[PreparedSlot] = []
    for name, slot in delta.slots.items():
        if name not in slots:
            raise UnknownSlot(f"delta names slot {name!r}, which the store does not have (known: {sorted(slots)})")
        config, code = slots[name]
        what = f"slot {name!r}"
        vectors = _check_vectors(config, slot.values, slot.n_rows, what)
        updated = np.asarray(slot.updated_at_ms, dtype=np.int64)
        if updated.shape != (slot.n_rows,):
            raise DeltaCorrupt(f"{what}: expected {slot.n_rows} updated_at_ms values, got shape {updated.shape}")
        if config.id_kind == "str":
            prepared.append(_prepare_str_slot(config, code, slot.ids, slot.tombstones, vectors, updated, what))
        else:
            prepared.append(
                _prepare_int_slot(config, code, slot.ids, slot.tombstones, vectors, updated, what, for_lmdb)
            )
    return PreparedDelta(delta, tuple(prepared))


def with_lmdb_encoding(prepared: PreparedDelta) -> PreparedDelta:
    """``prepared`` (validated with ``for_lmdb`` False) with its LMDB keys and values encoded: the writer publishes
    a delta first and encodes it for LMDB on its background thread (``liverank.store.lmdb_applier``)."""
    slots = []
    for given in prepared.slots:
        slot = given
        if slot.int_ids is not None and not slot.keys and len(slot.int_ids):
            slot = replace(
                slot,
                keys=encode_int_keys(slot.code, slot.int_ids),
                values=encode_values(slot.vectors, slot.updated_at_ms, slot.config.np_dtype),
            )
        if slot.tombstone_int_ids is not None and not slot.tombstone_keys and len(slot.tombstone_int_ids):
            slot = replace(slot, tombstone_keys=encode_int_keys(slot.code, slot.tombstone_int_ids))
        slots.append(slot)
    return PreparedDelta(prepared.delta, tuple(slots))


def _prepare_int_slot(
    config: SlotConfig,
    code: int,
    ids: Ids,
    tombstones: Ids,
    vectors: Array,
    updated: Array,
    what: str,
    for_lmdb: bool = True,
) -> PreparedSlot:
    int_ids = _int_ids_for(config, ids, f"{what} ids")
    order = np.argsort(int_ids, kind="stable")
    int_ids = int_ids[order]
    _check_unique(int_ids, f"{what} ids")
    vectors, updated = vectors[order], updated[order]
    tomb = np.unique(_int_ids_for(config, tombstones, f"{what} tombstones"))
    if tomb.size and np.isin(tomb, int_ids).any():
        raise DeltaCorrupt(f"{what}: an id is both written and deleted in one delta")
    return PreparedSlot(
        config=config,
        code=code,
        keys=encode_int_keys(code, int_ids) if for_lmdb else [],
        values=encode_values(vectors, updated, config.np_dtype) if for_lmdb else [],
        int_ids=int_ids,
        str_ids=None,
        vectors=vectors,
        updated_at_ms=updated,
        tombstone_keys=encode_int_keys(code, tomb) if for_lmdb else [],
        tombstone_int_ids=tomb,
        tombstone_str_ids=None,
    )


def _prepare_str_slot(
    config: SlotConfig, code: int, ids: Ids, tombstones: Ids, vectors: Array, updated: Array, what: str
) -> PreparedSlot:
    str_ids = _str_ids_for(config, ids, f"{what} ids")
    keys = [encode_str_key(code, s) for s in str_ids]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    keys = [keys[i] for i in order]
    if len(set(keys)) != len(keys):
        raise DeltaCorrupt(f"{what} ids: an id appears more than once")
    idx = np.asarray(order, dtype=np.int64)
    vectors, updated = vectors[idx], updated[idx]
    tomb_ids = tuple(sorted(set(_str_ids_for(config, tombstones, f"{what} tombstones"))))
    if set(tomb_ids) & set(str_ids):
        raise DeltaCorrupt(f"{what}: an id is both written and deleted in one delta")
    return PreparedSlot(
        config=config,
        code=code,
        keys=keys,
        values=encode_values(vectors, updated, config.np_dtype),
        int_ids=None,
        str_ids=tuple(str_ids[i] for i in order),
        vectors=vectors,
        updated_at_ms=updated,
        tombstone_keys=[encode_str_key(code, s) for s in tomb_ids],
        tombstone_int_ids=None,
        tombstone_str_ids=tomb_ids,
    )
