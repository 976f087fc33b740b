"""The online trainer over any manifest: columnar batches of named id, id-list and numeric columns, one label per
head.

``ColumnBatch`` carries any feature set, keyed by feature name, and ``GenericTrainer`` trains it with collisionless
``liverank.trainer.tables`` (admission, expiry, Adagrad, touched set) and the DeepFM ``DenseTower``. The replay
experiments (``liverank.trainer.replay``) train MovieLens and Criteo models with it; ``OnlineTrainer``
(``liverank.trainer.online``) is the short-video adapter over it, for the demo. Features may be numeric (the Criteo
counts): then ``FieldTower`` puts DeepFM's treatment of continuous fields in front of the tower, each value ``x_f``
becoming the field ``x_f * v_f`` with a learned vector ``v_f``, so the second-order term sees numeric fields too.
Either side may have no features at all (a [B, 0] user input, which the ONNX contract and serving accept).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from liverank.store.manifest import Feature, Manifest
from liverank.trainer.events import F32Array, I64Array, U64Array
from liverank.trainer.features import IdColumn
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


@dataclass(frozen=True)
class ColumnBatch:
    """B events as columns: ``ids`` per id / id-list feature name (``IdColumn``: [B, L] padded, lengths [B]),
    ``numbers`` per numeric feature name ([B] float32), ``labels`` per head name ([B] 0.0 / 1.0), event times."""

    ids: Mapping[str, IdColumn]
    numbers: Mapping[str, F32Array]
    labels: Mapping[str, F32Array]
    event_time_ms: I64Array

    def __post_init__(self) -> None:
        n = len(self.event_time_ms)
        for kind, columns in (("ids", self.ids), ("numbers", self.numbers), ("labels", self.labels)):
            for name, column in columns.items():
                rows = column.ids.shape[0] if isinstance(column, IdColumn) else len(column)
                if rows != n:
                    raise ValueError(f"ColumnBatch.{kind}[{name!r}] has {rows} rows, event_time_ms has {n}")
        for name, column in self.ids.items():
            if column.ids.ndim != 2 or column.lengths.shape != (n,):
                raise ValueError(f"ColumnBatch.ids[{name!r}] must be [B, L] ids with [B] lengths")

    def __len__(self) -> int:
        return len(self.event_time_ms)

    def take(self, index: slice | np.ndarray[Any, Any]) -> ColumnBatch:
        """The rows selected by ``index`` (a slice, an integer array or a boolean mask), as a new batch."""
        return ColumnBatch(
            ids={name: IdColumn(c.ids[index], c.lengths[index]) for name, c in self.ids.items()},
            numbers={name: v[index] for name, v in self.numbers.items()},
            labels={name: v[index] for name, v in self.labels.items()},
            event_time_ms=self.event_time_ms[index],
        )

    def hashed(self, buckets: int) -> ColumnBatch:
        """The hashing trick: every id replaced by ``hash(id) % buckets`` (a fixed 64-bit mix), so colliding ids
        share one row of their slot. What collisionless tables avoid; kept to measure what it costs."""
        if buckets < 1:
            raise ValueError(f"buckets must be positive, got {buckets}")
        return ColumnBatch(
            ids={name: IdColumn(bucket_ids(c.ids, buckets), c.lengths) for name, c in self.ids.items()},
            numbers=self.numbers,
            labels=self.labels,
            event_time_ms=self.event_time_ms,
        )


def bucket_ids(ids: U64Array, buckets: int) -> U64Array:
    """``splitmix64(id) % buckets`` per id: a well-mixed hash (a plain modulo would collide in patterns)."""
    z = np.asarray(ids, dtype=np.uint64).reshape(-1) + np.uint64(0x9E3779B97F4A7C15)  # arrays wrap silently
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    out: U64Array = (z % np.uint64(buckets)).reshape(np.shape(ids))
    return out


def concat_batches(batches: Sequence[ColumnBatch]) -> ColumnBatch:
    """One batch holding ``batches`` in order (same columns); id lists are padded to the widest."""
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    first = batches[0]
    ids = {}
    for name in first.ids:
        width = max(b.ids[name].ids.shape[1] for b in batches)
        padded = []
        for b in batches:
            column = b.ids[name].ids
            out = np.zeros((column.shape[0], width), dtype=np.uint64)
            out[:, : column.shape[1]] = column
            padded.append(out)
        ids[name] = IdColumn(np.concatenate(padded), np.concatenate([b.ids[name].lengths for b in batches]))
    return ColumnBatch(
        ids=ids,
        numbers={name: np.concatenate([b.numbers[name] for b in batches]) for name in first.numbers},
        labels={name: np.concatenate([b.labels[name] for b in batches]) for name in first.labels},
        event_time_ms=np.concatenate([b.event_time_ms for b in batches]),
    )


class FieldTower(nn.Module):
    """``DenseTower`` over embedding and numeric features: each numeric input ``x_f`` becomes the field
    ``x_f * v_f`` (``v_f`` learned, one embedding dim wide), as DeepFM treats continuous fields. Takes the bundle's
    ONNX inputs (numeric columns where the manifest puts them) and exports as one graph."""

    def __init__(self, manifest: Manifest, *, hidden: Sequence[int] = DEFAULT_HIDDEN, init_std: float = 0.01) -> None:
        super().__init__()
        dims = {manifest.feature_width(f) for f in manifest.features if f.kind != "numeric"}
        if len(dims) != 1:
            raise ValueError(f"every embedding feature must share one dim, got {sorted(dims)}")
        self.dim = dim = dims.pop()
        self.user_width = manifest.user_width
        self.candidate_width = manifest.candidate_width
        n_numeric = sum(f.kind == "numeric" for f in manifest.features)
        self.numeric = nn.Parameter(init_std * torch.randn(max(n_numeric, 1), dim))
        # Per side: runs of consecutive embedding columns (start, stop, -1) and numeric columns (col, col + 1, k).
        self._plan: dict[str, list[tuple[int, int, int]]] = {}
        k = 0
        for side in ("user", "candidate"):
            plan: list[tuple[int, int, int]] = []
            for feature, start, stop in manifest.feature_offsets(side):
                if feature.kind == "numeric":
                    plan.append((start, stop, k))
                    k += 1
                elif plan and plan[-1][2] < 0 and plan[-1][1] == start:
                    plan[-1] = (plan[-1][0], stop, -1)
                else:
                    plan.append((start, stop, -1))
            self._plan[side] = plan
        self.inner = DenseTower(
            len(manifest.user_features),
            len(manifest.candidate_features),
            dim,
            n_heads=len(manifest.heads),
            hidden=hidden,
        )
        self.n_heads = self.inner.n_heads

    def _fields(self, x: torch.Tensor, side: str) -> torch.Tensor:
        plan = self._plan[side]
        if not plan:
            return x
        parts = [x[:, a:b] if k < 0 else x[:, a:b] * self.numeric[k] for a, b, k in plan]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def logits(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.inner.logits(self._fields(user, "user"), self._fields(candidates, "candidate"))

    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        probabilities = torch.sigmoid(self.logits(user, candidates))
        return tuple(probabilities[:, h] for h in range(self.n_heads))


Tower = DenseTower | FieldTower


def build_tower(manifest: Manifest, *, hidden: Sequence[int] = DEFAULT_HIDDEN) -> Tower:
    """``DenseTower`` when every feature is an embedding, ``FieldTower`` when some are numeric."""
    if any(f.kind == "numeric" for f in manifest.features):
        return FieldTower(manifest, hidden=hidden)
    return DenseTower.from_manifest(manifest, hidden=hidden)


class GenericTrainer:
    """Tables (one per slot), a tower and their optimisers for any manifest; trains ``ColumnBatch`` es.

    Expire (event time), admit, gather, pool, one BCE loss per head, Adagrad on the touched rows (per-example
    gradients, see the module's notes), Adam on the dense weights. Thread-safe: one lock around each public call.
    """

    def __init__(self, manifest: Manifest, config: TrainerConfig | None = None) -> None:
        self.config = config = config or TrainerConfig()
        unknown = (set(config.admission) | set(config.ttl_s)) - {s.name for s in manifest.slots}
        if unknown:
            raise ValueError(f"config names slots the manifest lacks: {sorted(unknown)}")
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self._manifest = manifest
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
            self._tower = build_tower(manifest, hidden=config.hidden)
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
    def tower(self) -> Tower:
        """The live tower (for export between batches; ``snapshot_tower`` is safe while another thread trains)."""
        return self._tower

    @property
    def tables(self) -> Mapping[str, EmbeddingTable]:
        return self._tables

    @property
    def now_ms(self) -> int | None:
        return self._now_ms

    def clone(self) -> GenericTrainer:
        """An independent deep copy (tables, tower, optimiser state)."""
        with self._lock:
            return copy.deepcopy(self)

    def snapshot_tower(self) -> Tower:
        """A copy of the tower in eval mode, for export."""
        with self._lock:
            return copy.deepcopy(self._tower).eval()

    # --- training ------------------------------------------------------------------------------------------

    def train_batch(self, batch: ColumnBatch) -> dict[str, float]:
        """One step on ``batch``; returns each head's mean BCE loss and their sum as ``loss``."""
        if not len(batch):
            raise ValueError("train_batch needs a non-empty batch")
        missing = [name for name in self._head_names if name not in batch.labels]
        if missing:
            raise ValueError(f"the batch carries no labels for heads {missing}")
        with self._lock:
            self._sweep(int(batch.event_time_ms.min()))
            lookups = {
                name: _SlotLookup(table, self._parts(name, batch.ids), batch.event_time_ms)
                for name, table in self._tables.items()
            }
            user, candidates = self._inputs(lookups, batch.numbers, len(batch))
            logits = self._tower.logits(user, candidates)
            losses = [
                functional.binary_cross_entropy_with_logits(
                    logits[:, h], torch.from_numpy(np.asarray(batch.labels[name], dtype=np.float32))
                )
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

    def _parts(self, slot: str, ids: Mapping[str, IdColumn]) -> list[tuple[Feature, IdColumn]]:
        return [(f, _column(ids, f)) for f in self._manifest.features if f.slot == slot]

    # --- reading -------------------------------------------------------------------------------------------

    def predict(
        self, ids: Mapping[str, IdColumn], numbers: Mapping[str, F32Array] | None = None
    ) -> dict[str, F32Array]:
        """Each head's probabilities for the candidate rows; admits and trains nothing.

        User features may have one row (broadcast to every candidate) or one row per candidate.
        """
        numbers = numbers or {}
        first = self._manifest.candidate_features[0]
        n_rows = len(numbers.get(first.name, ())) if first.kind == "numeric" else _column(ids, first).ids.shape[0]
        with self._lock:
            lookups = {name: _SlotLookup(table, self._parts(name, ids), None) for name, table in self._tables.items()}
            with torch.no_grad():
                user, candidates = self._inputs(lookups, numbers, n_rows)
                probabilities = self._tower(user, candidates)
            return {name: p.numpy().copy() for name, p in zip(self._head_names, probabilities, strict=True)}

    def score_batch(self, batch: ColumnBatch) -> dict[str, F32Array]:
        """Each head's probabilities for the events of ``batch`` (one user row per event); trains nothing."""
        return self.predict(batch.ids, batch.numbers)

    # --- syncing -------------------------------------------------------------------------------------------

    def take_sparse_update(self) -> tuple[dict[str, Rows], dict[str, U64Array]]:
        """Rows touched since the previous call (current values) and ids expired since, per slot; clears both."""
        with self._lock:
            if self._now_ms is not None:
                self._last_sweep_ms = None
                self._sweep(self._now_ms)
            updates = {name: table.take_touched() for name, table in self._tables.items()}
        rows = {name: _rows(u) for name, u in updates.items() if len(u)}
        tombstones = {name: u.tombstones for name, u in updates.items() if len(u.tombstones)}
        return rows, tombstones

    def all_rows(self) -> dict[str, Rows]:
        """Every live row of every slot (a full snapshot for a fresh server)."""
        with self._lock:
            return {name: _rows(table.all_rows()) for name, table in self._tables.items()}

    # --- shared plumbing -----------------------------------------------------------------------------------

    def _inputs(
        self, lookups: Mapping[str, _SlotLookup], numbers: Mapping[str, F32Array], n_rows: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's two inputs, features concatenated in manifest order (the ONNX contract's layout)."""
        parts: dict[str, list[torch.Tensor]] = {"user": [], "candidate": []}
        for feature in self._manifest.features:
            if feature.kind == "numeric":
                try:
                    values = numbers[feature.name]
                except KeyError:
                    raise ValueError(f"no column for numeric feature {feature.name!r}") from None
                parts[feature.side].append(torch.from_numpy(np.asarray(values, dtype=np.float32)).reshape(-1, 1))
            else:
                assert feature.slot is not None
                parts[feature.side].append(lookups[feature.slot].pool(feature))
        user_rows = max((p.shape[0] for p in parts["user"]), default=n_rows)
        sides = [
            torch.cat(parts[side], dim=1) if parts[side] else torch.zeros(rows, 0)
            for side, rows in (("user", user_rows), ("candidate", n_rows))
        ]
        return sides[0], sides[1]


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
