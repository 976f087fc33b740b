"""The Open Inference Protocol v2 routes against a real server: the JSON shapes per endpoint, the binary tensor
extension, tritonclient, and scores identical to /v1/rank's for the same inputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from liverank.serving.oip import PAD_INT64
from tests.serving.conftest import ADMIN, LiveServer, delta_bytes, manifest_of, rank_body

MODEL = "synthetic-tiny"


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def triton_client(server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def padded(lists: list[list[int]]) -> np.ndarray[Any, np.dtype[np.int64]]:
    width = max((len(row) for row in lists), default=0) or 1
    out = np.full((len(lists), width), PAD_INT64, dtype=np.int64)
    for i, row in enumerate(lists):
        out[i, : len(row)] = row
    return out


def tensors_of(body: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """A /v1/rank body as OIP input tensors (tiny preset: ids and id lists only)."""
    user, cands = body["user"], body["candidates"]
    return {
        "user_id": np.asarray([user["user_id"]], dtype=np.int64),
        "hist_item_ids": padded([user["hist_item_ids"]]),
        "item_id": np.asarray(cands["item_id"], dtype=np.int64),
        "author_id": np.asarray(cands["author_id"], dtype=np.int64),
        "tags": padded(cands["tags"]),
    }


def json_inputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "shape": list(arr.shape), "datatype": "INT64", "data": arr.ravel().tolist()}
        for name, arr in tensors_of(body).items()
    ]


def triton_inputs(body: dict[str, Any], *, binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, arr in tensors_of(body).items():
        tensor = triton.InferInput(name, list(arr.shape), "INT64")
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    return inputs


def v1_scores(http: httpx.Client, body: dict[str, Any]) -> tuple[list[int], np.ndarray[Any, Any], dict[str, Any]]:
    answer = http.post("/v1/rank", json=body)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    return [it["index"] for it in doc["items"]], np.asarray([it["score"] for it in doc["items"]], np.float32), doc


def test_server_metadata(http: httpx.Client) -> None:
    answer = http.get("/v2")
    assert answer.status_code == 200
    doc = answer.json()
    assert set(doc) == {"name", "version", "extensions"}
    assert doc["name"] == "liverank"
    assert isinstance(doc["version"], str)
    assert "binary_tensor_data" in doc["extensions"]


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
def test_server_health(http: httpx.Client, path: str) -> None:
    answer = http.get(path)
    assert answer.status_code == 200
    assert answer.content == b""


def test_model_metadata_lists_one_input_per_feature(server: LiveServer, http: httpx.Client) -> None:
    manifest = manifest_of(server)
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/{manifest.version}"):
        answer = http.get(path)
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["name"] == MODEL
        assert doc["versions"] == [manifest.version]
        assert isinstance(doc["platform"], str)
        assert [i["name"] for i in doc["inputs"]] == [f.name for f in manifest.features]
        by_name = {i["name"]: i for i in doc["inputs"]}
        assert by_name["user_id"] == {"name": "user_id", "datatype": "INT64", "shape": [1]}
        assert by_name["hist_item_ids"]["shape"] == [1, -1]
        assert by_name["item_id"]["shape"] == [-1]
        assert by_name["tags"] == {"name": "tags", "datatype": "INT64", "shape": [-1, -1]}
        outputs = {o["name"]: o for o in doc["outputs"]}
        assert outputs["index"]["datatype"] == "INT64"
        assert {"score", *(f"score_{h.name}" for h in manifest.heads)} <= set(outputs)
        assert all(outputs[name]["datatype"] == "FP32" for name in outputs if name != "index")


@pytest.mark.parametrize(
    "path", ["/v2/models/other-model", f"/v2/models/{MODEL}/versions/999", "/v2/models/other-model/ready"]
)
def test_unknown_model_or_version_is_404_with_the_protocol_error_body(http: httpx.Client, path: str) -> None:
    answer = http.get(path)
    assert answer.status_code == 404
    assert set(answer.json()) == {"error"}
    assert "not served" in answer.json()["error"] or "no live version" in answer.json()["error"]


def test_model_ready(server: LiveServer, http: httpx.Client) -> None:
    version = manifest_of(server).version
    for path in (f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/{version}/ready"):
        answer = http.get(path)
        assert answer.status_code == 200
        assert answer.content == b""


def test_infer_json_shapes_and_the_same_scores_as_v1_rank(server: LiveServer, http: httpx.Client) -> None:
    body = rank_body(n=30, k=7, seed=3)
    indices, scores, v1 = v1_scores(http, body)
    request = {"id": "req-1", "inputs": json_inputs(body), "parameters": {"k": 7}}
    answer = http.post(f"/v2/models/{MODEL}/infer", json=request)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    doc = answer.json()
    assert doc["model_name"] == MODEL
    assert doc["model_version"] == manifest_of(server).version
    assert doc["id"] == "req-1"
    assert doc["parameters"]["dense_version"] == v1["epoch"]["dense_version"]
    outputs = {o["name"]: o for o in doc["outputs"]}
    for out in doc["outputs"]:
        assert set(out) == {"name", "datatype", "shape", "data"}
        assert out["shape"] == [7]
    assert outputs["index"]["data"] == indices
    assert np.array_equal(np.asarray(outputs["score"]["data"], np.float32), scores)
    for head in manifest_of(server).heads:
        v1_head = np.asarray([it["heads"][head.name] for it in v1["items"]], np.float32)
        assert np.array_equal(np.asarray(outputs[f"score_{head.name}"]["data"], np.float32), v1_head)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_ranks_like_v1_rank(
    http: httpx.Client, triton_client: triton.InferenceServerClient, binary: bool
) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL)
    assert triton_client.get_model_metadata(MODEL)["name"] == MODEL
    body = rank_body(n=40, k=10, seed=5)
    body["blend"] = {"click": 0.25, "finish": 1.5}
    indices, scores, _ = v1_scores(http, body)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("index", "score")]
    result = triton_client.infer(
        MODEL,
        triton_inputs(body, binary=binary),
        outputs=outputs,
        parameters={"k": 10, "blend.click": 0.25, "blend.finish": 1.5},
    )
    assert result.as_numpy("index").tolist() == indices
    assert np.array_equal(result.as_numpy("score"), scores)


def test_tritonclient_default_call_gets_every_output_as_binary(
    server: LiveServer, triton_client: triton.InferenceServerClient
) -> None:
    body = rank_body(n=12, k=4)
    result = triton_client.infer(MODEL, triton_inputs(body, binary=True), parameters={"k": 4})
    response = result.get_response()
    assert all("binary_data_size" in out["parameters"] for out in response["outputs"])
    for head in manifest_of(server).heads:
        assert result.as_numpy(f"score_{head.name}").shape == (4,)
    assert result.as_numpy("index").dtype == np.int64


def test_the_answer_carries_the_epoch_after_a_delta(server: LiveServer, http: httpx.Client) -> None:
    schema = manifest_of(server).schema_hash
    pushed = http.post(
        "/admin/deltas?wait=visible", content=delta_bytes(schema, 1, "item_id", [1, 2], 0.5), headers=ADMIN
    )
    assert pushed.status_code == 200, pushed.text
    answer = http.post(f"/v2/models/{MODEL}/infer", json={"inputs": json_inputs(rank_body(n=5, k=2))})
    assert answer.status_code == 200, answer.text
    assert answer.json()["parameters"]["sparse_seq.trainer"] == 1


def test_tritonclient_sees_bad_input_as_a_4xx(triton_client: triton.InferenceServerClient) -> None:
    inputs = triton_inputs(rank_body(n=5), binary=True)[:-1]  # no "tags"
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer(MODEL, inputs)
    assert caught.value.status() == "422"
    assert "missing inputs: ['tags']" in caught.value.message()


@pytest.mark.parametrize(
    ("mutate", "status", "message"),
    [
        (lambda r: r["inputs"][2].update(datatype="FP32"), 422, "datatype FP32 is not accepted"),
        (lambda r: r["inputs"][0].update(shape=[2]), 422, "1 data elements for shape [2]"),
        (lambda r: r["inputs"].append({**r["inputs"][0], "name": "nope"}), 422, "unknown inputs"),
        (lambda r: r["parameters"].update(k=0), 422, "'k' must be a positive integer"),
        (lambda r: r["parameters"].update({"blend.nope": 1.0}), 422, "unknown heads"),
        (lambda r: r.update(outputs=[{"name": "logits"}]), 422, "unknown outputs"),
        (lambda r: r["inputs"][2].update(data=[-5, 1, 2, 3, 4]), 422, "ids must be integers in 0..2**64-1"),
    ],
)
def test_bad_infer_requests_get_the_protocol_error_body(
    http: httpx.Client, mutate: Any, status: int, message: str
) -> None:
    request: dict[str, Any] = {"inputs": json_inputs(rank_body(n=5)), "parameters": {}}
    mutate(request)
    answer = http.post(f"/v2/models/{MODEL}/infer", json=request)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}
    assert message in answer.json()["error"]


def test_a_binary_header_length_past_the_body_is_refused(http: httpx.Client) -> None:
    answer = http.post(
        f"/v2/models/{MODEL}/infer", content=b'{"inputs": []}', headers={"Inference-Header-Content-Length": "999"}
    )
    assert answer.status_code == 422
    assert "Inference-Header-Content-Length" in answer.json()["error"]


def test_infer_on_the_versioned_path_and_an_unknown_version(server: LiveServer, http: httpx.Client) -> None:
    request = {"inputs": json_inputs(rank_body(n=5, k=2))}
    version = manifest_of(server).version
    assert http.post(f"/v2/models/{MODEL}/versions/{version}/infer", json=request).status_code == 200
    answer = http.post(f"/v2/models/{MODEL}/versions/0/infer", json=request)
    assert answer.status_code == 404
    assert "no live version '0'" in answer.json()["error"]


def test_latency_is_labelled_by_route_template(http: httpx.Client) -> None:
    assert http.post(f"/v2/models/{MODEL}/infer", json={"inputs": json_inputs(rank_body(n=5, k=2))}).status_code == 200
    assert http.get("/no/such/path").status_code == 404
    exposition = http.get("/metrics").text
    assert 'liverank_request_duration_seconds_count{route="/v2/models/{name}/infer",status="200"} 1.0' in exposition
    assert 'route="other",status="404"' in exposition
    assert MODEL not in "".join(line for line in exposition.splitlines() if "request_duration" in line)
