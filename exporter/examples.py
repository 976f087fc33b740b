"""Example inputs for a bundle, written beside it so a newcomer can rank and push a delta by pasting commands.

``write_examples`` reads nothing but the manifest: it works for any bundle (synthetic or trained). It writes

- ``request.json``: a ``POST /v1/rank`` body with every feature the model reads (user features once, candidate
  features as columns of ``candidates`` rows), ``k`` and the manifest's blend weights;
- ``delta.json``: a JSON delta (producer ``example``, seq 1, the bundle's schema hash) that sets the embedding rows
  of the request's candidates in the first candidate id slot, so the request ranks differently once it is visible.

Ids are small and deterministic, so the files are the same for the same manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from liverank.exporter.deltas import DeltaBuilder
from liverank.store.format import delta_to_json
from liverank.store.manifest import Feature, Manifest

REQUEST_FILE = "request.json"
DELTA_FILE = "delta.json"
EXAMPLE_PRODUCER = "example"


def example_request(manifest: Manifest, *, candidates: int = 5, k: int = 3) -> dict[str, Any]:
    """A ranking request that names every feature of ``manifest``, with ``candidates`` candidates."""
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    user = {f.name: _value(manifest, f, row=0) for f in manifest.features if f.side == "user"}
    columns = {
        f.name: [_value(manifest, f, row=row) for row in range(candidates)]
        for f in manifest.features
        if f.side == "candidate"
    }
    return {
        "user": user,
        "candidates": columns,
        "k": min(k, candidates),
        "blend": {head.name: head.weight for head in manifest.heads},
    }


def example_delta(manifest: Manifest, request: dict[str, Any], *, created_at_ms: int | None = None) -> dict[str, Any]:
    """A JSON delta that gives the request's candidates new rows in the first candidate id slot.

    The rows differ per candidate (a ramp over the embedding), so the blended scores move once the delta is visible.
    """
    feature = _first_candidate_id_feature(manifest)
    slot = manifest.slot(feature.slot) if feature.slot is not None else None
    if slot is None or slot.id_kind != "int":
        raise ValueError(f"{manifest.model}: no candidate id feature with integer ids to write an example delta for")
    ids = np.asarray(request["candidates"][feature.name], dtype=np.uint64)
    ramp = np.linspace(-1.0, 1.0, slot.dim, dtype=np.float32)
    values = np.stack([ramp * (0.5 + i) for i in range(len(ids))]).astype(np.float32)
    now_ms = time.time_ns() // 1_000_000 if created_at_ms is None else created_at_ms
    updated = np.full(len(ids), now_ms, dtype=np.int64)
    delta = DeltaBuilder(EXAMPLE_PRODUCER, manifest).build({slot.name: (ids, values, updated)}, created_at_ms=now_ms)
    return delta_to_json(delta)


def write_examples(manifest: Manifest, out_dir: str | Path) -> list[Path]:
    """Write ``request.json`` and ``delta.json`` for ``manifest`` into ``out_dir`` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = example_request(manifest)
    written = [out / REQUEST_FILE, out / DELTA_FILE]
    written[0].write_bytes(orjson.dumps(request) + b"\n")
    written[1].write_bytes(orjson.dumps(example_delta(manifest, request), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    return written


def _first_candidate_id_feature(manifest: Manifest) -> Feature:
    for feature in manifest.features:
        if feature.side == "candidate" and feature.kind == "id":
            return feature
    raise ValueError(f"{manifest.model} has no candidate id feature")


def _value(manifest: Manifest, feature: Feature, *, row: int) -> Any:
    if feature.kind == "numeric":
        return round(0.25 * (row + 1), 2)
    if feature.kind == "id_list":
        length = min(3, feature.max_len or 3)
        return [_id(manifest, feature, row * length + j) for j in range(length)]
    return _id(manifest, feature, row)


def _id(manifest: Manifest, feature: Feature, index: int) -> int | str:
    slot = manifest.slot(feature.slot) if feature.slot is not None else None
    if slot is not None and slot.id_kind != "int":
        return f"{feature.name}-{index + 1}"
    return index + 1
