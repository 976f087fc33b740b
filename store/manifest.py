"""The model bundle's manifest: the part of the on-disk contract that the exporter writes and serving reads.

A bundle is a directory with ``manifest.json`` and ``dense.onnx``. The manifest names the embedding slots, the
features the dense network reads (in input order), the network's two inputs and its task heads::

    {"format": 1, "model": "w500", "version": "7", "schema_hash": "<sha256 hex>",
     "slots": [{"name": "item_id", "dim": 32, "dtype": "float32", "id_kind": "int", "ttl_s": null,
                "default": null}, ...],
     "features": [{"name": "hist_item_ids", "side": "user", "kind": "id_list", "slot": "item_id",
                   "pooling": "mean", "max_len": 50}, ...],
     "user_input": "user", "candidate_input": "candidates",
     "heads": [{"name": "click", "output": "p_click", "weight": 0.6}, ...],
     "created_at_ms": 1700000000000, "precision": "fp32", "parity": null}

The ONNX contract: two float32 inputs, ``user_input`` of shape [1, user_width] and ``candidate_input`` of
shape [N, candidate_width] (N dynamic). A side's width is the concatenation, in manifest feature order, of
each of its features' widths (``id`` and ``id_list``: the slot's dim; ``numeric``: 1). Each head's output is
float32 [N] or [N, 1] holding a probability.

The schema hash covers only what decides whether stored rows and deltas fit the model (slot name, dim,
dtype, id kind; feature name, side, kind, slot, pooling), not the version, heads, TTLs or defaults: a new
dense snapshot of the same schema keeps the same hash, so the deltas bound to it keep applying.

``precision`` (``fp32`` or ``int8``) and ``parity`` (the report an int8 bundle carries, ``liverank.store.parity``)
are optional: a manifest written before they existed is an fp32 bundle without a report.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, get_args

import orjson

from liverank.store.errors import ManifestInvalid, SlotConflict, UnknownSlot
from liverank.store.parity import PRECISIONS, REFERENCE_PRECISION, ParityReport, parity_from_json
from liverank.store.slots import SlotConfig

# A bundle directory holds exactly these two files.
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "dense.onnx"
BUNDLE_FILES: tuple[str, ...] = (MANIFEST_FILE, ONNX_FILE)

MANIFEST_FORMAT = 1
SCHEMA_HASH_FORMAT = 1
DEFAULT_MAX_LEN = 64
MAX_NAME_CHARS = 128
MAX_LIST_LEN = 1 << 16

Side = Literal["user", "candidate"]
FeatureKind = Literal["id", "id_list", "numeric"]
Pooling = Literal["sum", "mean"]

SIDES: tuple[str, ...] = get_args(Side)
FEATURE_KINDS: tuple[str, ...] = get_args(FeatureKind)
POOLINGS: tuple[str, ...] = get_args(Pooling)


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
        raise ManifestInvalid(f"{what} must be a string of 1..{MAX_NAME_CHARS} characters, got {value!r}")


@dataclass(frozen=True)
class Feature:
    """One input field of the dense network.

    ``id``: one id per row, looked up in ``slot``. ``id_list``: up to ``max_len`` ids per row (default 64),
    looked up in ``slot`` and pooled by ``pooling`` (``sum`` or ``mean``). ``numeric``: one float, no slot,
    width 1.
    """

    name: str
    side: Side
    kind: FeatureKind
    slot: str | None = None
    pooling: Pooling | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "feature name")
        where = f"feature {self.name!r}"
        if self.side not in SIDES:
            raise ManifestInvalid(f"{where}: side must be one of {SIDES}, got {self.side!r}")
        if self.kind not in FEATURE_KINDS:
            raise ManifestInvalid(f"{where}: kind must be one of {FEATURE_KINDS}, got {self.kind!r}")
        if self.kind == "numeric":
            if self.slot is not None or self.pooling is not None or self.max_len is not None:
                raise ManifestInvalid(f"{where}: a numeric feature takes no slot, pooling or max_len")
            return
        _check_name(self.slot, f"{where}: slot")
        if self.kind == "id":
            if self.pooling is not None or self.max_len is not None:
                raise ManifestInvalid(f"{where}: an id feature takes no pooling or max_len (use kind 'id_list')")
            return
        if self.pooling not in POOLINGS:
            raise ManifestInvalid(f"{where}: an id_list feature needs pooling in {POOLINGS}, got {self.pooling!r}")
        if self.max_len is None:
            object.__setattr__(self, "max_len", DEFAULT_MAX_LEN)
        elif not _is_int(self.max_len) or not 1 <= self.max_len <= MAX_LIST_LEN:
            raise ManifestInvalid(f"{where}: max_len must be an integer in 1..{MAX_LIST_LEN}, got {self.max_len!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "side": self.side,
            "kind": self.kind,
            "slot": self.slot,
            "pooling": self.pooling,
            "max_len": self.max_len,
        }


@dataclass(frozen=True)
class Head:
    """One task head: the ONNX output holding its probability, and its default weight in the blended score."""

    name: str
    output: str
    weight: float

    def __post_init__(self) -> None:
        _check_name(self.name, "head name")
        _check_name(self.output, f"head {self.name!r}: output")
        if not _is_number(self.weight) or not math.isfinite(self.weight):
            raise ManifestInvalid(f"head {self.name!r}: weight must be a finite number, got {self.weight!r}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "output": self.output, "weight": float(self.weight)}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a bundle's ``dense.onnx`` expects and produces; validated whole on construction.

    Build one with ``build_manifest`` (which computes the schema hash) or read one with
    ``manifest_from_json``.
    """

    format: int = MANIFEST_FORMAT
    model: str
    version: str
    schema_hash: str
    slots: tuple[SlotConfig, ...]
    features: tuple[Feature, ...]
    user_input: str
    candidate_input: str
    heads: tuple[Head, ...]
    created_at_ms: int
    precision: str = REFERENCE_PRECISION
    parity: ParityReport | None = None
    _slots_by_name: dict[str, SlotConfig] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; tuples keep the manifest immutable and hashable.
        for name in ("slots", "features", "heads"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.format != MANIFEST_FORMAT:
            raise ManifestInvalid(f"manifest format {self.format!r} is not supported (this build reads 1)")
        _check_name(self.model, "model")
        _check_name(self.version, "version")
        _check_name(self.user_input, "user_input")
        _check_name(self.candidate_input, "candidate_input")
        if not _is_int(self.created_at_ms) or self.created_at_ms < 0:
            raise ManifestInvalid(f"created_at_ms must be a non-negative integer, got {self.created_at_ms!r}")
        if self.user_input == self.candidate_input:
            raise ManifestInvalid(f"user_input and candidate_input must differ, both are {self.user_input!r}")
        self._check_slots_and_features()
        self._check_heads()
        self._check_precision()
        expected = compute_schema_hash(self.slots, self.features)
        if self.schema_hash != expected:
            raise ManifestInvalid(
                f"schema_hash {self.schema_hash!r} does not match the slots and features (expected {expected!r})"
            )

    def _check_slots_and_features(self) -> None:
        by_name: dict[str, SlotConfig] = {}
        for slot in self.slots:
            if not isinstance(slot, SlotConfig):
                raise ManifestInvalid(f"slots must be SlotConfig objects, got {type(slot).__name__}")
            if slot.name in by_name:
                raise ManifestInvalid(f"slot {slot.name!r} is declared twice")
            by_name[slot.name] = slot
        object.__setattr__(self, "_slots_by_name", by_name)
        seen: set[str] = set()
        for feature in self.features:
            if not isinstance(feature, Feature):
                raise ManifestInvalid(f"features must be Feature objects, got {type(feature).__name__}")
            if feature.name in seen:
                raise ManifestInvalid(f"feature {feature.name!r} is declared twice")
            seen.add(feature.name)
            if feature.slot is not None and feature.slot not in by_name:
                raise ManifestInvalid(f"feature {feature.name!r} names slot {feature.slot!r}, which is not declared")
        if not self.candidate_features:
            raise ManifestInvalid("the manifest declares no candidate features")

    def _check_heads(self) -> None:
        if not self.heads:
            raise ManifestInvalid("the manifest declares no heads")
        names: set[str] = set()
        outputs: set[str] = set()
        for head in self.heads:
            if not isinstance(head, Head):
                raise ManifestInvalid(f"heads must be Head objects, got {type(head).__name__}")
            if head.name in names:
                raise ManifestInvalid(f"head {head.name!r} is declared twice")
            if head.output in outputs:
                raise ManifestInvalid(f"head {head.name!r}: output {head.output!r} is already used by another head")
            if head.output in (self.user_input, self.candidate_input):
                raise ManifestInvalid(f"head {head.name!r}: output {head.output!r} is also an input name")
            names.add(head.name)
            outputs.add(head.output)

    def _check_precision(self) -> None:
        if self.precision not in PRECISIONS:
            raise ManifestInvalid(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.parity is not None:
            if not isinstance(self.parity, ParityReport):
                raise ManifestInvalid(f"parity must be a ParityReport, got {type(self.parity).__name__}")
            heads = {h.name for h in self.heads}
            if self.parity.head_names != heads or len(self.parity.heads) != len(heads):
                raise ManifestInvalid(
                    f"parity reports heads {sorted(self.parity.head_names)}, the manifest declares {sorted(heads)}"
                )

    # Cached on first use: the manifest is immutable and the ranker reads these per request.
    @cached_property
    def user_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.side == "user")

    @cached_property
    def candidate_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.side == "candidate")

    @cached_property
    def user_width(self) -> int:
        return sum(self.feature_width(f) for f in self.user_features)

    @cached_property
    def candidate_width(self) -> int:
        return sum(self.feature_width(f) for f in self.candidate_features)

    def slot(self, name: str) -> SlotConfig:
        """The slot called ``name``; ``UnknownSlot`` if the manifest has none."""
        try:
            return self._slots_by_name[name]
        except KeyError:
            raise UnknownSlot(f"model {self.model!r} version {self.version!r} has no slot {name!r}") from None

    def feature_width(self, feature: Feature) -> int:
        """How many input columns ``feature`` fills: its slot's dim, or 1 for a numeric feature."""
        return 1 if feature.slot is None else self.slot(feature.slot).dim

    def feature_offsets(self, side: Side) -> list[tuple[Feature, int, int]]:
        """Each of ``side``'s features with the [start, stop) columns it fills in that side's ONNX input."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        offsets: list[tuple[Feature, int, int]] = []
        start = 0
        for feature in self.features:
            if feature.side == side:
                stop = start + self.feature_width(feature)
                offsets.append((feature, start, stop))
                start = stop
        return offsets

    def head(self, name: str) -> Head:
        for head in self.heads:
            if head.name == name:
                return head
        raise KeyError(f"model {self.model!r} has no head {name!r}")


def compute_schema_hash(slots: Iterable[SlotConfig], features: Iterable[Feature]) -> str:
    """sha256 hex of the canonical JSON of the storage-relevant slot fields and of the features.

    Slots are sorted by name (their order means nothing); feature order is kept (it is the ONNX input layout).
    """
    doc = {
        "schema_hash_format": SCHEMA_HASH_FORMAT,
        "slots": sorted(
            ({"name": s.name, "dim": s.dim, "dtype": s.dtype, "id_kind": s.id_kind} for s in slots),
            key=lambda s: str(s["name"]),
        ),
        "features": [
            {"name": f.name, "side": f.side, "kind": f.kind, "slot": f.slot, "pooling": f.pooling} for f in features
        ],
    }
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build_manifest(
    *,
    model: str,
    version: str,
    slots: Iterable[SlotConfig],
    features: Iterable[Feature],
    heads: Iterable[Head],
    user_input: str = "user",
    candidate_input: str = "candidates",
    created_at_ms: int,
) -> Manifest:
    """A manifest with its schema hash computed from ``slots`` and ``features``."""
    slots, features = tuple(slots), tuple(features)
    return Manifest(
        model=model,
        version=version,
        schema_hash=compute_schema_hash(slots, features),
        slots=slots,
        features=features,
        user_input=user_input,
        candidate_input=candidate_input,
        heads=tuple(heads),
        created_at_ms=created_at_ms,
    )


def manifest_to_json(manifest: Manifest) -> dict[str, Any]:
    """The JSON form of a manifest (a dict; serialise with orjson)."""
    return {
        "format": manifest.format,
        "model": manifest.model,
        "version": manifest.version,
        "schema_hash": manifest.schema_hash,
        "slots": [s.to_json() for s in manifest.slots],
        "features": [f.to_json() for f in manifest.features],
        "user_input": manifest.user_input,
        "candidate_input": manifest.candidate_input,
        "heads": [h.to_json() for h in manifest.heads],
        "created_at_ms": manifest.created_at_ms,
        "precision": manifest.precision,
        "parity": None if manifest.parity is None else manifest.parity.to_json(),
    }


def manifest_from_json(payload: bytes | str | Mapping[str, Any]) -> Manifest:
    """Parse and validate a manifest. Unknown keys are ignored; any defect raises ``ManifestInvalid``."""
    if isinstance(payload, bytes | bytearray | memoryview | str):
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from exc
    else:
        doc = payload
    if not isinstance(doc, Mapping):
        raise ManifestInvalid("a manifest must be a JSON object")
    slots = tuple(_slot_from_json(raw, i) for i, raw in enumerate(_required(doc, "manifest", "slots", list)))
    features = tuple(_feature_from_json(raw, i) for i, raw in enumerate(_required(doc, "manifest", "features", list)))
    heads = tuple(_head_from_json(raw, i) for i, raw in enumerate(_required(doc, "manifest", "heads", list)))
    return Manifest(
        format=_required(doc, "manifest", "format", int),
        model=_required(doc, "manifest", "model", str),
        version=_required(doc, "manifest", "version", str),
        schema_hash=_required(doc, "manifest", "schema_hash", str),
        slots=slots,
        features=features,
        user_input=_required(doc, "manifest", "user_input", str),
        candidate_input=_required(doc, "manifest", "candidate_input", str),
        heads=heads,
        created_at_ms=_required(doc, "manifest", "created_at_ms", int),
        precision=_optional(doc, "manifest", "precision", str) or REFERENCE_PRECISION,
        parity=None if doc.get("parity") is None else parity_from_json(doc["parity"]),
    )


# --- field readers ------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", float: "a number", dict: "an object"}


def _type_ok(value: object, kind: type) -> bool:
    if kind is int:
        return _is_int(value)
    if kind is float:
        return _is_number(value)
    return isinstance(value, kind)


def _required(doc: Mapping[str, Any], where: str, key: str, kind: type) -> Any:
    if key not in doc:
        raise ManifestInvalid(f"{where}: missing field {key!r}")
    value = doc[key]
    if not _type_ok(value, kind):
        raise ManifestInvalid(f"{where}: field {key!r} must be {_TYPE_NAMES[kind]}, got {value!r}")
    return value


def _optional(doc: Mapping[str, Any], where: str, key: str, kind: type) -> Any:
    value = doc.get(key)
    if value is not None and not _type_ok(value, kind):
        raise ManifestInvalid(f"{where}: field {key!r} must be {_TYPE_NAMES[kind]} or null, got {value!r}")
    return value


def _entry(raw: object, what: str, index: int) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ManifestInvalid(f"{what}[{index}] must be an object, got {raw!r}")
    return raw


def _slot_from_json(raw: object, index: int) -> SlotConfig:
    doc = _entry(raw, "slots", index)
    where = f"slots[{index}]"
    name = _required(doc, where, "name", str)
    dim = _required(doc, where, "dim", int)
    dtype = _required(doc, where, "dtype", str)
    id_kind = _required(doc, where, "id_kind", str)
    ttl_s = _optional(doc, where, "ttl_s", float)
    default = _optional(doc, where, "default", list)
    if default is not None and not all(_is_number(x) for x in default):
        raise ManifestInvalid(f"slot {name!r}: default must be a list of numbers")
    # SlotConfig checks ranges and enums itself; its SlotConflict is re-raised as a manifest defect.
    try:
        return SlotConfig(
            name=name,
            dim=dim,
            dtype=dtype,
            id_kind=id_kind,
            ttl_s=None if ttl_s is None else float(ttl_s),
            default=None if default is None else tuple(float(x) for x in default),
        )
    except SlotConflict as exc:
        raise ManifestInvalid(exc.message) from exc


def _feature_from_json(raw: object, index: int) -> Feature:
    doc = _entry(raw, "features", index)
    where = f"features[{index}]"
    return Feature(
        name=_required(doc, where, "name", str),
        side=_required(doc, where, "side", str),
        kind=_required(doc, where, "kind", str),
        slot=_optional(doc, where, "slot", str),
        pooling=_optional(doc, where, "pooling", str),
        max_len=_optional(doc, where, "max_len", int),
    )


def _head_from_json(raw: object, index: int) -> Head:
    doc = _entry(raw, "heads", index)
    where = f"heads[{index}]"
    return Head(
        name=_required(doc, where, "name", str),
        output=_required(doc, where, "output", str),
        weight=float(_required(doc, where, "weight", float)),
    )
