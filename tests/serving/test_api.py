"""The HTTP API against a real server: ranking, pushing deltas, bundles, auth, probes, and the bad-input table."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import orjson
import pytest

from tests.serving.conftest import ADMIN, DIM, LiveServer, delta_bytes, delta_json, manifest_of, rank_body


def test_rank_returns_top_k_sorted_with_epoch_and_stats(server: LiveServer) -> None:
    with server.client() as client:
        answer = client.post("/v1/rank", json=rank_body(n=30, k=7))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 7
    assert scores == sorted(scores, reverse=True)
    assert {item["index"] for item in body["items"]} <= set(range(30))
    assert all(set(item["heads"]) == {"click", "finish", "like"} for item in body["items"])
    assert all(item["id"] == item["index"] for item in body["items"])  # item_id column is 0..29
    assert body["epoch"] == {"dense_version": "1", "sparse_seq": {}}
    assert body["stats"]["unseen_ids"]["item_id"] > 0


def test_blend_weights_change_the_order_of_scores(server: LiveServer) -> None:
    with server.client() as client:
        click = client.post("/v1/rank", json={**rank_body(n=30, k=30), "blend": {"click": 1.0}}).json()
        like = client.post("/v1/rank", json={**rank_body(n=30, k=30), "blend": {"like": 1.0}}).json()
    assert [i["score"] for i in click["items"]] == [i["heads"]["click"] for i in click["items"]]
    assert [i["score"] for i in like["items"]] == [i["heads"]["like"] for i in like["items"]]


def test_a_pushed_delta_is_visible_when_wait_visible_answers(server: LiveServer) -> None:
    schema = manifest_of(server).schema_hash
    with server.client() as client:
        before = client.post("/v1/rank", json=rank_body(n=10, k=10)).json()
        pushed = client.post(
            "/admin/deltas?wait=visible", content=delta_bytes(schema, 1, "item_id", [3], 2.0), headers=ADMIN
        )
        assert pushed.status_code == 200, pushed.text
        assert pushed.json()["status"] == "visible"
        assert pushed.json()["epoch"]["sparse_seq"] == {"trainer": 1}
        after = client.post("/v1/rank", json=rank_body(n=10, k=10)).json()
    assert after["epoch"]["sparse_seq"] == {"trainer": 1}
    score = {i["index"]: i["score"] for i in before["items"]}
    changed = {i["index"]: i["score"] for i in after["items"]}
    assert changed[3] != score[3]
    assert all(changed[i] == score[i] for i in score if i != 3)


def test_deltas_are_acknowledged_deduplicated_and_gaps_refused(server: LiveServer) -> None:
    schema = manifest_of(server).schema_hash
    with server.client() as client:
        first = client.post("/admin/deltas", content=delta_bytes(schema, 1, "item_id", [1], 1.0), headers=ADMIN)
        assert (first.status_code, first.json()["status"], first.json()["seq"]) == (202, "queued", 1)
        again = client.post("/admin/deltas", content=delta_bytes(schema, 1, "item_id", [1], 1.0), headers=ADMIN)
        assert (again.status_code, again.json()["status"]) == (200, "duplicate")
        gap = client.post("/admin/deltas", content=delta_bytes(schema, 5, "item_id", [1], 1.0), headers=ADMIN)
        assert gap.status_code == 409
        assert (gap.json()["code"], gap.json()["expected_seq"]) == ("sequence_gap", 2)
        as_json = client.post(
            "/admin/deltas?wait=visible", content=delta_json(schema, 2, "item_id", [9], [[0.5] * DIM]), headers=ADMIN
        )
        assert as_json.status_code == 200, as_json.text
        status = client.get("/admin/status", headers=ADMIN).json()
    assert status["applied_seq"] == {"trainer": 2}
    assert status["inbox_depth"] == 0
    assert status["push_to_visible"]["count"] == 2
    assert status["store"]["rows_by_slot"]["item_id"] == 2


def _state(client: Any) -> tuple[Any, ...]:
    status = client.get("/admin/status", headers=ADMIN).json()
    ranked = client.post("/v1/rank", json=rank_body(n=10, k=10)).json()
    return status["epoch"], status["store"]["rows_by_slot"], status["inbox_depth"], ranked["items"]


def _bad_deltas(schema: str) -> list[tuple[str, bytes, int, str]]:
    good = delta_bytes(schema, 1, "item_id", [1], 1.0)
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF
    return [
        ("truncated body", good[:-7], 422, "checksum_mismatch"),  # the CRC is what notices a short body
        ("truncated header", good[:20], 422, "delta_corrupt"),
        ("checksum", bytes(flipped), 422, "checksum_mismatch"),
        ("garbage", b"\x00\x01garbage", 422, "delta_corrupt"),
        ("unknown slot", delta_json(schema, 1, "nope", [1], [[1.0] * DIM]), 422, "unknown_slot"),
        ("wrong dim", delta_json(schema, 1, "item_id", [1], [[1.0] * (DIM + 1)]), 422, "dim_mismatch"),
        ("nan", delta_json(schema, 1, "item_id", [1], [[1.0] * (DIM - 1) + [float("nan")]]), 422, "delta_corrupt"),
        (
            "inf",
            b'{"producer":"trainer","seq":1,"schema_hash":"'
            + schema.encode()
            + b'","slots":{"item_id":{"ids":[1],"values":[[1e39,0,0,0,0,0,0,0]]}}}',
            422,
            "non_finite_values",
        ),
        ("negative id", delta_json(schema, 1, "item_id", [-5], [[1.0] * DIM]), 422, "id_out_of_range"),
        ("id too big", delta_json(schema, 1, "item_id", [2**64], [[1.0] * DIM]), 422, "delta_corrupt"),
        ("string id", delta_json(schema, 1, "item_id", ["x"], [[1.0] * DIM]), 422, "id_out_of_range"),
        ("wrong schema", delta_bytes("other-schema", 1, "item_id", [1], 1.0), 409, "schema_mismatch"),
        ("format 2", b'{"format":2,"producer":"trainer","seq":1,"slots":{}}', 422, "unsupported_format"),
        ("seq 0", b'{"producer":"trainer","seq":0,"slots":{}}', 422, "delta_corrupt"),
        ("deep nesting", b"[" * 5000 + b"]" * 5000, 422, "delta_corrupt"),
    ]


def test_every_bad_delta_gets_a_clear_4xx_and_changes_nothing(server: LiveServer) -> None:
    schema = manifest_of(server).schema_hash
    with server.client() as client:
        before = _state(client)
        for case, payload, status, code in _bad_deltas(schema):
            answer = client.post("/admin/deltas", content=payload, headers=ADMIN)
            assert (answer.status_code, answer.json()["code"]) == (status, code), (case, answer.text)
            assert answer.json()["detail"], case
        assert _state(client) == before


def _bad_rank_bodies(n: int = 4) -> list[tuple[str, Any, str]]:
    good = rank_body(n=n)
    cands = good["candidates"]
    return [
        ("not json", b"{nope", "invalid_json"),
        ("not an object", [1, 2], "wrong_type"),
        ("unknown field", {**good, "extra": 1}, "unknown_feature"),
        ("unknown feature", {**good, "candidates": {**cands, "color": [1] * n}}, "unknown_feature"),
        ("missing feature", {**good, "candidates": {k: v for k, v in cands.items() if k != "tags"}}, "missing_feature"),
        ("missing user feature", {**good, "user": {"user_id": 1}}, "missing_feature"),
        ("ragged", {**good, "candidates": {**cands, "author_id": [1] * (n + 1)}}, "ragged_columns"),
        ("empty", {**good, "candidates": {k: [] for k in cands}}, "empty_candidates"),
        ("string id", {**good, "candidates": {**cands, "item_id": ["a"] * n}}, "wrong_type"),
        ("float id", {**good, "candidates": {**cands, "item_id": [1.5] * n}}, "wrong_type"),
        ("negative id", {**good, "candidates": {**cands, "item_id": [-1] * n}}, "wrong_type"),
        ("huge id", {**good, "candidates": {**cands, "item_id": [2**64] * n}}, "wrong_type"),
        ("list where id", {**good, "user": {**good["user"], "user_id": [1]}}, "wrong_type"),
        ("id where list", {**good, "candidates": {**cands, "tags": [1] * n}}, "wrong_type"),
        ("list too long", {**good, "user": {**good["user"], "hist_item_ids": list(range(500))}}, "limit_exceeded"),
        ("too many candidates", {**good, "candidates": {k: [v[0]] * 3000 for k, v in cands.items()}}, "limit_exceeded"),
        ("bad k", {**good, "k": 0}, "wrong_type"),
        ("k not int", {**good, "k": "5"}, "wrong_type"),
        ("unknown head", {**good, "blend": {"share": 1.0}}, "unknown_head"),
        ("bad weight", {**good, "blend": {"click": "x"}}, "wrong_type"),
        ("deep nesting", b"[" * 5000 + b"]" * 5000, "invalid_json"),
    ]


@pytest.mark.parametrize(("case", "body", "code"), _bad_rank_bodies(), ids=[c[0] for c in _bad_rank_bodies()])
def test_bad_rank_requests_get_a_clear_422(server: LiveServer, case: str, body: Any, code: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # stdlib: ids past 64 bits
    with server.client() as client:
        answer = client.post("/v1/rank", content=content, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code
    assert answer.json()["detail"]


def test_oversized_bodies_are_refused_with_413(server: LiveServer) -> None:
    limit = server.settings.max_rank_body_bytes
    with server.client() as client:
        answer = client.post("/v1/rank", content=b" " * (limit + 1), headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["code"]) == (413, "body_too_large")


def test_the_direct_rank_path_takes_only_post_v1_rank(server: LiveServer) -> None:
    """``POST /v1/rank`` skips FastAPI's stack (``routes_rank.DirectRank``); other methods and paths still reach the
    app, and ranked requests are timed under their route as before."""
    with server.client() as client:
        wrong_method = client.get("/v1/rank")
        wrong_path = client.post("/v1/rank/x", json=rank_body())
        ranked = client.post("/v1/rank", json=rank_body())
        text = client.get("/metrics").text
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    assert (wrong_path.status_code, wrong_path.json()["code"]) == (404, "not_found")
    assert ranked.status_code == 200, ranked.text
    assert ranked.headers["content-type"] == "application/json"
    assert int(ranked.headers["content-length"]) == len(ranked.content)
    assert 'liverank_request_duration_seconds_count{route="/v1/rank",status="200"}' in text


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 403, "forbidden"),
        ({"Authorization": "Basic x"}, 401, "unauthorized"),
    ],
)
def test_admin_endpoints_need_the_token(server: LiveServer, headers: dict[str, str], status: int, code: str) -> None:
    with server.client() as client:
        for method, path in [
            ("POST", "/admin/deltas"),
            ("POST", "/admin/bundles"),
            ("POST", "/admin/rollback"),
            ("GET", "/admin/status"),
        ]:
            answer = client.request(method, path, headers=headers, content=b"{}")
            assert (answer.status_code, answer.json()["code"]) == (status, code), path
        assert client.get("/admin/status", headers=ADMIN).status_code == 200


def test_bundle_upload_swaps_and_rollback_returns(server: LiveServer, tiny_bundle_v2: bytes) -> None:
    with server.client() as client:
        v1 = client.post("/v1/rank", json=rank_body()).json()
        up = client.post("/admin/bundles", content=tiny_bundle_v2, headers=ADMIN)
        assert up.status_code == 200, up.text
        assert up.json()["version"] == "2"
        v2 = client.post("/v1/rank", json=rank_body()).json()
        assert v2["epoch"]["dense_version"] == "2"
        assert [i["score"] for i in v2["items"]] != [i["score"] for i in v1["items"]]
        back = client.post("/admin/rollback", headers=ADMIN)
        assert back.status_code == 200, back.text
        again = client.post("/v1/rank", json=rank_body()).json()
        assert again["epoch"]["dense_version"] == "1"
        assert again["items"] == v1["items"]
        none_left = client.post("/admin/rollback", headers=ADMIN)
        assert (none_left.status_code, none_left.json()["code"]) == (409, "no_previous_bundle")


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_bad_bundles_are_refused_and_change_nothing(server: LiveServer, tiny_bundle_v2: bytes) -> None:
    manifest = (server.services.model_slot.current().bundle.source / "manifest.json").read_bytes()
    onnx_bytes = server.services.model_slot.current().bundle.onnx_bytes
    wider = orjson.loads(manifest)
    for slot in wider["slots"]:
        slot["dim"] = DIM * 2
    cases = [
        ("garbage", b"not a tar", 422, "invalid_bundle"),
        ("traversal", _archive({"../manifest.json": manifest, "dense.onnx": onnx_bytes}), 422, "unsafe_archive"),
        ("missing onnx", _archive({"manifest.json": manifest}), 422, "invalid_bundle"),
        ("bad onnx", _archive({"manifest.json": manifest, "dense.onnx": b"\x08\x01garbage"}), 422, "invalid_bundle"),
        ("bad manifest", _archive({"manifest.json": b"{}", "dense.onnx": onnx_bytes}), 422, "invalid_bundle"),
        ("too big", b"x" * (server.settings.max_bundle_bytes + 1), 413, "body_too_large"),
    ]
    with server.client() as client:
        before = _state(client)
        for case, payload, status, code in cases:
            answer = client.post("/admin/bundles", content=payload, headers=ADMIN)
            assert (answer.status_code, answer.json()["code"]) == (status, code), (case, answer.text)
        assert _state(client) == before
        assert len(client.get("/admin/status", headers=ADMIN).json()["bundles"]) == 1


def test_probes_and_metrics(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        client.post("/v1/rank", json=rank_body())
        text = client.get("/metrics").text
        model = client.get("/v1/model").json()
        missing = client.get("/nope")
    for name in [
        "liverank_request_duration_seconds_bucket",
        "liverank_lookup_duration_seconds_bucket",
        "liverank_dense_duration_seconds_bucket",
        "liverank_unseen_ids_total",
        "liverank_push_to_visible_seconds_bucket",
        "liverank_inbox_depth",
        "liverank_bundle_info",
        "liverank_store_rows",
    ]:
        assert name in text, name
    assert model["manifest"]["version"] == "1"
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
