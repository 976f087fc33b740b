"""The online trainer: embedding tables plus a dense tower, trained one event batch at a time.

Each ``train_batch``: expire rows past their TTL (event time), count and admit the batch's ids, gather their rows
into leaf tensors, pool id lists, run the tower, take one BCE loss per head, backpropagate, then step Adagrad on
the touched rows and Adam on the dense weights. ``take_sparse_update`` hands the rows touched since the previous
call (absolute values) and the expired ids to the exporter, which turns them into a ``SparseDelta``.

Sparse gradients are scaled by the batch size, i.e. each event contributes its full per-example gradient to the
rows it touched. With a batch-mean loss a rare id would otherwise get a 1/B-sized step, which Adagrad's initial
accumulator would then shrink further: new items would learn far too slowly to matter, which is the point of
training online.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from liverank.store.manifest import Feature, Manifest
from liverank.trainer.events import EventBatch, F32Array, I64Array, U64Array
from liverank.trainer.features import IdColumn, batch_columns, single
from liverank.trainer.model import DEFAULT_HIDDEN, DenseTower
from liverank.trainer.tables import AdagradConfig, AdmissionPolicy, EmbeddingTable, TableUpdate

logger = logging.getLogger(__name__)

Rows = tuple[U64Array, F32Array, I64Array]
"""(ids, values [n, dim], updated_at_ms) of one slot: what ``liverank.exporter.deltas.DeltaBuilder.build`` takes."""

_EXPIRY_SWEEP_MS = 1000  # sweep TTLs at most once per second of event time: a sweep scans the whole table


@dataclass(frozen=True)
class TrainerConfig:
    """Hyper-parameters. ``admission`` and ``ttl_s`` are per slot name; a slot's ``ttl_s`` defaults to the
    manifest's (the TTL serving enforces), and ``admission`` to admitting every id at first sight."""

    seed: int = 0
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    dense_lr: float = 2e-3
    sparse: AdagradConfig = field(default_factory=AdagradConfig)
    admission: Mapping[str, AdmissionPolicy] = field(default_factory=dict)
    ttl_s: Mapping[str, float | None] = field(default_factory=dict)
    threads: int | None = 1  # torch intra-op threads (a process-wide setting); None leaves it alone


