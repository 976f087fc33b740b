"""One request's features read from the shared tier straight into the dense network's input, in one compiled pass.

The serving path's common case (issue 11): every slot a request names holds integer ids and is complete in the
shared tier. Then per feature one kernel call (``_kernel.gather_into``) probes the slot's index copy and writes the
rows, or the pooled rows of each list, into the feature's columns of the caller's input buffer, counts unseen ids
and appends the event times of seen rows to one buffer: no per-slot vectors/times/rows arrays, no default filling,
no masking or concatenation for the answer's ages. All features run inside one seqlock section of the tier
(``SharedTierReader.read_section``); a section that overlapped a publish is redone into the same buffers.

The semantics are those of ``EmbeddingStore.lookup_many`` followed by the ranker's assembly (the tests compare the
two bit for bit): a missing, deleted or expired (TTL) id reads as the slot's default and counts as unseen; float16
rows widen exactly; lists pool as ``columns.pool_into`` (numpy's pairwise sums; an empty list gives zeros).
Whenever that path would do anything else (a string-id slot, a slot the tier lacks or holds with another layout,
rows of an incomplete slot missing from the tier, no kernel) ``read_into`` declines (None) and the caller takes the
general path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from liverank.store.format import Array, IntIds
from liverank.store.hash_index import _kernel as kernel
from liverank.store.shared_tier import SharedTierReader, _SlotArrays
from liverank.store.slots import SlotConfig

Lengths = np.ndarray[Any, np.dtype[np.int64]]
NO_CUTOFF_MS = int(np.iinfo(np.int64).min)  # no TTL: no event time is older than this


class FeatureRead(NamedTuple):
    """One feature of a request: its ``slot``, its ``ids`` (uint64; id lists flattened) and where the rows go:
    columns ``[col, col + dim)`` of ``out`` (float32, C-contiguous, one row per output row), one id per row
    (``lengths`` None) or pooled over ``lengths[i]`` ids for row ``i`` (the mean if ``mean``, else the sum).
    A named tuple: a request builds about 25 of them."""

    slot: str
    ids: IntIds
    out: Array
    col: int
    lengths: Lengths | None
    mean: bool


@dataclass(frozen=True)
class IntoLookup:
    """What ``read_into`` read: the state (as in ``Lookup``), and per slot, in the order the features first name
    them, the ids asked, the unseen ids, and (slots with a seen row only) the oldest seen row's event time;
    ``seen_ms``: the event time of every seen row, of every slot (a scratch array of this read: the caller may
    reorder it, e.g. partition it for the median)."""

    generation: int
    applied_seq: dict[str, int]
    ids_by_slot: dict[str, int]
    unseen_by_slot: dict[str, int]
    oldest_ms_by_slot: dict[str, int]
    seen_ms: Array
    source: str = "ram"


_defaults: dict[int, tuple[SlotConfig, Array]] = {}


def _default32(config: SlotConfig) -> Array:
    """The slot's default row as the path it replaces writes it: in the storage dtype, then widened. Cached by the
    config object itself: configs compare equal whatever the sign of a zero in their defaults."""
    cached = _defaults.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    default = config.default_vector().astype(np.float32)
    default.flags.writeable = False
    if len(_defaults) > 1024:
        _defaults.clear()
    _defaults[id(config)] = (config, default)
    return default


def read_into(
    reader: SharedTierReader,
    slots: Mapping[str, tuple[SlotConfig, int]],
    features: Sequence[FeatureRead],
    now_ms: int,
) -> IntoLookup | None:
    """Every feature's rows from one published state into its buffer; None when the general path must answer
    (see the module docstring; ``slots``: the store's slot table, name -> (config, key code))."""
    if kernel is None:  # pragma: no cover - every install builds the kernel
        return None
    prepared = []
    n_ids = 0
    for feature in features:
        entry = slots.get(feature.slot)
        if entry is None or entry[0].id_kind == "str" or feature.ids.dtype != np.uint64:
            return None
        config = entry[0]
        ttl_ms = config.ttl_ms
        cutoff = NO_CUTOFF_MS if ttl_ms is None else now_ms - ttl_ms
        prepared.append((feature, config, _default32(config), cutoff))
        n_ids += len(feature.ids)
    seen = np.empty(n_ids, dtype=np.int64)

    def section(slots: Mapping[str, _SlotArrays], copy: int) -> list[tuple[int, int, int, int]] | None:
        counts = []
        at = 0
        for feature, config, default, cutoff in prepared:
            arrays = slots.get(feature.slot)
            if arrays is None or arrays.config.dim != config.dim or arrays.config.dtype != config.dtype:
                return None
            got = kernel.gather_into(
                arrays.keys[copy],
                arrays.rows[copy],
                feature.ids,
                arrays.vectors,
                arrays.updated,
                default,
                cutoff,
                feature.out,
                feature.col,
                feature.lengths,
                feature.mean,
                seen,
                at,
            )
            at += got[0]
            counts.append(got)
        return counts

    got = reader.read_section(section)
    if got is None:
        return None
    epoch, counts = got
    ids_by_slot: dict[str, int] = {}
    unseen_by_slot: dict[str, int] = {}
    oldest: dict[str, int] = {}
    missing: dict[str, int] = {}
    n_seen = 0
    for feature, (seen_here, oldest_here, unseen_here, missing_here) in zip(features, counts, strict=True):
        slot = feature.slot
        ids_by_slot[slot] = ids_by_slot.get(slot, 0) + len(feature.ids)
        unseen_by_slot[slot] = unseen_by_slot.get(slot, 0) + unseen_here
        missing[slot] = missing.get(slot, 0) + missing_here
        if seen_here:
            oldest[slot] = min(oldest.get(slot, oldest_here), oldest_here)
        n_seen += seen_here
    if any(n and not epoch.complete.get(slot, False) for slot, n in missing.items()):
        return None  # rows past the tier's budget: they come from LMDB (the general path)
    # Slots in first-use order, as the general path's per-slot answers are.
    oldest_ms_by_slot = {slot: oldest[slot] for slot in ids_by_slot if slot in oldest}
    return IntoLookup(
        epoch.generation, epoch.applied_seq, ids_by_slot, unseen_by_slot, oldest_ms_by_slot, seen[:n_seen]
    )
