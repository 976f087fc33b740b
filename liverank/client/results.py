"""Typed answers of the client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from liverank.store.manifest import Manifest, manifest_from_json


@dataclass(frozen=True)
class Epoch:
    """The model state an answer came from: the dense bundle version and each producer's applied sequence."""

    dense_version: str | None
    sparse_seq: dict[str, int]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Epoch:
        return cls(doc.get("dense_version"), {str(p): int(s) for p, s in (doc.get("sparse_seq") or {}).items()})


@dataclass(frozen=True)
class RankedItem:
    index: int  # row in the candidate columns
    id: Any  # from the first candidate id feature (int or str), or None
    score: float  # blended
    heads: dict[str, float]


@dataclass(frozen=True)
class Ranking:
    items: list[RankedItem]
    epoch: Epoch
    stats: dict[str, Any]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Ranking:
        items = [RankedItem(int(i["index"]), i["id"], float(i["score"]), dict(i["heads"])) for i in doc["items"]]
        return cls(items, Epoch.from_json(doc["epoch"]), dict(doc.get("stats") or {}))


@dataclass(frozen=True)
class ModelInfo:
    """The live bundle: its id, its manifest (features, slots, heads) and the current epoch."""

    bundle_id: str
    manifest: Manifest
    epoch: Epoch

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelInfo:
        return cls(str(doc["bundle_id"]), manifest_from_json(doc["manifest"]), Epoch.from_json(doc["epoch"]))


@dataclass(frozen=True)
class PushResult:
    status: str  # queued, duplicate or visible
    producer: str
    seq: int
    epoch: dict[str, Any] | None
    resent: int = 0  # earlier deltas resent to close a gap


@dataclass(frozen=True)
class Status:
    """``/admin/status``: the epoch, readiness and inbox depth, and the whole document in ``raw``."""

    epoch: Epoch
    ready: bool
    inbox_depth: int
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Status:
        return cls(Epoch.from_json(doc["epoch"]), bool(doc.get("ready")), int(doc.get("inbox_depth") or 0), doc)