class OnlineTrainer:
    """Tables (one per slot), the tower and their optimisers. Thread-safe: one lock around each public call."""

    def __init__(
        self,
        manifest: Manifest,
        config: TrainerConfig | None = None,
        *,
        columns_of: Callable[[EventBatch], Mapping[str, IdColumn]] = batch_columns,
    ) -> None:
        self.config = config = config or TrainerConfig()
        unknown = (set(config.admission) | set(config.ttl_s)) - {s.name for s in manifest.slots}
        if unknown:
            raise ValueError(f"config names slots the manifest lacks: {sorted(unknown)}")
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self._manifest = manifest
        self._columns_of = columns_of
        self._lock = threading.Lock()
        self._tables = {
            slot.name: EmbeddingTable(
                slot.name,
                slot.dim,
                admission=config.admission.get(slot.name),
                ttl_s=config.ttl_s.get(slot.name, slot.ttl_s),
                optimizer=config.sparse,
                default=slot.default_vector().astype(np.float32),
                seed=config.seed * 1000 + i,
            )
            for i, slot in enumerate(manifest.slots)
        }
        # Seed the tower's initialisation without disturbing the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self._tower = DenseTower.from_manifest(manifest, hidden=config.hidden)
        self._dense_optimizer = torch.optim.Adam(self._tower.parameters(), lr=config.dense_lr)
        self._head_names = tuple(h.name for h in manifest.heads)
        self._now_ms: int | None = None
        self._last_sweep_ms: int | None = None
        self.events_trained = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def tower(self) -> DenseTower:
        """The live tower (for export between batches; ``snapshot_tower`` is safe while another thread trains)."""
        return self._tower

    @property
    def tables(self) -> Mapping[str, EmbeddingTable]:
        return self._tables

    @property
    def now_ms(self) -> int | None:
        """The latest event time trained on."""
        return self._now_ms

    def clone(self) -> OnlineTrainer:
        """An independent deep copy (tables, tower, optimiser state): e.g. a model to freeze for comparison."""
        with self._lock:
            return copy.deepcopy(self)

    def snapshot_tower(self) -> DenseTower:
        """A copy of the tower in eval mode, taken between batches."""
        with self._lock:
            return copy.deepcopy(self._tower).eval()

    # --- training ------------------------------------------------------------------------------------------

    def train_batch(self, batch: EventBatch) -> dict[str, float]:
        """One step on ``batch``; returns each head's mean BCE loss and their sum as ``loss``."""
        if not len(batch):
            raise ValueError("train_batch needs a non-empty batch")
        labels = {"click": batch.click, "finish": batch.finish}
        missing = [name for name in self._head_names if name not in labels]
        if missing:
            raise ValueError(f"event batches carry no labels for heads {missing}")
        with self._lock:
            self._sweep(int(batch.event_time_ms.min()))
            columns = self._columns_of(batch)
            lookups = {
                name: _SlotLookup(table, self._parts(name, columns), batch.event_time_ms)
                for name, table in self._tables.items()
            }
            user, candidates = self._inputs(lookups)
            logits = self._tower.logits(user, candidates)
            losses = [
                functional.binary_cross_entropy_with_logits(logits[:, h], torch.from_numpy(labels[name]))
                for h, name in enumerate(self._head_names)
            ]
            total = torch.stack(losses).sum()
            self._dense_optimizer.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]
            self._dense_optimizer.step()
            for name, lookup in lookups.items():
                lookup.apply(self._tables[name], scale=float(len(batch)))
            self._now_ms = max(self._now_ms or 0, int(batch.event_time_ms.max()))
            self.events_trained += len(batch)
            result = {name: float(loss.item()) for name, loss in zip(self._head_names, losses, strict=True)}
            result["loss"] = float(total.item())
            return result

    def _sweep(self, now_ms: int) -> None:
        if self._last_sweep_ms is not None and now_ms - self._last_sweep_ms < _EXPIRY_SWEEP_MS:
            return
        self._last_sweep_ms = now_ms
        for table in self._tables.values():
            expired = table.expire(now_ms)
            if expired:
                logger.debug("slot %s: %d rows expired", table.name, expired)

    def _parts(self, slot: str, columns: Mapping[str, IdColumn]) -> list[tuple[Feature, IdColumn]]:
        """The columns of the features that read ``slot``, truncated to their max_len."""
        return [(f, _column(columns, f)) for f in self._manifest.features if f.slot == slot]

    # --- reading -------------------------------------------------------------------------------------------

    def predict(self, columns: Mapping[str, IdColumn]) -> dict[str, F32Array]:
        """Each head's probabilities for the rows of ``columns`` (feature name -> ids); admits and trains nothing.

        User features may have one row (broadcast to every candidate) or one row per candidate.
        """
        with self._lock:
            lookups = {
                name: _SlotLookup(table, self._parts(name, columns), None) for name, table in self._tables.items()
            }
            with torch.no_grad():
                user, candidates = self._inputs(lookups)
                probabilities = self._tower(user, candidates)
            return {name: p.numpy().copy() for name, p in zip(self._head_names, probabilities, strict=True)}

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

    # --- syncing -------------------------------------------------------------------------------------------

    def take_sparse_update(self) -> tuple[dict[str, Rows], dict[str, U64Array]]:
        """Rows touched since the previous call (current values) and ids expired since, per slot; clears both.

        Slots with nothing to report are left out. Runs an expiry sweep first, at the latest event time trained.
        """
        with self._lock:
            if self._now_ms is not None:
                self._last_sweep_ms = None
                self._sweep(self._now_ms)
            updates = {name: table.take_touched() for name, table in self._tables.items()}
        rows = {name: _rows(u) for name, u in updates.items() if len(u)}
        tombstones = {name: u.tombstones for name, u in updates.items() if len(u.tombstones)}
        return rows, tombstones

    def all_rows(self) -> dict[str, Rows]:
        """Every live row of every slot (a full snapshot, e.g. to seed a fresh serving store)."""
        with self._lock:
            return {name: _rows(table.all_rows()) for name, table in self._tables.items()}

    # --- shared plumbing -----------------------------------------------------------------------------------

    def _inputs(self, lookups: Mapping[str, _SlotLookup]) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's two inputs, features concatenated in manifest order (the ONNX contract's layout)."""
        pooled: dict[str, list[torch.Tensor]] = {"user": [], "candidate": []}
        for feature in self._manifest.features:
            assert feature.slot is not None  # DenseTower.from_manifest refused numeric features
            pooled[feature.side].append(lookups[feature.slot].pool(feature))
        return torch.cat(pooled["user"], dim=1), torch.cat(pooled["candidate"], dim=1)


def _column(columns: Mapping[str, IdColumn], feature: Feature) -> IdColumn:
    try:
        column = columns[feature.name]
    except KeyError:
        raise ValueError(f"no column for feature {feature.name!r}") from None
    return column.truncated(feature.max_len or 1)


def _rows(update: TableUpdate) -> Rows:
    return update.ids, update.values, update.updated_at_ms


class _SlotLookup:
    """One slot's rows for one batch: the distinct admitted rows as a leaf tensor, and each feature's indices.

    The leaf has one extra last row, the slot's default, which unadmitted and unknown ids read and which is never
    trained.
    """

    def __init__(
        self, table: EmbeddingTable, parts: Sequence[tuple[Feature, IdColumn]], event_time_ms: I64Array | None
    ) -> None:
        masks = [np.arange(c.ids.shape[1])[None, :] < c.lengths[:, None] for _, c in parts]
        ids = _concat([c.ids[m] for (_, c), m in zip(parts, masks, strict=True)], np.uint64)
        if event_time_ms is None:
            rows = table.lookup(ids)
        else:
            # Every id of an event occurs at that event's time.
            times = _concat([np.broadcast_to(event_time_ms[:, None], m.shape)[m] for m in masks], np.int64)
            rows = table.admit(ids, times)
        admitted = rows >= 0
        self.rows, inverse = np.unique(rows[admitted], return_inverse=True)
        position = np.full(len(rows), len(self.rows), dtype=np.int64)
        position[admitted] = inverse
        if event_time_ms is not None:
            self.updated_at_ms = np.full(len(self.rows), np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(self.updated_at_ms, inverse, times[admitted])
        self.leaf = torch.from_numpy(np.concatenate([table.gather(self.rows), table.default[None, :]]))
        if event_time_ms is not None:
            self.leaf.requires_grad_(True)
        self.index: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        start = 0
        for (feature, column), mask in zip(parts, masks, strict=True):
            n = int(mask.sum())
            index = np.zeros(column.ids.shape, dtype=np.int64)
            index[mask] = position[start : start + n]
            start += n
            self.index[feature.name] = (torch.from_numpy(index), torch.from_numpy(mask))

    def pool(self, feature: Feature) -> torch.Tensor:
        """[B, dim]: the feature's rows, mean- or sum-pooled over each list (an empty list pools to zeros)."""
        index, mask = self.index[feature.name]
        rows = self.leaf[index] * mask.unsqueeze(-1)  # padding contributes nothing
        pooled = rows.sum(dim=1)
        if feature.pooling == "mean":
            pooled = pooled / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return pooled

    def apply(self, table: EmbeddingTable, *, scale: float) -> None:
        """One Adagrad step on the admitted rows (the default row, last, is never trained)."""
        grad = self.leaf.grad
        if grad is None or not len(self.rows):
            return
        table.apply_gradients(self.rows, grad[:-1].numpy() * np.float32(scale), self.updated_at_ms)


def _concat(chunks: list[np.ndarray[Any, Any]], dtype: type[np.generic]) -> np.ndarray[Any, Any]:
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)
