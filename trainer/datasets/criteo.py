"""The Criteo display-advertising log (the Kaggle ``train.txt`` form) as an event log, and the Criteo model.

A line: the label (0 or 1), 13 integer features, 26 categorical features as 32-bit hashes in hex (``68fd1e64``),
tab separated; any feature may be empty. There are no timestamps: the file is in time order (Criteo's seven days
one after the other), so event ``i`` happens at "time" ``i`` ms. A replay's clock is the event's position.

The model: 26 candidate ``id`` features ``C1``..``C26``, one slot each, ids ``int(hex, 16)``, an empty field the id
``MISSING_ID`` (above every 32-bit hash, so it never collides with one); 13 candidate ``numeric`` features
``I1``..``I13``, ``log1p`` of the value clipped at 0 (a few are negative), 0 when empty. No user features: the ONNX
user input is [1, 0] and ranking requests send ``"user": {}``. One head, ``click``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverank.store.manifest import Feature, Head, Manifest, build_manifest
from liverank.store.slots import SlotConfig
from liverank.trainer.datasets.cache import DatasetFormatInvalid
from liverank.trainer.events import F32Array, U64Array
from liverank.trainer.features import single
from liverank.trainer.generic import ColumnBatch

MODEL_NAME = "criteo"
N_NUMERIC = 13
N_CATEGORICAL = 26
N_FIELDS = 1 + N_NUMERIC + N_CATEGORICAL
MISSING_ID = 1 << 32
NUMERIC_NAMES: tuple[str, ...] = tuple(f"I{i}" for i in range(1, N_NUMERIC + 1))
CATEGORICAL_NAMES: tuple[str, ...] = tuple(f"C{i}" for i in range(1, N_CATEGORICAL + 1))


@dataclass(frozen=True)
class CriteoLog:
    """``labels`` [n] 0/1, ``numbers`` [n, 13] already ``log1p``-transformed, ``categories`` [n, 26] ids."""

    labels: F32Array
    numbers: F32Array
    categories: U64Array

    def __len__(self) -> int:
        return len(self.labels)


def read_criteo(path: str | Path, *, max_events: int | None = None) -> CriteoLog:
    """Read the first ``max_events`` lines (all by default) of a Criteo ``train.txt``-form file, in file order."""
    path = Path(path)
    labels: list[float] = []
    numbers: list[list[float]] = []
    categories: list[list[int]] = []
    with open(path, encoding="ascii") as f:
        for number, line in enumerate(f, start=1):
            if max_events is not None and len(labels) >= max_events:
                break
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != N_FIELDS:
                raise DatasetFormatInvalid(
                    f"{path}:{number}: expected {N_FIELDS} tab-separated fields, got {len(fields)}"
                )
            try:
                label = int(fields[0])
                ints = [0.0 if not x else math.log1p(max(int(x), 0)) for x in fields[1 : 1 + N_NUMERIC]]
                cats = [MISSING_ID if not x else int(x, 16) for x in fields[1 + N_NUMERIC :]]
            except ValueError as exc:
                raise DatasetFormatInvalid(f"{path}:{number}: {exc}") from exc
            if label not in (0, 1):
                raise DatasetFormatInvalid(f"{path}:{number}: the label must be 0 or 1, got {label}")
            labels.append(float(label))
            numbers.append(ints)
            categories.append(cats)
    if not labels:
        raise DatasetFormatInvalid(f"{path}: no events")
    return CriteoLog(
        labels=np.asarray(labels, dtype=np.float32),
        numbers=np.asarray(numbers, dtype=np.float32).reshape(-1, N_NUMERIC),
        categories=np.asarray(categories, dtype=np.uint64).reshape(-1, N_CATEGORICAL),
    )


def criteo_manifest(dim: int = 16, version: str = "1", *, created_at_ms: int | None = None) -> Manifest:
    """26 slots of ``dim`` (one per categorical feature), the features above, head click."""
    features = [Feature(name, "candidate", "id", name) for name in CATEGORICAL_NAMES]
    features += [Feature(name, "candidate", "numeric") for name in NUMERIC_NAMES]
    return build_manifest(
        model=MODEL_NAME,
        version=version,
        slots=[SlotConfig(name=name, dim=dim) for name in CATEGORICAL_NAMES],
        features=features,
        heads=[Head("click", "p_click", 1.0)],
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
    )


def criteo_events(log: CriteoLog) -> ColumnBatch:
    """The model's columns for every event; event time = position in the file (ms)."""
    return ColumnBatch(
        ids={name: single(log.categories[:, j]) for j, name in enumerate(CATEGORICAL_NAMES)},
        numbers={name: np.ascontiguousarray(log.numbers[:, j]) for j, name in enumerate(NUMERIC_NAMES)},
        labels={"click": log.labels},
        event_time_ms=np.arange(len(log), dtype=np.int64),
    )


def write_synthetic_criteo(path: str | Path, *, n_events: int = 20_000, seed: int = 0) -> Path:
    """A Criteo-format file with a learnable pattern and drift, for tests and smoke runs (not Criteo data).

    ``C1`` has 50 values with fixed effects; ``C2`` values arrive over time (a new ad every ~40 events, each with
    its own effect, live for a while): a model frozen early does not know the later ones; ``C3``'s effects flip
    sign halfway; ``I1`` adds ``0.4 * log1p(I1)``. The other fields are noise, and about 10% of fields are empty.
    """
    rng = np.random.default_rng(seed)
    c1_effect = rng.normal(0.0, 1.0, 50)
    n_ads = n_events // 40 + 50
    ad_effect = rng.normal(0.0, 1.5, n_ads)
    c3_effect = rng.normal(0.0, 1.0, 20)
    lines = []
    for i in range(n_events):
        c1 = int(rng.integers(0, 50))
        newest = 50 + i // 40
        c2 = int(rng.integers(max(0, newest - 60), newest))
        c3 = int(rng.integers(0, 20))
        i1 = int(rng.geometric(0.2)) - 1
        flip = 1.0 if i < n_events // 2 else -1.0
        logit = c1_effect[c1] + ad_effect[c2] + flip * c3_effect[c3] + 0.4 * np.log1p(i1) - 1.5
        label = int(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
        ints = [str(i1)] + [str(int(rng.integers(-1, 200))) for _ in range(N_NUMERIC - 1)]
        cats = [_hash_hex(1, c1), _hash_hex(2, c2), _hash_hex(3, c3)]
        cats += [_hash_hex(j, int(rng.integers(0, 30))) for j in range(4, N_CATEGORICAL + 1)]
        fields = [str(label)] + [x if rng.random() > 0.1 else "" for x in ints + cats]
        lines.append("\t".join(fields))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def _hash_hex(column: int, value: int) -> str:
    """A stable 32-bit hex token per (column, value), like Criteo's hashed categories."""
    return f"{((column * 0x9E3779B1) ^ (value * 0x85EBCA77) ^ 0x5BD1E995) & 0xFFFFFFFF:08x}"
