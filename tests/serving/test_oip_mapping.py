"""The OIP view of a manifest with string ids and numeric features (HTTP-free): metadata datatypes and shapes,
padded lists, and the columnar document /v1/rank's parser takes."""

from __future__ import annotations

import numpy as np
import pytest

from liverank.serving.errors import InferenceRequestInvalid
from liverank.serving.oip import PAD_UINT64, model_metadata, plan_request
from liverank.serving.oip_tensors import Tensor
from liverank.serving.request import Limits, parse_rank_request
from liverank.store.manifest import Feature, Head, build_manifest
from liverank.store.slots import SlotConfig

MANIFEST = build_manifest(
    model="m",
    version="3",
    slots=[SlotConfig(name="user", dim=4, id_kind="str"), SlotConfig(name="item", dim=4)],
    features=[
        Feature("user_name", "user", "id", "user"),
        Feature("age", "user", "numeric"),
        Feature("item_id", "candidate", "id", "item"),
        Feature("similar", "candidate", "id_list", "item", "sum", 4),
        Feature("price", "candidate", "numeric"),
    ],
    heads=[Head("click", "p_click", 1.0)],
    created_at_ms=0,
)


def _bytes(*values: bytes) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def test_metadata_types_string_ids_as_bytes_and_numerics_as_fp32() -> None:
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in model_metadata(MANIFEST)["inputs"]}
    assert inputs == {
        "user_name": ("BYTES", [1]),
        "age": ("FP32", [1]),
        "item_id": ("INT64", [-1]),
        "similar": ("INT64", [-1, -1]),
        "price": ("FP32", [-1]),
    }
    assert model_metadata(MANIFEST)["outputs"][-1] == {"name": "score_click", "datatype": "FP32", "shape": [-1]}


def test_a_request_becomes_the_columnar_document_with_pads_dropped() -> None:
    tensors = {
        "user_name": Tensor("user_name", "BYTES", _bytes("zoë".encode())),
        "age": Tensor("age", "FP32", np.asarray([31.5], np.float32)),
        "item_id": Tensor("item_id", "UINT64", np.asarray([2**64 - 2, 5], np.uint64)),
        "similar": Tensor("similar", "UINT64", np.asarray([[1, PAD_UINT64], [PAD_UINT64, PAD_UINT64]], np.uint64)),
        "price": Tensor("price", "FP32", np.asarray([1.25, 2.0], np.float32)),
    }
    plan = plan_request(MANIFEST, {"parameters": {"k": 1, "blend.click": 2.0}}, tensors)
    assert plan.doc == {
        "user": {"user_name": "zoë", "age": 31.5},
        "candidates": {"item_id": [2**64 - 2, 5], "similar": [[1], []], "price": [1.25, 2.0]},
        "k": 1,
        "blend": {"click": 2.0},
    }
    request = parse_rank_request(plan.doc, MANIFEST, Limits(100, 10, 10))
    assert request.candidates["item_id"].ids.tolist() == [2**64 - 2, 5]


def test_an_integer_tensor_for_a_numeric_feature_is_refused() -> None:
    tensors = {
        "user_name": Tensor("user_name", "BYTES", _bytes(b"a")),
        "age": Tensor("age", "INT64", np.asarray([3])),
        "item_id": Tensor("item_id", "INT64", np.asarray([1])),
        "similar": Tensor("similar", "INT64", np.asarray([[1]])),
        "price": Tensor("price", "FP32", np.asarray([1.0], np.float32)),
    }
    with pytest.raises(InferenceRequestInvalid, match="'age': datatype INT64 is not accepted"):
        plan_request(MANIFEST, {}, tensors)
