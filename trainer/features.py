"""The short-video model's manifest (features, slots, heads) and how an ``EventBatch`` fills its features.

User side: ``user_id`` (id) and ``hist_item_ids`` (the last clicked items, mean-pooled, in the ``item_id``
slot). Candidate side: ``item_id``, ``author_id`` and ``tags`` (mean-pooled). Every slot holds integer ids
with one shared dim, which the DeepFM tower's second-order term needs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from liverank.store.manifest import Feature, Head, Manifest, build_manifest
from liverank.store.slots import SlotConfig
from liverank.trainer.events import EventBatch, I64Array, U64Array

MODEL_NAME = "short-video"
DEFAULT_DIM = 16
HIST_MAX_LEN = 20
TAGS_MAX_LEN = 5
SLOT_NAMES: tuple[str, ...] = ("user_id", "item_id", "author_id", "tags")
HEADS: tuple[tuple[str, float], ...] = (("click", 0.7), ("finish", 0.3))

FEATURES: tuple[Feature, ...] = (
    Feature("user_id", "user", "id", "user_id"),
    Feature("hist_item_ids", "user", "id_list", "item_id", "mean", HIST_MAX_LEN),
    Feature("item_id", "candidate", "id", "item_id"),
    Feature("author_id", "candidate", "id", "author_id"),
    Feature("tags", "candidate", "id_list", "tags", "mean", TAGS_MAX_LEN),
)


def short_video_manifest(
    dim: int = DEFAULT_DIM,
    version: str = "1",
    *,
    ttl_s: Mapping[str, float] | None = None,
    created_at_ms: int | None = None,
) -> Manifest:
    """The manifest of the short-video model: four int-id float32 slots of ``dim``, heads click 0.7 / finish 0.3.

    ``ttl_s`` sets a time-to-live (event time) per slot name; slots not named never expire.
    """
    ttl = dict(ttl_s or {})
    unknown = set(ttl) - set(SLOT_NAMES)
    if unknown:
        raise ValueError(f"ttl_s names unknown slots {sorted(unknown)}; the slots are {SLOT_NAMES}")
    return build_manifest(
        model=MODEL_NAME,
        version=version,
        slots=[SlotConfig(name=name, dim=dim, ttl_s=ttl.get(name)) for name in SLOT_NAMES],
        features=FEATURES,
        heads=[Head(name, f"p_{name}", weight) for name, weight in HEADS],
        user_input="user",
        candidate_input="candidates",
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
    )


@dataclass(frozen=True)
class IdColumn:
    """One feature's ids for B rows: ``ids`` [B, L] padded, ``lengths`` [B]; an ``id`` feature has L = 1."""

    ids: U64Array
    lengths: I64Array

    def truncated(self, max_len: int) -> IdColumn:
        """The first ``max_len`` ids of each row (lists are most-recent or most-relevant first)."""
        if self.ids.shape[1] <= max_len:
            return self
        return IdColumn(self.ids[:, :max_len], np.minimum(self.lengths, max_len))


def single(ids: U64Array) -> IdColumn:
    """An ``id`` feature's column: one id per row."""
    ids = np.asarray(ids, dtype=np.uint64)
    return IdColumn(ids.reshape(-1, 1), np.ones(len(ids), dtype=np.int64))


def batch_columns(batch: EventBatch) -> dict[str, IdColumn]:
    """Each short-video feature's column, filled from an event batch (one user per row)."""
    return {
        "user_id": single(batch.user_ids),
        "hist_item_ids": IdColumn(batch.hist_item_ids, batch.hist_lengths),
        "item_id": single(batch.item_ids),
        "author_id": single(batch.author_ids),
        "tags": IdColumn(batch.tag_ids, batch.tag_lengths),
    }
