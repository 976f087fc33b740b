"""Hostile input against a real server process: oversized and deeply nested bodies on every endpoint, huge
candidate lists, malformed ids, forged binary delta headers, hostile bundle archives through ``POST
/admin/bundles`` (links, oversize members, a decompression bomb, ONNX external data pointing outside the bundle),
and the admin token: never in a log line or an answer, compared in constant time.

Every answer must be a 4xx with the one error body (``{"detail", "code"}``) and must change nothing; never a 5xx.
The cases already in ``tests/serving/test_api.py`` (the bad-delta and bad-request tables, auth) are not repeated.
"""

from __future__ import annotations

import hmac
import inspect
import io
import json
import re
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from liverank.serving.api import auth
from liverank.store import SlotDelta, SparseDelta, encode_delta
from liverank.store.manifest import manifest_from_json
from tests.reliability.conftest import ADMIN, DIM, TOKEN, ServerProcess, build_bundle

RANK_LIMIT_BYTES = 256 * 1024
DELTA_LIMIT_BYTES = 1024 * 1024
BUNDLE_LIMIT_BYTES = 1024 * 1024
MAX_CANDIDATES = 2_000
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module, with small body limits, run from a directory that holds a weights file (the
    external-data cases point at it)."""
    root = tmp_path_factory.mktemp("hostile")
    cwd = root / "cwd"
    cwd.mkdir()
    server = ServerProcess(
        root / "data",
        build_bundle(root / "bundle", "1"),
        log_path=root / "server.log",
        env={
            "LIVERANK_MAX_RANK_BODY_BYTES": str(RANK_LIMIT_BYTES),
            "LIVERANK_MAX_DELTA_BODY_BYTES": str(DELTA_LIMIT_BYTES),
            "LIVERANK_MAX_BUNDLE_BYTES": str(BUNDLE_LIMIT_BYTES),
            "LIVERANK_MAX_CANDIDATES": str(MAX_CANDIDATES),
        },
        cwd=cwd,
        args=["--log-level", "debug"],
    )
    with server:
        server.start()
        yield server
        server.stop()
        assert "Traceback" not in server.log_text()
        assert "unexpected error" not in server.log_text()  # what the 500 handler logs


@pytest.fixture
def client(hostile: ServerProcess) -> Iterator[httpx.Client]:
    with hostile.client() as own:
        yield own


@pytest.fixture(scope="module")
def schema(hostile: ServerProcess) -> str:
    with hostile.client() as own:
        schema_hash: str = own.get("/v1/model").json()["manifest"]["schema_hash"]
    return schema_hash


def _state(client: httpx.Client) -> tuple[Any, ...]:
    status = client.get("/admin/status", headers=ADMIN).json()
    return (
        status["epoch"],
        status["store"]["rows_by_slot"],
        status["inbox_depth"],
        [b["bundle_id"] for b in status["bundles"]],
        status["quarantined_deltas"],
    )


def _refused(answer: httpx.Response, status: int, code: str | None = None) -> None:
    assert answer.status_code == status, answer.text[:500]
    body = answer.json()
    assert set(body) >= {"detail", "code"}, body
    assert body["detail"], body
    if code is not None:
        assert body["code"] == code, body


def _rank(n: int = 3, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user": {"user_id": 1, "hist_item_ids": [1, 2]},
        "candidates": {"item_id": list(range(n)), "author_id": [5] * n, "tags": [[1]] * n},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            body[section] = {**body[section], name: value}
        else:
            body[section] = value
    return body


def _nested_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


# --- oversized bodies -----------------------------------------------------------------------------------------


def _chunks(total_bytes: int, chunk_bytes: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total_bytes:
        yield b" " * min(chunk_bytes, total_bytes - sent)
        sent += chunk_bytes


@pytest.mark.parametrize(
    ("path", "limit", "headers"),
    [
        ("/v1/rank", RANK_LIMIT_BYTES, JSON),
        ("/admin/deltas", DELTA_LIMIT_BYTES, ADMIN),
        ("/admin/bundles", BUNDLE_LIMIT_BYTES, ADMIN),
    ],
)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_bodies_are_refused_on_every_endpoint_that_reads_one(
    client: httpx.Client, path: str, limit: int, headers: dict[str, str], declared: bool
) -> None:
    before = _state(client)
    # Chunked: no Content-Length to refuse early on; the server must count what arrives and stop at the limit.
    content: bytes | Iterator[bytes] = b" " * (limit + 1) if declared else _chunks(4 * limit)
    _refused(client.post(path, content=content, headers=headers), 413, "body_too_large")
    assert _state(client) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/v1/model"),
        ("GET", "/admin/status"),
        ("POST", "/admin/rollback"),
        ("GET", "/nope"),
    ],
)
def test_endpoints_without_a_body_ignore_a_huge_one(client: httpx.Client, method: str, path: str) -> None:
    answer = client.request(method, path, content=_chunks(16 * 1024 * 1024), headers=ADMIN)
    assert answer.status_code in (200, 404, 409), answer.text[:300]  # 409: rollback with nothing to go back to


# --- deeply nested JSON ---------------------------------------------------------------------------------------


def _deep_rank_bodies() -> list[Any]:
    deep = 100_000  # far past orjson's depth limit of 1024, under the body limit
    shallow = 900  # inside the parser's limit: the request checks must refuse it, without recursion trouble
    return [
        pytest.param(
            json.dumps(_rank()).replace("[0, 1, 2]", _nested_list(deep)),
            "invalid_json",
            id="candidate-column-100k-deep",
        ),
        pytest.param(
            json.dumps(_rank()).replace('"user_id": 1', '"user_id": ' + _nested_list(deep)),
            "invalid_json",
            id="user-id-100k-deep",
        ),
        pytest.param(
            json.dumps(_rank()).replace("[0, 1, 2]", f"[{_nested_list(shallow)}, 1, 2]"),
            "wrong_type",
            id="candidate-column-900-deep",
        ),
        pytest.param(
            json.dumps(_rank()).replace("[1, 2]", _nested_list(shallow)), "wrong_type", id="user-list-900-deep"
        ),
        pytest.param(
            json.dumps(_rank(n=3)).replace("[[1], [1], [1]]", "[" + _nested_list(shallow) + ", [1], [1]]"),
            "wrong_type",
            id="tags-row-900-deep",
        ),
        pytest.param(
            json.dumps({**_rank(), "blend": {"click": json.loads(_nested_list(shallow))}}),
            "wrong_type",
            id="blend-weight-900-deep",
        ),
        pytest.param(
            '{"candidates": ' + '{"a": ' * 30_000 + "1" + "}" * 30_000 + "}", "invalid_json", id="objects-30k-deep"
        ),
        pytest.param(json.dumps({**_rank(), "k": json.loads(_nested_list(shallow))}), "wrong_type", id="k-900-deep"),
    ]


@pytest.mark.parametrize(("body", "code"), _deep_rank_bodies())
def test_deeply_nested_rank_requests_are_refused(client: httpx.Client, body: str, code: str) -> None:
    _refused(client.post("/v1/rank", content=body.encode(), headers=JSON), 422, code)


@pytest.mark.parametrize(
    ("where", "depth"),
    [("ids", 100_000), ("values", 100_000), ("ids", 900), ("values", 900), ("tombstones", 900), ("slots", 100_000)],
)
def test_deeply_nested_json_deltas_are_refused(client: httpx.Client, schema: str, where: str, depth: int) -> None:
    slot: dict[str, Any] = {"ids": [1], "values": [[0.5] * DIM]}
    doc: dict[str, Any] = {"producer": "trainer", "seq": 1, "schema_hash": schema, "slots": {"item_id": slot}}
    marker = "__DEEP__"
    if where == "slots":
        doc["slots"] = marker
    else:
        slot[where] = marker
    body = json.dumps(doc).replace(f'"{marker}"', _nested_list(depth))
    before = _state(client)
    _refused(client.post("/admin/deltas", content=body.encode(), headers={**ADMIN, **JSON}), 422)
    assert _state(client) == before


# --- huge candidate lists -------------------------------------------------------------------------------------


def test_the_most_candidates_allowed_are_ranked_and_one_more_is_refused(client: httpx.Client) -> None:
    full = client.post("/v1/rank", json={**_rank(n=MAX_CANDIDATES), "k": 1000})
    assert full.status_code == 200, full.text[:300]
    assert len(full.json()["items"]) == 1000
    _refused(client.post("/v1/rank", json=_rank(n=MAX_CANDIDATES + 1)), 422, "limit_exceeded")


def test_huge_candidate_lists_are_refused_quickly(client: httpx.Client) -> None:
    # 18,000 candidates in a body just under the limit: refused on the count, before any id is looked up.
    n = 18_000
    body = json.dumps(
        {
            "user": {"user_id": 1, "hist_item_ids": []},
            "candidates": {"item_id": list(range(n)), "author_id": [1] * n, "tags": [[]] * n},
        }
    ).encode()
    assert len(body) < RANK_LIMIT_BYTES
    answer = client.post("/v1/rank", content=body, headers=JSON)
    _refused(answer, 422, "limit_exceeded")
    assert answer.elapsed.total_seconds() < 2


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"candidates__tags": [list(range(20_000))] + [[1]] * 2}, "limit_exceeded"),  # one huge id list
        ({"user__hist_item_ids": list(range(20_000))}, "limit_exceeded"),
        ({"k": 10**30}, "wrong_type"),  # past int64: not an integer the server can take
        ({"k": 10**9}, "limit_exceeded"),
        ({"candidates__item_id": [1, 2]}, "ragged_columns"),
    ],
    ids=["tags-20k", "history-20k", "k-1e30", "k-1e9", "short-column"],
)
def test_oversize_lists_and_k_are_refused(client: httpx.Client, overrides: dict[str, Any], code: str) -> None:
    _refused(client.post("/v1/rank", content=json.dumps(_rank(**overrides)).encode(), headers=JSON), 422, code)


# --- malformed ids --------------------------------------------------------------------------------------------

RANK_IDS = [
    ("true", "[true, false, true]"),
    ("id-and-true", "[5, true, 6]"),
    ("null", "[null, 1, 2]"),
    ("digit-string", '["12", "13", "14"]'),
    ("object", '[{"id": 1}, 2, 3]'),
    ("float-integral", "[1.0, 2.0, 3.0]"),
    ("1e300", "[1e300, 1, 2]"),
    ("1e400", "[1e400, 1, 2]"),
    ("negative-zero-float", "[-0.0, 1, 2]"),
    ("nan-literal", "[NaN, 1, 2]"),
    ("empty-string", '["", "", ""]'),
    ("nested", "[[1], [2], [3]]"),
    ("mixed-nested", "[1, [2], 3]"),
    ("past-u64", f"[{2**64 + 1}, {2**70}, 1]"),
    ("huge-negative", f"[-{2**63}, 1, 2]"),
]


@pytest.mark.parametrize(("case", "column"), RANK_IDS, ids=[c for c, _ in RANK_IDS])
def test_malformed_candidate_ids_are_refused(client: httpx.Client, case: str, column: str) -> None:
    body = json.dumps(_rank(n=3)).replace("[0, 1, 2]", column)
    answer = client.post("/v1/rank", content=body.encode(), headers=JSON)
    _refused(answer, 422)
    assert answer.json()["code"] in {"wrong_type", "invalid_json"}, (case, answer.text)


@pytest.mark.parametrize("value", ["true", "null", '"7"', "1.5", "[1]", '{"a": 1}', str(2**64), "-1"])
def test_malformed_user_ids_are_refused(client: httpx.Client, value: str) -> None:
    body = json.dumps(_rank()).replace('"user_id": 1', f'"user_id": {value}')
    _refused(client.post("/v1/rank", content=body.encode(), headers=JSON), 422, "wrong_type")


def test_the_largest_ids_are_accepted_exactly(client: httpx.Client) -> None:
    top = 2**64 - 1
    answer = client.post(
        "/v1/rank", content=json.dumps(_rank(n=3)).replace("[0, 1, 2]", f"[{top}, {2**63}, 0]"), headers=JSON
    )
    assert answer.status_code == 200, answer.text
    assert {item["id"] for item in answer.json()["items"]} == {top, 2**63, 0}


DELTA_IDS = [
    ("true", "[true]", "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("null", "[null]", "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("float", "[1.5]", "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("nested", "[[1]]", "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("object", '[{"a": 1}]', "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("long-string", '["' + "x" * 5000 + '"]', "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("more-ids-than-values", "[1, 2]", "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("string-values", "[1]", '[["a", "b", "c", "d", "e", "f", "g", "h"]]'),
    ("null-values", "[1]", "[[null, 0, 0, 0, 0, 0, 0, 0]]"),
    ("flat-values", "[1]", "[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]"),
    ("ids-not-a-list", "7", "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    ("past-u64", f"[{2**80}]", "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]"),
    (
        "id-and-true",
        "[5, true]",
        "[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]",
    ),
]


@pytest.mark.parametrize(("case", "ids", "values"), DELTA_IDS, ids=[c for c, _, _ in DELTA_IDS])
def test_malformed_ids_in_json_deltas_are_refused(
    client: httpx.Client, schema: str, case: str, ids: str, values: str
) -> None:
    body = (
        f'{{"producer": "trainer", "seq": 1, "schema_hash": "{schema}", '
        f'"slots": {{"item_id": {{"ids": {ids}, "values": {values}}}}}}}'
    )
    before = _state(client)
    _refused(client.post("/admin/deltas", content=body.encode(), headers={**ADMIN, **JSON}), 422)
    assert _state(client) == before


def test_booleans_as_json_delta_values_are_refused(client: httpx.Client, schema: str) -> None:
    body = json.dumps(
        {
            "producer": "bool-values",
            "seq": 1,
            "schema_hash": schema,
            "slots": {"item_id": {"ids": [1], "values": [[True] + [0] * (DIM - 1)]}},
        }
    ).encode()
    # ?wait=visible: if the delta is taken, it is applied before the next test looks at the store.
    _refused(client.post("/admin/deltas?wait=visible", content=body, headers={**ADMIN, **JSON}), 422)


@pytest.mark.parametrize(
    "producer", ["", "x" * 129, "a\x00b", "é" * 65], ids=["empty", "129-bytes", "nul", "130-utf8-bytes"]
)
def test_hostile_producer_names_are_refused(client: httpx.Client, schema: str, producer: str) -> None:
    body = json.dumps({"producer": producer, "seq": 1, "schema_hash": schema, "slots": {}}).encode()
    _refused(client.post("/admin/deltas", content=body, headers={**ADMIN, **JSON}), 422, "delta_corrupt")


# --- forged binary delta headers (a valid checksum over a hostile header) -------------------------------------


def _forged(header: Any, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    lead = b"LRDL" + struct.pack("<HHI", 1, 0, len(raw))
    crc = zlib.crc32(data, zlib.crc32(raw, zlib.crc32(lead)))
    return lead + struct.pack("<I", crc) + raw + data


def _slot_header(**overrides: Any) -> dict[str, Any]:
    entry = {
        "name": "item_id",
        "n": 1,
        "dim": DIM,
        "dtype": "float32",
        "id_kind": "int",
        "ids_bytes": 8,
        "n_tombstones": 0,
        "tombstone_bytes": 0,
    }
    return {**entry, **overrides}


def _forged_cases(schema: str) -> list[tuple[str, bytes]]:
    head = {"producer": "trainer", "seq": 1, "schema_hash": schema, "created_at_ms": 0}
    one_row = struct.pack("<Q", 1) + np.full(DIM, 0.5, dtype="<f4").tobytes() + struct.pack("<q", 0)
    return [
        ("n-2**62", _forged({**head, "slots": [_slot_header(n=2**62, ids_bytes=2**65)]}, one_row)),
        ("n-negative", _forged({**head, "slots": [_slot_header(n=-1)]}, one_row)),
        ("n-float", _forged({**head, "slots": [_slot_header(n=1.5)]}, one_row)),
        ("n-string", _forged({**head, "slots": [_slot_header(n="1")]}, one_row)),
        ("n-true", _forged({**head, "slots": [_slot_header(n=True)]}, one_row)),
        ("dim-0", _forged({**head, "slots": [_slot_header(dim=0)]}, one_row)),
        ("dim-2**40", _forged({**head, "slots": [_slot_header(dim=2**40)]}, one_row)),
        ("dtype-float64", _forged({**head, "slots": [_slot_header(dtype="float64")]}, one_row)),
        ("dtype-object", _forged({**head, "slots": [_slot_header(dtype="object")]}, one_row)),
        ("id-kind-bogus", _forged({**head, "slots": [_slot_header(id_kind="pickle")]}, one_row)),
        ("ids-bytes-lie", _forged({**head, "slots": [_slot_header(ids_bytes=4)]}, one_row)),
        (
            "str-ids-lengths-past-end",
            _forged(
                {**head, "slots": [_slot_header(id_kind="str", ids_bytes=8)]}, struct.pack("<I", 2**31) + one_row[4:]
            ),
        ),
        (
            "tombstones-2**62",
            _forged({**head, "slots": [_slot_header(n_tombstones=2**62, tombstone_bytes=8)]}, one_row),
        ),
        ("trailing-bytes", _forged({**head, "slots": [_slot_header()]}, one_row + b"\x00" * 16)),
        ("duplicate-slot", _forged({**head, "slots": [_slot_header(), _slot_header()]}, one_row * 2)),
        ("5k-slots", _forged({**head, "slots": [_slot_header(name=f"s{i}", n=0, ids_bytes=0) for i in range(5_000)]})),
        ("header-a-list", _forged([1, 2, 3])),
        ("header-not-json", _forged(b"\xff\xfe not json")),
        ("header-deep", _forged(_nested_list(100_000).encode())),
        ("seq-2**63", _forged({**head, "seq": 2**63, "slots": [_slot_header()]}, one_row)),
        ("seq-negative", _forged({**head, "seq": -5, "slots": [_slot_header()]}, one_row)),
        ("schema-not-a-string", _forged({**head, "schema_hash": {"x": 1}, "slots": [_slot_header()]}, one_row)),
        ("created-at-huge", _forged({**head, "created_at_ms": 2**70, "slots": [_slot_header()]}, one_row)),
        (
            "nan-values",
            _forged(
                {**head, "slots": [_slot_header()]},
                one_row[:8] + np.full(DIM, np.nan, dtype="<f4").tobytes() + one_row[-8:],
            ),
        ),
        ("header-len-past-body", b"LRDL" + struct.pack("<HHII", 1, 0, 2**31, 0) + b"{}"),
    ]


def test_forged_binary_delta_headers_are_refused(client: httpx.Client, schema: str) -> None:
    before = _state(client)
    outcomes = {}
    for case, payload in _forged_cases(schema):
        answer = client.post("/admin/deltas", content=payload, headers=ADMIN)
        outcomes[case] = (answer.status_code, answer.json().get("code"))
        assert answer.status_code in (409, 422), (case, answer.text[:300])
        assert answer.json()["detail"], case
    assert _state(client) == before, outcomes


# --- hostile bundle archives through the HTTP endpoint --------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _external_data_onnx(manifest_bytes: bytes, location: str, weights_path: Path) -> bytes:
    """A model valid in every other way whose one weight lives in an external file at ``location``."""
    manifest = manifest_from_json(manifest_bytes)
    weights = np.ones((manifest.candidate_width, 1), dtype=np.float32)
    weights_path.write_bytes(weights.tobytes())
    tensor = numpy_helper.from_array(weights, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(weights.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [manifest.candidate_input, "w"], ["z"]),
            helper.make_node("Sigmoid", ["z"], [manifest.heads[0].output]),
            *(helper.make_node("Identity", [manifest.heads[0].output], [h.output]) for h in manifest.heads[1:]),
        ],
        "external",
        [
            helper.make_tensor_value_info(manifest.user_input, TensorProto.FLOAT, [1, manifest.user_width]),
            helper.make_tensor_value_info(manifest.candidate_input, TensorProto.FLOAT, ["n", manifest.candidate_width]),
        ],
        [helper.make_tensor_value_info(h.output, TensorProto.FLOAT, ["n", 1]) for h in manifest.heads],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _bundle_cases(hostile: ServerProcess, root: Path) -> list[tuple[str, bytes, int, str, str]]:
    bundle = root / "good"
    build_bundle(bundle, "evil")
    manifest = (bundle / "manifest.json").read_bytes()
    onnx_bytes = (bundle / "dense.onnx").read_bytes()
    # A decompression bomb: a pax header of 64 MiB (tarfile reads it into memory) that gzips to ~64 kB.
    padded = tarfile.TarInfo("manifest.json")
    padded.size = len(manifest)
    padded.pax_headers = {"comment": "x" * (64 * 1024 * 1024)}
    bomb = _tar([(padded, manifest), _member("dense.onnx", onnx_bytes)])
    # A plain tar whose second member's header declares 8 times the limit, with only 4 kB behind it.
    oversize = tarfile.TarInfo("dense.onnx")
    oversize.size = BUNDLE_LIMIT_BYTES * 8
    first = _member("manifest.json", manifest)
    declared = (
        first[0].tobuf(format=tarfile.USTAR_FORMAT)
        + manifest
        + b"\x00" * (-len(manifest) % tarfile.BLOCKSIZE)
        + oversize.tobuf(format=tarfile.USTAR_FORMAT)
        + b"\x00" * 4096
    )
    cases = [
        (
            "symlink-manifest",
            _tar([_special("manifest.json", tarfile.SYMTYPE, "/etc/passwd"), _member("dense.onnx", onnx_bytes)]),
            422,
            "unsafe_archive",
            "link",
        ),
        (
            "symlink-onnx-to-data",
            _tar([_member("manifest.json", manifest), _special("dense.onnx", tarfile.SYMTYPE, "../../store/data.mdb")]),
            422,
            "unsafe_archive",
            "link",
        ),
        (
            "hardlink",
            _tar([_member("manifest.json", manifest), _special("dense.onnx", tarfile.LNKTYPE, "manifest.json")]),
            422,
            "unsafe_archive",
            "link",
        ),
        (
            "device",
            _tar([_member("manifest.json", manifest), _special("dense.onnx", tarfile.CHRTYPE)]),
            422,
            "unsafe_archive",
            "regular file",
        ),
        (
            "absolute",
            _tar([_member("/tmp/manifest.json", manifest), _member("dense.onnx", onnx_bytes)]),
            422,
            "unsafe_archive",
            "absolute",
        ),
        ("declared-oversize-member", declared, 413, "bundle_too_large", "'dense.onnx'"),
        ("gzip-bomb", bomb, 413, "bundle_too_large", "unpacks to more than"),
    ]
    outside = root / "outside.bin"
    for name, location in (
        ("external-data-relative", "../../outside.bin"),
        ("external-data-absolute", str(outside)),
        ("external-data-in-cwd", "weights.bin"),
    ):
        target = hostile.cwd / "weights.bin" if location == "weights.bin" else outside
        model = _external_data_onnx(manifest, location, target)
        cases.append(
            (
                name,
                _tar([_member("manifest.json", manifest), _member("dense.onnx", model)]),
                422,
                "invalid_bundle",
                "external data",
            )
        )
    return cases


def test_hostile_bundle_archives_are_refused_over_http(
    hostile: ServerProcess, client: httpx.Client, tmp_path: Path
) -> None:
    before = _state(client)
    version = client.get("/v1/model").json()["manifest"]["version"]
    bundles_dir = hostile.data_dir / "bundles"
    on_disk = sorted(p.name for p in bundles_dir.iterdir())
    for case, payload, status, code, words in _bundle_cases(hostile, tmp_path):
        answer = client.post("/admin/bundles", content=payload, headers=ADMIN)
        assert (answer.status_code, answer.json()["code"]) == (status, code), (case, answer.text[:400])
        assert words in answer.json()["detail"], (case, answer.json()["detail"])
    assert client.get("/v1/model").json()["manifest"]["version"] == version
    assert _state(client) == before
    assert sorted(p.name for p in bundles_dir.iterdir()) == on_disk  # nothing written, nothing left behind


# --- the admin token ------------------------------------------------------------------------------------------


def test_auth_compares_the_token_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    source = inspect.getsource(auth.require_admin)
    assert "hmac.compare_digest(" in source
    assert not re.search(r"(token|expected)\S*\s*[!=]=|[!=]=\s*(token|expected)", source)  # no short-circuit compare
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    from pydantic import SecretStr

    settings = SimpleNamespace(admin_token=SecretStr(TOKEN))
    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(settings=settings)))
    for header, allowed in ((f"Bearer {TOKEN}", True), (f"Bearer {TOKEN[:-1]}", False), ("Bearer x", False)):
        request = SimpleNamespace(app=app, headers={"authorization": header})
        if allowed:
            auth.require_admin(request)  # type: ignore[arg-type]
        else:
            with pytest.raises(auth.Forbidden):
                auth.require_admin(request)  # type: ignore[arg-type]
    assert [b for _, b in calls] == [TOKEN.encode()] * 3


def test_the_admin_token_never_reaches_a_log_line_or_an_answer(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(args=["--log-level", "debug"]).start()
    answers: list[str] = []
    near_misses = [
        f"Bearer {TOKEN}x",
        f"Bearer x{TOKEN}",
        f"Basic {TOKEN}",
        f"bearer  {TOKEN} extra",
        TOKEN,
        f"Bearer {TOKEN[:-1]}",
    ]
    with server.client() as client:
        schema = client.get("/v1/model").json()["manifest"]["schema_hash"]
        delta = encode_delta(
            SparseDelta(
                "trainer",
                1,
                schema,
                0,
                {
                    "item_id": SlotDelta(
                        np.asarray([1], dtype=np.uint64),
                        np.ones((1, DIM), dtype=np.float32),
                        np.zeros(1, dtype=np.int64),
                    )
                },
            )
        )
        for headers in [ADMIN, *({"Authorization": h} for h in near_misses), {"X-Admin-Token": TOKEN}]:
            for method, path, content in [
                ("GET", "/admin/status", None),
                ("POST", "/admin/deltas?wait=visible", delta),
                ("POST", "/admin/deltas", b"garbage"),
                ("POST", "/admin/bundles", b"not a tar"),
                ("POST", "/admin/rollback", None),
                ("POST", "/v1/rank", b"{bad json"),
            ]:
                answer = client.request(method, path, content=content, headers=headers)
                assert answer.status_code < 500, (path, answer.text)
                answers.append(answer.text + str(answer.headers))
        answers.append(client.get("/metrics").text)
    server.stop()
    log = server.log_text()
    assert "DEBUG" in log  # the server logged at debug level throughout...
    assert "admin request refused" in log  # ...the refusals of the near misses included
    assert "read bundle" in log
    assert TOKEN not in log
    assert not [a for a in answers if TOKEN in a]
