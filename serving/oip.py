"""The live ranking model as one Open Inference Protocol (KServe v2) model. HTTP-free.

The model is named by the live manifest's ``model`` and versioned by its ``version``. Its inputs are the manifest's
features, one tensor each, named as the feature:

=================  ==================  ==============================================================
feature            datatype            shape
=================  ==================  ==============================================================
user id            INT64 (BYTES)       ``[1]``
user id list       INT64 (BYTES)       ``[1, -1]``, padded
user numeric       FP32                ``[1]``
candidate id       INT64 (BYTES)       ``[-1]``, one per candidate
candidate id list  INT64 (BYTES)       ``[-1, -1]``, one padded row per candidate
candidate numeric  FP32                ``[-1]``
=================  ==================  ==============================================================

BYTES (UTF-8) for slots with string ids. UINT64 is accepted wherever INT64 is, for ids at or past 2**63. Id lists
are right-padded 2-D tensors: every element equal to the pad is dropped, ``-1`` in INT64 (ids are never negative),
``2**64 - 1`` in UINT64 (the same bits), the empty string in BYTES.

Outputs, one row per ranked candidate, best first (``k`` rows): ``index`` INT64 (the candidate's row in the input
tensors), ``score`` FP32 (the blended score) and ``score_<head>`` FP32 per head.

Request ``parameters``: ``k`` (integer, default 50) and ``blend.<head>`` (number) per head; naming any head
replaces the manifest's default weights (a head not named weighs 0), as ``"blend"`` does in ``/v1/rank``. The
answer's ``parameters`` carry the epoch: ``dense_version`` and ``sparse_seq.<producer>`` per producer.

A request becomes the same columnar document ``/v1/rank`` takes, so both are ranked by the same code
(``Services.rank``; ``oip_model.infer`` runs a request end to end).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from liverank.serving.errors import InferenceRequestInvalid
from liverank.serving.oip_tensors import Tensor
from liverank.serving.ranker import RankResult
from liverank.store.manifest import Feature, Manifest

PAD_INT64 = -1
PAD_UINT64 = 2**64 - 1
PAD_BYTES = b""
BLEND_PREFIX = "blend."
_INT_DATATYPES = ("INT64", "UINT64")


@dataclass(frozen=True)
class InferPlan:
    """The columnar ranking document of one request and what its answer should hold."""

    doc: dict[str, Any]
    outputs: tuple[str, ...]  # in the order asked for (all, when the request names none)
    binary: frozenset[str]  # outputs to send as binary data


def output_names(manifest: Manifest) -> tuple[str, ...]:
    return ("index", "score", *(f"score_{head.name}" for head in manifest.heads))


def model_metadata(manifest: Manifest) -> dict[str, Any]:
    """The protocol's model metadata response for the live model."""
    inputs = [{"name": f.name, "datatype": _id_datatype(manifest, f), "shape": _shape(f)} for f in manifest.features]
    outputs = [{"name": "index", "datatype": "INT64", "shape": [-1]}]
    outputs += [{"name": name, "datatype": "FP32", "shape": [-1]} for name in output_names(manifest)[1:]]
    return {
        "name": manifest.model,
        "versions": [manifest.version],
        "platform": "liverank",
        "inputs": inputs,
        "outputs": outputs,
    }


def _id_datatype(manifest: Manifest, feature: Feature) -> str:
    if feature.kind == "numeric" or feature.slot is None:
        return "FP32"
    return "BYTES" if manifest.slot(feature.slot).id_kind in ("str", "str_hash") else "INT64"


def _shape(feature: Feature) -> list[int]:
    rows = 1 if feature.side == "user" else -1
    return [rows, -1] if feature.kind == "id_list" else [rows]


def plan_request(manifest: Manifest, header: dict[str, Any], inputs: dict[str, Tensor]) -> InferPlan:
    """The ranking document for a decoded request, with every tensor checked against the live manifest."""
    unknown = sorted(set(inputs) - {f.name for f in manifest.features})
    if unknown:
        raise InferenceRequestInvalid(
            f"unknown inputs: {unknown} (the live model reads: {[f.name for f in manifest.features]})"
        )
    missing = [f.name for f in manifest.features if f.name not in inputs]
    if missing:
        raise InferenceRequestInvalid(f"missing inputs: {missing}")
    user = {f.name: _user_value(f, inputs[f.name]) for f in manifest.user_features}
    candidates = {f.name: _candidate_column(f, inputs[f.name]) for f in manifest.candidate_features}
    doc: dict[str, Any] = {"user": user, "candidates": candidates}
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InferenceRequestInvalid("'parameters' must be an object")
    if "k" in parameters:
        doc["k"] = parameters["k"]
    blend = {key[len(BLEND_PREFIX) :]: value for key, value in parameters.items() if key.startswith(BLEND_PREFIX)}
    if blend:
        doc["blend"] = blend
    outputs, binary = _requested_outputs(manifest, header, parameters)
    return InferPlan(doc, outputs, binary)


