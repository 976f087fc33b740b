"""Example inputs for a bundle: a request naming every feature and a delta bound to the bundle's schema."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from liverank.exporter.cli import main
from liverank.exporter.examples import example_delta, example_request, write_examples
from liverank.exporter.synthetic import build_synthetic_bundle, synthetic_manifest
from liverank.store.format import delta_from_json
from liverank.store.manifest import Feature, Head, Manifest, build_manifest
from liverank.store.slots import SlotConfig


@pytest.mark.parametrize("preset", ["tiny", "w500"])
def test_request_names_every_feature_with_one_value_per_candidate(preset: str) -> None:
    manifest = synthetic_manifest(preset, dim=8)
    request = example_request(manifest, candidates=4, k=10)
    assert set(request["user"]) == {f.name for f in manifest.features if f.side == "user"}
    assert set(request["candidates"]) == {f.name for f in manifest.features if f.side == "candidate"}
    assert all(len(column) == 4 for column in request["candidates"].values())
    assert request["k"] == 4  # never more than the candidates
    assert request["blend"] == {head.name: head.weight for head in manifest.heads}


def test_delta_is_valid_for_the_bundle_and_covers_the_candidates() -> None:
    manifest = synthetic_manifest("w500", dim=8)
    request = example_request(manifest)
    delta = delta_from_json(orjson.dumps(example_delta(manifest, request, created_at_ms=1_700_000_000_000)))
    assert delta.schema_hash == manifest.schema_hash
    assert (delta.producer, delta.seq) == ("example", 1)
    (slot_name, rows), *_ = delta.slots.items()
    assert slot_name == "item_id"
    assert rows.ids.tolist() == request["candidates"]["item_id"]
    assert rows.values.shape == (len(rows.ids), 8)
    assert len({row.tobytes() for row in rows.values}) == len(rows.ids)  # rows differ, so the ranking moves


def _mixed_manifest() -> Manifest:
    slots = (SlotConfig("user", 4, id_kind="str"), SlotConfig("item", 4))
    features = (
        Feature("user", "user", "id", "user"),
        Feature("age", "user", "numeric"),
        Feature("item", "candidate", "id", "item"),
        Feature("price", "candidate", "numeric"),
    )
    heads = (Head("click", "p_click", 1.0),)
    return build_manifest(model="m", version="1", slots=slots, features=features, heads=heads, created_at_ms=0)


def test_string_ids_and_numeric_features() -> None:
    manifest = _mixed_manifest()
    request = example_request(manifest, candidates=2)
    assert isinstance(request["user"]["user"], str)
    assert all(isinstance(value, float) for value in [request["user"]["age"], *request["candidates"]["price"]])
    assert request["candidates"]["item"] == [1, 2]


def test_cli_writes_examples_beside_a_synthetic_bundle_and_for_any_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synthetic", "--out", str(tmp_path / "b"), "--preset", "tiny", "--dim", "4"]) == 0
    assert {p.name for p in (tmp_path / "b" / "examples").iterdir()} == {"request.json", "delta.json"}
    assert main(["examples", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "ex")]) == 0
    request = orjson.loads((tmp_path / "ex" / "request.json").read_bytes())
    assert request == orjson.loads((tmp_path / "b" / "examples" / "request.json").read_bytes())
    assert "wrote" in capsys.readouterr().out


def test_cli_refuses_a_directory_without_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["examples", "--bundle", str(tmp_path)]) == 1
    assert "manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "examples").exists()


def test_write_examples_for_a_built_bundle(tmp_path: Path) -> None:
    manifest = build_synthetic_bundle(tmp_path / "b", preset="tiny", dim=4)
    written = write_examples(manifest, tmp_path / "out")
    assert [p.name for p in written] == ["request.json", "delta.json"]
