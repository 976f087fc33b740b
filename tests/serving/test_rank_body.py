"""``load_rank_json`` (serving/rank_body.py and its C pass) gives orjson's document, with the integer id columns as
uint64 arrays of the same values, or orjson's error; and ``parse_rank_request`` reads both documents to the same
request or the same error. Checked on W-500 bodies, on generated documents with every kind of bad value, and on
byte-level mutations of a real body (where the C pass and orjson could disagree on what is JSON)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liverank.benchmarks.w500 import RequestMaker, make_tables
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving import _rank_body
from liverank.serving.errors import InvalidJson, RequestInvalid
from liverank.serving.rank_body import id_columns, load_json, load_rank_json
from liverank.serving.request import Limits, RankRequest, parse_rank_request
from liverank.store.manifest import Manifest

LIMITS = Limits(max_candidates=1000, max_list_ids=100, max_k=500)
ID_COLUMN = "item_id"  # an integer id feature of W-500's candidates
LIST_COLUMN = "tags"  # an id-list feature: never read as an array


@pytest.fixture(scope="module")
def w500(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, RequestMaker]:
    root = tmp_path_factory.mktemp("request-json")
    manifest = build_synthetic_bundle(root / "bundle", preset="w500", dim=8, seed=3)
    return manifest, RequestMaker(manifest, make_tables(manifest, 2_000, 1.1, seed=11), stream=5)


@pytest.fixture(scope="module")
def small_bodies(w500: tuple[Manifest, RequestMaker]) -> list[bytes]:
    """Fixed bodies to mutate (the maker's stream moves on with every call; hypothesis needs the same input)."""
    _, maker = w500
    return [orjson.dumps(maker.make(n_candidates=3, k=2)) for _ in range(4)]


def plain(value: Any) -> Any:
    """The document with arrays as the lists orjson makes (uint64 values as Python ints)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def same_as_orjson(body: bytes, manifest: Manifest) -> Any:
    """Assert ``load_rank_json`` agrees with orjson on ``body`` (document or error); the fast document."""
    try:
        want = orjson.loads(body)
    except orjson.JSONDecodeError:
        with pytest.raises(InvalidJson):
            load_rank_json(body, manifest)
        return None
    got = load_rank_json(body, manifest)
    assert plain(got) == want
    assert type(plain(got)) is type(want)
    return got


def parsed(doc: Any, manifest: Manifest) -> RankRequest | str:
    try:
        return parse_rank_request(doc, manifest, LIMITS)
    except RequestInvalid as exc:
        return f"{type(exc).__name__}: {exc}"


def assert_same_request(fast: Any, slow: Any, manifest: Manifest) -> None:
    a, b = parsed(fast, manifest), parsed(slow, manifest)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert (a.n_candidates, a.k, a.blend) == (b.n_candidates, b.k, b.blend)
    for side_a, side_b in ((a.user, b.user), (a.candidates, b.candidates)):
        assert side_a.keys() == side_b.keys()
        for name, col in side_a.items():
            other = side_b[name]
            for field in ("ids", "lengths", "numbers"):
                x, y = getattr(col, field), getattr(other, field)
                if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                    assert isinstance(x, np.ndarray), (name, field)
                    assert isinstance(y, np.ndarray), (name, field)
                    assert x.dtype == y.dtype, (name, field)
                    assert np.array_equal(x, y), (name, field)
                else:
                    assert x == y, (name, field)


def test_w500_bodies_read_their_id_columns_as_uint64_arrays(w500: tuple[Manifest, RequestMaker]) -> None:
    manifest, maker = w500
    assert ID_COLUMN.encode() in id_columns(manifest)
    assert LIST_COLUMN.encode() not in id_columns(manifest)
    for _ in range(5):
        body = orjson.dumps(maker.make(n_candidates=500, k=50))
        doc = same_as_orjson(body, manifest)
        column = doc["candidates"][ID_COLUMN]
        assert isinstance(column, np.ndarray)
        assert column.dtype == np.uint64
        assert isinstance(doc["candidates"][LIST_COLUMN], list)  # lists of lists stay Python
        assert_same_request(doc, orjson.loads(body), manifest)


@pytest.mark.parametrize(
    ("column", "as_array"),
    [
        ("[0, 1, 18446744073709551615]", True),  # the whole uint64 range
        ("[9223372036854775808]", True),  # past int64
        ("[]", True),
        ("[-0]", False),  # orjson reads the int 0; the C pass leaves signs to orjson
        ("[18446744073709551616]", False),  # past uint64: orjson reads an int, validation refuses it
        ("[-1]", False),
        ("[-9223372036854775809]", False),  # orjson: a float
        ("[true, 1]", False),
        ("[1.0]", False),
        ("[1e3]", False),
        ("[null]", False),
        ('["7"]', False),
        ("[[1], [2]]", False),  # nested
        ("[1, [2]]", False),
        ('[1, {"a": 2}]', False),
        ("7", False),
        ("[ 1 ,\n2\t,\r3 ]", True),  # JSON whitespace between tokens
        ("[99999999999999999999]", False),  # 20 digits past 2**64-1
        ("[100000000000000000000]", False),  # 21 digits
        ("[10000000000000000000]", True),  # 20 digits within it
        ("[00]", False),
        ("[01]", False),
        ("[1,]", False),
        ("[,1]", False),
        ("[1 2]", False),
        ("[1.5]", False),
        ("[1E2]", False),
        ("[+1]", False),
        ("[0x10]", False),
        ("[1,2", False),
    ],
)
def test_a_column_is_an_array_only_when_orjson_would_read_the_same_ints(
    w500: tuple[Manifest, RequestMaker], column: str, as_array: bool
) -> None:
    manifest, maker = w500
    doc = maker.make(n_candidates=3, k=2)
    text = orjson.dumps(doc).decode()
    original = json.dumps(doc["candidates"][ID_COLUMN], separators=(",", ":"))
    body = text.replace(f'"{ID_COLUMN}":{original}', f'"{ID_COLUMN}":{column}', 1).encode()
    assert body != text.encode()
    fast = same_as_orjson(body, manifest)
    if fast is None:  # not JSON: refused with orjson's error (same_as_orjson checked it)
        assert not as_array
        return
    assert isinstance(fast["candidates"][ID_COLUMN], np.ndarray) is as_array
    assert_same_request(fast, orjson.loads(body), manifest)


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"candidates": {}}',  # a byte order mark: orjson refuses it
        b'{"candidates": {"item_id": [1]}} x',
        b'{"candidates": {"item_id": [1,]}}',
        b'{"k": NaN}',
        b'{"user": "\\ud800"}',
        b'{"user": "\xed\xa0\x80"}',
        b'{"user": "a\nb"}',
        b"",
        b"   ",
        b'{"candidates": {"item_id": [01]}}',
    ],
)
def test_what_orjson_refuses_is_refused_with_its_error(w500: tuple[Manifest, RequestMaker], body: bytes) -> None:
    manifest, _ = w500
    with pytest.raises(InvalidJson) as fast:
        load_rank_json(body, manifest)
    with pytest.raises(InvalidJson) as slow:
        load_json(body)
    assert str(fast.value) == str(slow.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"user": {1}, "candidates": {"item_id": [1]}}',  # invalid before the column the C pass takes
        b'{"user": [1}, "candidates": {"item_id": [1]}}',  # brackets mismatched: the C pass only counts them
        b'{"candidates": {"item_id": [1], "tags": [1 2]}}',  # invalid after it
    ],
)
def test_a_body_invalid_around_a_taken_column_gets_orjson_error_for_the_original(
    w500: tuple[Manifest, RequestMaker], body: bytes
) -> None:
    manifest, _ = w500
    assert _rank_body.split_id_columns(body, id_columns(manifest)) is not None  # the column was taken
    with pytest.raises(InvalidJson) as fast:
        load_rank_json(body, manifest)
    with pytest.raises(InvalidJson) as slow:
        load_json(body)
    assert str(fast.value) == str(slow.value)


def test_a_repeated_key_keeps_its_last_value_as_orjson_does(w500: tuple[Manifest, RequestMaker]) -> None:
    manifest, maker = w500
    doc = maker.make(n_candidates=4, k=2)
    text = orjson.dumps(doc).decode()
    first = json.dumps(doc["candidates"][ID_COLUMN], separators=(",", ":"))
    # The id column given twice (the last wins), and "k" given twice at the top.
    twice = text.replace(f'"{ID_COLUMN}":{first}', f'"{ID_COLUMN}":[1,2,3,4],"{ID_COLUMN}":{first}', 1)
    twice = twice.replace('"k":2', '"k":99,"k":2', 1)
    fast = same_as_orjson(twice.encode(), manifest)
    assert fast["k"] == 2
    assert plain(fast["candidates"][ID_COLUMN]) == doc["candidates"][ID_COLUMN]


@pytest.mark.parametrize(
    "body",
    [
        # "candidates" twice: orjson keeps the second object, which has no author_id (nor any column of the first).
        b'{"candidates": {"author_id": [5]}, "candidates": {"item_id": [2]}}',
        b'{"candidates": {"item_id": [1], "author_id": [5]}, "candidates": {"item_id": [2]}}',
        # a key the C pass cannot compare (escaped): it might be a repeat of a column it took
        b'{"candidates": {"item_id": [1], "item\\u005fid": [2]}}',
        b'{"candidates": {"item_id": [1]}, "candid\\u0061tes": {"music_id": [3]}}',
    ],
)
def test_a_repeated_candidates_object_or_an_escaped_key_reads_as_orjson_reads_it(
    w500: tuple[Manifest, RequestMaker], body: bytes
) -> None:
    manifest, _ = w500
    assert plain(load_rank_json(body, manifest)) == orjson.loads(body)


def test_an_array_for_a_feature_the_live_manifest_reads_otherwise_is_validated_as_a_list(
    w500: tuple[Manifest, RequestMaker],
) -> None:
    """The manifest changed between reading the body and validating it: the array goes back to being a list."""
    manifest, maker = w500
    doc = maker.make(n_candidates=3, k=2)
    doc["candidates"][LIST_COLUMN] = np.asarray([1, 2, 3], dtype=np.uint64)  # as if tags had been an id column
    slow = {**doc, "candidates": {**doc["candidates"], LIST_COLUMN: [1, 2, 3]}}
    assert_same_request(doc, slow, manifest)
    assert "must be a list of id lists" in str(parsed(doc, manifest))


_ids = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.lists(st.integers(min_value=0, max_value=9), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.lists(_ids, max_size=6), k=st.one_of(st.integers(-2, 5), st.booleans(), st.floats()))
def test_generated_columns_read_as_orjson_reads_them(
    w500: tuple[Manifest, RequestMaker], column: list[Any], k: Any
) -> None:
    manifest, maker = w500
    doc = maker.make(n_candidates=len(column) or 1, k=1)
    doc["candidates"][ID_COLUMN] = column
    doc["k"] = k
    body = json.dumps(doc).encode()  # json: integers past 64 bits too (orjson refuses to write them)
    fast = same_as_orjson(body, manifest)
    if fast is not None:
        assert_same_request(fast, orjson.loads(body), manifest)


_EDITS = st.sampled_from([*b'[]{},:-.e"\\ 0123456789tfnul\n', 0xEF, 0xFF, 0xC3])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bodies_read_as_orjson_reads_them(
    w500: tuple[Manifest, RequestMaker], small_bodies: list[bytes], data: st.DataObject
) -> None:
    manifest, _ = w500
    body = bytearray(data.draw(st.sampled_from(small_bodies)))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body) - 1))
        how = data.draw(st.sampled_from(("replace", "insert", "delete")))
        if how == "delete":
            del body[at]
        elif how == "insert":
            body.insert(at, data.draw(_EDITS))
        else:
            body[at] = data.draw(_EDITS)
    fast = same_as_orjson(bytes(body), manifest)
    if fast is not None:
        assert_same_request(fast, orjson.loads(bytes(body)), manifest)