def _requested_outputs(
    manifest: Manifest, header: dict[str, Any], parameters: dict[str, Any]
) -> tuple[tuple[str, ...], frozenset[str]]:
    known = output_names(manifest)
    all_binary = parameters.get("binary_data_output") is True
    asked = header.get("outputs")
    if asked is None:
        return known, frozenset(known) if all_binary else frozenset()
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise InferenceRequestInvalid("'outputs' must be a list of objects with a 'name'")
    names = tuple(o["name"] for o in asked)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InferenceRequestInvalid(f"unknown outputs: {unknown} (the model produces: {list(known)})")
    binary = {
        o["name"]
        for o in asked
        if all_binary or (isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True)
    }
    return names, frozenset(binary)


def _user_value(feature: Feature, tensor: Tensor) -> Any:
    values = tensor.values
    what = f"input {feature.name!r}"
    if feature.kind == "id_list":
        if values.ndim != 2 or values.shape[0] != 1:
            raise InferenceRequestInvalid(
                f"{what}: an id list of the user is a [1, n] tensor, got {list(values.shape)}"
            )
        return _id_lists(feature, tensor)[0]
    if values.size != 1:
        raise InferenceRequestInvalid(f"{what}: a user feature is a [1] tensor, got {list(values.shape)}")
    return _scalars(feature, tensor)[0]


def _candidate_column(feature: Feature, tensor: Tensor) -> list[Any]:
    values = tensor.values
    what = f"input {feature.name!r}"
    if feature.kind == "id_list":
        if values.ndim != 2:
            raise InferenceRequestInvalid(
                f"{what}: candidate id lists are an [n, max_len] tensor, got {list(values.shape)}"
            )
        return _id_lists(feature, tensor)
    if values.ndim != 1:
        raise InferenceRequestInvalid(f"{what}: a candidate feature is an [n] tensor, got {list(values.shape)}")
    return _scalars(feature, tensor)


def _check_datatype(feature: Feature, tensor: Tensor) -> None:
    allowed = ("FP32",) if feature.kind == "numeric" else (*_INT_DATATYPES, "BYTES")
    if tensor.datatype not in allowed:
        raise InferenceRequestInvalid(
            f"input {feature.name!r}: datatype {tensor.datatype} is not accepted (use one of {list(allowed)})"
        )


def _scalars(feature: Feature, tensor: Tensor) -> list[Any]:
    _check_datatype(feature, tensor)
    if tensor.datatype == "BYTES":
        return [_text(feature, v) for v in tensor.values.ravel()]
    return list(tensor.values.ravel().tolist())


def _id_lists(feature: Feature, tensor: Tensor) -> list[list[Any]]:
    """Padded rows of ids as the ragged lists of the columnar document (pads dropped)."""
    _check_datatype(feature, tensor)
    values = tensor.values
    if tensor.datatype == "BYTES":
        return [[_text(feature, v) for v in row if v != PAD_BYTES] for row in values]
    pad = PAD_INT64 if tensor.datatype == "INT64" else PAD_UINT64
    keep = values != pad
    if keep.all():
        return list(values.tolist())
    flat = iter(values[keep].tolist())
    return [list(islice(flat, n)) for n in keep.sum(axis=1).tolist()]


def _text(feature: Feature, value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise InferenceRequestInvalid(f"input {feature.name!r}: BYTES ids must be UTF-8 text") from exc


def response_outputs(manifest: Manifest, result: RankResult, plan: InferPlan) -> list[tuple[str, str, Any]]:
    """The answer's tensors, in the order the request asked for them."""
    tensors: dict[str, tuple[str, np.ndarray[Any, Any]]] = {
        "index": ("INT64", result.top.astype(np.int64)),
        "score": ("FP32", result.scores.astype(np.float32, copy=False)),
    }
    missing = np.full(len(result.top), np.nan, dtype=np.float32)
    for head in manifest.heads:
        # .get: a bundle swapped in between planning and ranking may have other heads.
        tensors[f"score_{head.name}"] = ("FP32", result.heads.get(head.name, missing))
    return [(name, *tensors[name]) for name in plan.outputs]


def epoch_parameters(result: RankResult) -> dict[str, Any]:
    """The epoch of an answer as protocol parameters (flat: parameter values are scalars)."""
    return {
        "dense_version": result.dense_version,
        **{f"sparse_seq.{producer}": seq for producer, seq in sorted(result.sparse_seq.items())},
    }
