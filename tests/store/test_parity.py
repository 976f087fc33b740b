"""Precision and parity report in the manifest: round trip, old manifests, defects refused, the bounds check."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from liverank.store.errors import ManifestInvalid
from liverank.store.manifest import manifest_from_json, manifest_to_json
from liverank.store.parity import HeadParity, ParityReport, parity_violations
from tests.store.test_manifest import make_manifest

REPORT = ParityReport(
    method="onnxruntime dynamic int8",
    runtime="onnxruntime 1.32.0",
    requests=64,
    candidates_per_request=500,
    k=50,
    topk_overlap_mean=0.98,
    topk_overlap_min=0.9,
    heads=(HeadParity("click", 0.01, 0.001), HeadParity("finish", 0.02, 0.002)),
    labelled_rows=512,
    auc_head="click",
    auc_reference=0.75,
    auc=0.7495,
    auc_diff=-0.0005,
)


def _doc(**changes: Any) -> dict[str, Any]:
    doc = manifest_to_json(dataclasses.replace(make_manifest(), precision="int8", parity=REPORT))
    doc["parity"].update(changes)
    return doc


def test_an_int8_manifest_round_trips_with_its_report() -> None:
    manifest = manifest_from_json(_doc())
    assert manifest.precision == "int8"
    assert manifest.parity == REPORT
    assert manifest_to_json(manifest)["parity"]["heads"] == {
        "click": {"max_abs_diff": 0.01, "mean_abs_diff": 0.001},
        "finish": {"max_abs_diff": 0.02, "mean_abs_diff": 0.002},
    }
    # Precision and report are not part of the schema: an int8 snapshot takes the same deltas as an fp32 one.
    assert manifest.schema_hash == make_manifest().schema_hash


def test_a_manifest_written_before_precision_existed_is_fp32_without_a_report() -> None:
    doc = manifest_to_json(make_manifest())
    del doc["precision"], doc["parity"]
    manifest = manifest_from_json(doc)
    assert (manifest.precision, manifest.parity) == ("fp32", None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"topk_overlap_mean": 1.5}, "topk_overlap_mean must be a number in"),
        ({"k": 0}, "k must be a positive integer"),
        ({"auc_diff": "small"}, "auc_diff must be a finite number or null"),
        ({"heads": {"click": {"max_abs_diff": 0.1, "mean_abs_diff": 0.01}}}, "parity reports heads"),
        ({"heads": {"click": {"max_abs_diff": -1, "mean_abs_diff": 0}, "finish": {}}}, "missing field"),
        ({"runtime": ""}, "runtime must be a non-empty string"),
    ],
)
def test_a_defective_report_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestInvalid, match=message):
        manifest_from_json(_doc(**changes))


def test_an_unknown_precision_is_refused() -> None:
    doc = _doc()
    doc["precision"] = "fp16"
    with pytest.raises(ManifestInvalid, match="precision must be one of"):
        manifest_from_json(doc)


def test_the_bounds() -> None:
    bounds = {"min_topk_overlap": 0.95, "max_auc_diff": 0.002}
    assert parity_violations("fp32", None, **bounds) == []
    assert parity_violations("int8", REPORT, **bounds) == []
    assert "has none" in parity_violations("int8", None, **bounds)[0]
    low = dataclasses.replace(REPORT, topk_overlap_mean=0.9, auc_diff=0.003)
    assert len(parity_violations("int8", low, **bounds)) == 2
    unlabelled = dataclasses.replace(
        REPORT, labelled_rows=0, auc_head=None, auc_reference=None, auc=None, auc_diff=None
    )
    assert parity_violations("int8", unlabelled, **bounds) == []
