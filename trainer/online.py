"""The short-video online trainer: ``GenericTrainer`` fed ``EventBatch`` es (the demo's synthetic stream).

An adapter, not a second trainer: each event batch becomes a ``ColumnBatch`` (the id columns ``columns_of`` reads
from it, the ``click`` and ``finish`` labels, the event times) and ``GenericTrainer`` does every step (see
``liverank.trainer.generic`` for what a step does and why sparse gradients are scaled by the batch size).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np

from liverank.store.manifest import Manifest
from liverank.trainer.events import EventBatch, F32Array, I64Array, U64Array
from liverank.trainer.features import IdColumn, batch_columns, single
from liverank.trainer.generic import ColumnBatch, GenericTrainer, Rows, TrainerConfig
from liverank.trainer.model import DenseTower
from liverank.trainer.tables import EmbeddingTable

__all__ = ["OnlineTrainer", "Rows", "TrainerConfig"]


class OnlineTrainer:
    """Tables (one per slot), the tower and their optimisers for the short-video manifest. Thread-safe."""

    def __init__(
        self,
        manifest: Manifest,
        config: TrainerConfig | None = None,
        *,
        columns_of: Callable[[EventBatch], Mapping[str, IdColumn]] = batch_columns,
    ) -> None:
        if any(f.kind == "numeric" for f in manifest.features):
            raise ValueError("event batches carry no numeric features; train such a manifest with GenericTrainer")
        self._trainer = GenericTrainer(manifest, config)
        self._columns_of = columns_of

    @property
    def config(self) -> TrainerConfig:
        return self._trainer.config

    @property
    def manifest(self) -> Manifest:
        return self._trainer.manifest

    @property
    def tower(self) -> DenseTower:
        """The live tower (for export between batches; ``snapshot_tower`` is safe while another thread trains)."""
        tower = self._trainer.tower
        assert isinstance(tower, DenseTower)  # no numeric features (refused above): build_tower made a DenseTower
        return tower

    @property
    def tables(self) -> Mapping[str, EmbeddingTable]:
        return self._trainer.tables

    @property
    def now_ms(self) -> int | None:
        """The latest event time trained on."""
        return self._trainer.now_ms

    @property
    def events_trained(self) -> int:
        return self._trainer.events_trained

    def clone(self) -> OnlineTrainer:
        """An independent deep copy (tables, tower, optimiser state): e.g. a model to freeze for comparison."""
        twin = copy.copy(self)
        twin._trainer = self._trainer.clone()
        return twin

    def snapshot_tower(self) -> DenseTower:
        """A copy of the tower in eval mode, taken between batches."""
        tower = self._trainer.snapshot_tower()
        assert isinstance(tower, DenseTower)
        return tower

    def columns(self, batch: EventBatch) -> ColumnBatch:
        """``batch`` as the columns ``GenericTrainer`` trains: id columns, the two labels, event times."""
        return ColumnBatch(
            ids=self._columns_of(batch),
            numbers={},
            labels={"click": batch.click, "finish": batch.finish},
            event_time_ms=batch.event_time_ms,
        )

    def train_batch(self, batch: EventBatch) -> dict[str, float]:
        """One step on ``batch``; returns each head's mean BCE loss and their sum as ``loss``."""
        if not len(batch):
            raise ValueError("train_batch needs a non-empty batch")
        return self._trainer.train_batch(self.columns(batch))

    def predict(self, columns: Mapping[str, IdColumn]) -> dict[str, F32Array]:
        """Each head's probabilities for the rows of ``columns`` (feature name -> ids); admits and trains nothing.

        User features may have one row (broadcast to every candidate) or one row per candidate.
        """
        return self._trainer.predict(columns)

    def score(
        self,
        user_ids: U64Array,
        hist_item_ids: U64Array,
        hist_lengths: I64Array,
        item_ids: U64Array,
        author_ids: U64Array,
        tag_ids: U64Array,
        tag_lengths: I64Array,
    ) -> F32Array:
        """Click probabilities of short-video candidates; one user (one history row) broadcasts to all."""
        columns = {
            "user_id": single(user_ids),
            "hist_item_ids": IdColumn(np.atleast_2d(hist_item_ids), np.atleast_1d(hist_lengths)),
            "item_id": single(item_ids),
            "author_id": single(author_ids),
            "tags": IdColumn(tag_ids, tag_lengths),
        }
        return self.predict(columns)["click"]

    def score_batch(self, batch: EventBatch) -> dict[str, F32Array]:
        """Each head's probabilities for the events of ``batch`` (for offline evaluation); trains nothing."""
        return self.predict(self._columns_of(batch))

    def take_sparse_update(self) -> tuple[dict[str, Rows], dict[str, U64Array]]:
        """Rows touched since the previous call (current values) and ids expired since, per slot; clears both.

        Slots with nothing to report are left out. Runs an expiry sweep first, at the latest event time trained.
        """
        return self._trainer.take_sparse_update()

    def all_rows(self) -> dict[str, Rows]:
        """Every live row of every slot (a full snapshot, e.g. to seed a fresh serving store)."""
        return self._trainer.all_rows()
