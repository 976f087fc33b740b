"""The bundle manifest: JSON round trip, widths and offsets, schema hash, and every defect refused."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from liverank.store.errors import ManifestInvalid, UnknownSlot
from liverank.store.manifest import (
    DEFAULT_MAX_LEN,
    Feature,
    Head,
    Manifest,
    build_manifest,
    compute_schema_hash,
    manifest_from_json,
    manifest_to_json,
)
from liverank.store.slots import SlotConfig

SLOTS = (
    SlotConfig(name="user_id", dim=8),
    SlotConfig(name="item_id", dim=16, dtype="float16", ttl_s=3600.0),
    SlotConfig(name="tags", dim=4, id_kind="str", default=(0.5, 0.5, 0.5, 0.5)),
)
FEATURES = (
    Feature("user_id", "user", "id", "user_id"),
    Feature("hist", "user", "id_list", "item_id", "mean", 50),
    Feature("user_age", "user", "numeric"),
    Feature("item_id", "candidate", "id", "item_id"),
    Feature("tags", "candidate", "id_list", "tags", "sum"),
    Feature("price", "candidate", "numeric"),
)
HEADS = (Head("click", "p_click", 0.6), Head("finish", "p_finish", 0.4))
# Pinned: deltas already written bind to this value, so the canonical form must never drift silently.
PINNED_SCHEMA_HASH = "8a03d985cb8360a69bf4f67678438019f339c306058aae0ae89c78c48800a79a"


def make_manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "model": "m",
        "version": "3",
        "slots": SLOTS,
        "features": FEATURES,
        "heads": HEADS,
        "created_at_ms": 1_700_000_000_000,
    }
    fields.update(changes)
    return build_manifest(**fields)


def valid_doc() -> dict[str, Any]:
    return manifest_to_json(make_manifest())


def test_json_round_trip_through_bytes() -> None:
    manifest = make_manifest()
    again = manifest_from_json(orjson.dumps(manifest_to_json(manifest)))
    assert again == manifest
    assert again.slot("tags").default == (0.5, 0.5, 0.5, 0.5)
    assert again.slot("item_id").dtype == "float16"
    assert again.features[4].max_len == DEFAULT_MAX_LEN


def test_unknown_keys_are_ignored() -> None:
    doc = valid_doc()
    doc["comment"] = "from the trainer"
    doc["features"][0]["note"] = 1
    doc["heads"][0]["extra"] = [1, 2]
    assert manifest_from_json(doc) == make_manifest()


def test_widths_and_offsets_follow_feature_order() -> None:
    manifest = make_manifest()
    assert [f.name for f in manifest.user_features] == ["user_id", "hist", "user_age"]
    assert [f.name for f in manifest.candidate_features] == ["item_id", "tags", "price"]
    assert manifest.user_width == 8 + 16 + 1
    assert manifest.candidate_width == 16 + 4 + 1
    user = [(f.name, start, stop) for f, start, stop in manifest.feature_offsets("user")]
    assert user == [("user_id", 0, 8), ("hist", 8, 24), ("user_age", 24, 25)]
    candidate = [(f.name, start, stop) for f, start, stop in manifest.feature_offsets("candidate")]
    assert candidate == [("item_id", 0, 16), ("tags", 16, 20), ("price", 20, 21)]


def test_slot_lookup() -> None:
    manifest = make_manifest()
    assert manifest.slot("item_id").dim == 16
    with pytest.raises(UnknownSlot, match="no slot 'nope'"):
        manifest.slot("nope")


def test_schema_hash_is_pinned() -> None:
    assert compute_schema_hash(SLOTS, FEATURES) == PINNED_SCHEMA_HASH
    assert make_manifest().schema_hash == PINNED_SCHEMA_HASH


def test_schema_hash_is_sha256_of_sorted_key_compact_json() -> None:
    # The canonical form, spelled out for producers written in other languages.
    canonical = (
        b'{"features":[{"kind":"id","name":"item","pooling":null,"side":"candidate","slot":"item_id"}],'
        b'"schema_hash_format":1,'
        b'"slots":[{"dim":4,"dtype":"float32","id_kind":"int","name":"item_id"}]}'
    )
    slots = [SlotConfig(name="item_id", dim=4, ttl_s=60.0)]
    features = [Feature("item", "candidate", "id", "item_id")]
    assert compute_schema_hash(slots, features) == hashlib.sha256(canonical).hexdigest()


def _replace_slot(index: int, **changes: Any) -> tuple[SlotConfig, ...]:
    slots = list(SLOTS)
    slots[index] = dataclasses.replace(slots[index], **changes)
    return tuple(slots)


def _replace_feature(index: int, **changes: Any) -> tuple[Feature, ...]:
    features = list(FEATURES)
    features[index] = dataclasses.replace(features[index], **changes)
    return tuple(features)


@pytest.mark.parametrize(
    ("slots", "features"),
    [
        pytest.param(_replace_slot(1, dim=32), FEATURES, id="slot-dim"),
        pytest.param(_replace_slot(1, dtype="float32"), FEATURES, id="slot-dtype"),
        pytest.param(_replace_slot(0, id_kind="str_hash"), FEATURES, id="slot-id-kind"),
        pytest.param(SLOTS, _replace_feature(0, name="uid"), id="feature-name"),
        pytest.param(SLOTS, _replace_feature(2, side="candidate"), id="feature-side"),
        pytest.param(SLOTS, _replace_feature(1, pooling="sum"), id="feature-pooling"),
        pytest.param(SLOTS, _replace_feature(3, slot="user_id"), id="feature-slot"),
        pytest.param(SLOTS, (*FEATURES[:1], FEATURES[2], FEATURES[1], *FEATURES[3:]), id="feature-order"),
    ],
)
def test_schema_hash_changes_with_storage_or_layout(
    slots: tuple[SlotConfig, ...], features: tuple[Feature, ...]
) -> None:
    assert compute_schema_hash(slots, features) != PINNED_SCHEMA_HASH


def test_schema_hash_ignores_version_heads_ttl_default_and_slot_order() -> None:
    changed = make_manifest(
        version="99",
        heads=(Head("like", "p_like", 1.0),),
        slots=(
            dataclasses.replace(SLOTS[2], default=None),
            dataclasses.replace(SLOTS[1], ttl_s=None),
            SLOTS[0],
        ),
        features=_replace_feature(1, max_len=7),
        created_at_ms=5,
    )
    assert changed.schema_hash == PINNED_SCHEMA_HASH


Mutation = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _append_copy(key: str, index: int) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc[key].append(copy.deepcopy(doc[key][index]))

    return mutate


def _keep_side(side: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["features"] = [f for f in doc["features"] if f["side"] == side]

    return mutate


INVALID: list[Any] = [
    pytest.param(_delete(("model",)), "missing field 'model'", id="missing-model"),
    pytest.param(_delete(("schema_hash",)), "missing field 'schema_hash'", id="missing-hash"),
    pytest.param(_delete(("heads",)), "missing field 'heads'", id="missing-heads"),
    pytest.param(_delete(("created_at_ms",)), "missing field 'created_at_ms'", id="missing-created"),
    pytest.param(_delete(("slots", 0, "dim")), r"slots\[0\]: missing field 'dim'", id="missing-slot-dim"),
    pytest.param(_delete(("features", 1, "side")), r"features\[1\]: missing field 'side'", id="missing-side"),
    pytest.param(_delete(("heads", 0, "weight")), r"heads\[0\]: missing field 'weight'", id="missing-weight"),
    pytest.param(_set(("format",), 2), "format 2 is not supported", id="format-2"),
    pytest.param(_set(("format",), "1"), "'format' must be an integer", id="format-str"),
    pytest.param(_set(("version",), 3), "'version' must be a string", id="version-int"),
    pytest.param(_set(("version",), ""), "version must be a string of 1", id="version-empty"),
    pytest.param(_set(("created_at_ms",), True), "'created_at_ms' must be an integer", id="created-bool"),
    pytest.param(_set(("created_at_ms",), -1), "created_at_ms must be a non-negative", id="created-negative"),
    pytest.param(_set(("slots",), {}), "'slots' must be a list", id="slots-object"),
    pytest.param(_set(("slots", 0), "user_id"), r"slots\[0\] must be an object", id="slot-str"),
    pytest.param(_set(("slots", 0, "dim"), "8"), "'dim' must be an integer", id="slot-dim-str"),
    pytest.param(_set(("slots", 0, "dim"), 0), "dim must be an integer in 1", id="slot-dim-zero"),
    pytest.param(_set(("slots", 0, "dtype"), "int8"), "dtype must be one of", id="slot-dtype"),
    pytest.param(_set(("slots", 2, "default"), [1, "x", 0, 0]), "default must be a list of numbers", id="default"),
    pytest.param(_set(("slots", 2, "default"), [1.0]), "default has 1 values", id="default-short"),
    pytest.param(_set(("features", 0, "side"), "item"), "side must be one of", id="bad-side"),
    pytest.param(_set(("features", 0, "kind"), "dense"), "kind must be one of", id="bad-kind"),
    pytest.param(_set(("features", 1, "pooling"), None), "needs pooling", id="id-list-no-pooling"),
    pytest.param(_set(("features", 1, "pooling"), "max"), "needs pooling", id="id-list-max-pooling"),
    pytest.param(_set(("features", 1, "max_len"), 0), "max_len must be an integer", id="max-len-zero"),
    pytest.param(_set(("features", 1, "max_len"), 5.0), "'max_len' must be an integer", id="max-len-float"),
    pytest.param(_set(("features", 0, "pooling"), "sum"), "an id feature takes no pooling", id="id-pooling"),
    pytest.param(_set(("features", 2, "slot"), "user_id"), "numeric feature takes no slot", id="numeric-slot"),
    pytest.param(_delete(("features", 0, "slot")), "slot must be a string", id="id-no-slot"),
    pytest.param(_set(("features", 3, "slot"), "music"), "names slot 'music'", id="unknown-slot"),
    pytest.param(_append_copy("features", 0), "feature 'user_id' is declared twice", id="dup-feature"),
    pytest.param(_append_copy("slots", 1), "slot 'item_id' is declared twice", id="dup-slot"),
    pytest.param(_append_copy("heads", 0), "head 'click' is declared twice", id="dup-head"),
    pytest.param(_set(("heads", 1, "output"), "p_click"), "already used by another head", id="dup-output"),
    pytest.param(_set(("heads", 0, "output"), "user"), "also an input name", id="output-is-input"),
    pytest.param(_set(("heads", 0, "weight"), "0.6"), "'weight' must be a number", id="weight-str"),
    pytest.param(_set(("heads", 0, "weight"), float("inf")), "weight must be a finite", id="weight-inf"),
    pytest.param(_set(("heads",), []), "declares no heads", id="no-heads"),
    pytest.param(_keep_side("user"), "no candidate features", id="no-candidate-features"),
    pytest.param(_set(("candidate_input",), "user"), "must differ", id="same-inputs"),
    pytest.param(_set(("schema_hash",), "0" * 64), "does not match the slots and features", id="hash-mismatch"),
    pytest.param(_set(("slots", 1, "dim"), 32), "does not match the slots and features", id="hash-stale"),
]


@pytest.mark.parametrize(("mutate", "message"), INVALID)
def test_invalid_manifest_is_refused(mutate: Mutation, message: str) -> None:
    doc = valid_doc()
    mutate(doc)
    with pytest.raises(ManifestInvalid, match=message):
        manifest_from_json(doc)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"{not json", "not valid JSON", id="garbage"),
        pytest.param(b"[1, 2]", "must be a JSON object", id="array"),
        pytest.param(b"", "not valid JSON", id="empty"),
    ],
)
def test_unparseable_manifest_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ManifestInvalid, match=message):
        manifest_from_json(payload)


def test_constructing_an_inconsistent_manifest_in_code_is_refused_too() -> None:
    with pytest.raises(ManifestInvalid, match="does not match"):
        dataclasses.replace(make_manifest(), features=FEATURES[:-1])
    with pytest.raises(ManifestInvalid, match="needs pooling"):
        Feature("tags", "candidate", "id_list", "tags")
