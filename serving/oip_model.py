"""The live model served over the Open Inference Protocol: find it by name and version, and answer an inference
request's bytes with the answer's bytes. HTTP-free; ranking goes through ``Services.rank``, as /v1/rank does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from liverank.serving.errors import ModelNotFound
from liverank.serving.oip import epoch_parameters, plan_request, response_outputs
from liverank.serving.oip_tensors import decode_inputs, encode_outputs, split_body
from liverank.serving.services import Services
from liverank.store.manifest import Manifest


@dataclass(frozen=True)
class InferAnswer:
    """An inference answer: the JSON header, then (binary tensor data extension) the raw outputs asked for."""

    header: bytes
    binary: bytes


def live_manifest(services: Services, name: str, model_version: str | None) -> Manifest:
    """The live model's manifest if ``name`` (and ``model_version``, when given) name it; ``ModelNotFound`` if not."""
    manifest = services.model_slot.current().manifest
    if name != manifest.model:
        raise ModelNotFound(f"model {name!r} is not served here; the live model is {manifest.model!r}")
    if model_version is not None and model_version != manifest.version:
        raise ModelNotFound(
            f"model {name!r} has no live version {model_version!r}; the live one is {manifest.version!r}"
        )
    return manifest


def infer(
    services: Services, name: str, model_version: str | None, body: bytes, header_length: str | None
) -> InferAnswer:
    """Decode the tensors, rank with the one ranking path, encode the outputs (run it on a ranking thread)."""
    manifest = live_manifest(services, name, model_version)
    header, tail = split_body(body, header_length)
    plan = plan_request(manifest, header, decode_inputs(header, tail))
    result = services.rank(plan.doc)
    outputs, binary = encode_outputs(response_outputs(manifest, result, plan), set(plan.binary))
    answer: dict[str, Any] = {
        "model_name": manifest.model,
        "model_version": result.dense_version,
        "parameters": epoch_parameters(result),
        "outputs": outputs,
    }
    if isinstance(header.get("id"), str):
        answer["id"] = header["id"]
    return InferAnswer(orjson.dumps(answer), binary)
