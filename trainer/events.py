"""The event-source interface: columnar batches of impressions with their labels, and the protocol that yields them.

One row of an ``EventBatch`` is one impression: a user was shown an item at ``event_time_ms`` (event time, the
source's clock, never the wall clock) and clicked it or not, and finished it or not. Id-list columns are padded
2-D arrays with a lengths column: entries past a row's length are padding and mean nothing (their value is
unspecified, usually 0), so a valid id may be 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

U64Array = np.ndarray[Any, np.dtype[np.uint64]]
I64Array = np.ndarray[Any, np.dtype[np.int64]]
F32Array = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class EventBatch:
    """B impressions, column by column.

    ``hist_item_ids`` [B, H] holds each user's most recently clicked items, most recent first, ``hist_lengths``
    [B] how many of them are real; ``tag_ids`` [B, T] and ``tag_lengths`` [B] likewise hold the item's tags.
    ``click`` and ``finish`` are 0.0 / 1.0 labels.
    """

    user_ids: U64Array
    hist_item_ids: U64Array
    hist_lengths: I64Array
    item_ids: U64Array
    author_ids: U64Array
    tag_ids: U64Array
    tag_lengths: I64Array
    click: F32Array
    finish: F32Array
    event_time_ms: I64Array

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        for name in ("hist_lengths", "item_ids", "author_ids", "tag_lengths", "click", "finish", "event_time_ms"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"EventBatch.{name} has {len(getattr(self, name))} rows, user_ids has {n}")
        for ids, lengths, name in (
            (self.hist_item_ids, self.hist_lengths, "hist_item_ids"),
            (self.tag_ids, self.tag_lengths, "tag_ids"),
        ):
            if ids.ndim != 2 or ids.shape[0] != n:
                raise ValueError(f"EventBatch.{name} must be a [{n}, max_len] array, got shape {ids.shape}")
            if n and (lengths.min() < 0 or lengths.max() > ids.shape[1]):
                raise ValueError(f"EventBatch.{name}: lengths must lie in 0..{ids.shape[1]}")

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, index: slice | np.ndarray[Any, Any]) -> EventBatch:
        """The rows selected by ``index`` (a slice, an integer array or a boolean mask), as a new batch."""
        return EventBatch(
            user_ids=self.user_ids[index],
            hist_item_ids=self.hist_item_ids[index],
            hist_lengths=self.hist_lengths[index],
            item_ids=self.item_ids[index],
            author_ids=self.author_ids[index],
            tag_ids=self.tag_ids[index],
            tag_lengths=self.tag_lengths[index],
            click=self.click[index],
            finish=self.finish[index],
            event_time_ms=self.event_time_ms[index],
        )

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        """One batch holding ``batches`` in order; list columns are padded to the widest of them."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        hist_width = max(b.hist_item_ids.shape[1] for b in batches)
        tag_width = max(b.tag_ids.shape[1] for b in batches)
        return EventBatch(
            user_ids=np.concatenate([b.user_ids for b in batches]),
            hist_item_ids=np.concatenate([_pad(b.hist_item_ids, hist_width) for b in batches]),
            hist_lengths=np.concatenate([b.hist_lengths for b in batches]),
            item_ids=np.concatenate([b.item_ids for b in batches]),
            author_ids=np.concatenate([b.author_ids for b in batches]),
            tag_ids=np.concatenate([_pad(b.tag_ids, tag_width) for b in batches]),
            tag_lengths=np.concatenate([b.tag_lengths for b in batches]),
            click=np.concatenate([b.click for b in batches]),
            finish=np.concatenate([b.finish for b in batches]),
            event_time_ms=np.concatenate([b.event_time_ms for b in batches]),
        )


def _pad(ids: U64Array, width: int) -> U64Array:
    if ids.shape[1] == width:
        return ids
    out = np.zeros((ids.shape[0], width), dtype=np.uint64)
    out[:, : ids.shape[1]] = ids
    return out


@runtime_checkable
class EventSource(Protocol):
    """Anything that yields impressions in event-time order: a synthetic stream, a replayed log, a data set."""

    def batches(self, batch_size: int) -> Iterator[EventBatch]:
        """Batches of ``batch_size`` events (the last one of a finite source may be shorter)."""
        ...
