"""OIP tensor decoding (JSON data and the binary extension) against what tritonclient itself encodes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from tritonclient.utils import serialize_byte_tensor

from liverank.serving.errors import InferenceRequestInvalid
from liverank.serving.oip_tensors import decode_inputs, encode_outputs, split_body


def test_binary_bytes_and_int64_tensors_decode_as_tritonclient_encoded_them() -> None:
    words = np.asarray([b"a", b"", "é".encode()], dtype=object)
    ids = np.asarray([[1, 2], [3, -1]], dtype=np.int64)
    word_bytes: bytes = serialize_byte_tensor(words).item()  # a 0-d object array holding the bytes
    header = {
        "inputs": [
            {"name": "w", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(word_bytes)}},
            {"name": "ids", "shape": [2, 2], "datatype": "INT64", "parameters": {"binary_data_size": ids.nbytes}},
        ]
    }
    head = orjson.dumps(header)
    parsed, tail = split_body(head + word_bytes + ids.tobytes(), str(len(head)))
    tensors = decode_inputs(parsed, tail)
    assert tensors["w"].values.tolist() == [b"a", b"", "é".encode()]
    assert np.array_equal(tensors["ids"].values, ids)


def test_json_data_flat_or_nested() -> None:
    header = {
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]},
            {"name": "b", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
            {"name": "c", "shape": [2], "datatype": "FP32", "data": [0.5, 1]},
            {"name": "d", "shape": [1], "datatype": "BYTES", "data": ["x"]},
        ]
    }
    tensors = decode_inputs(header, b"")
    assert np.array_equal(tensors["a"].values, tensors["b"].values)
    assert tensors["c"].values.dtype == np.float32
    assert tensors["d"].values.tolist() == [b"x"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "a", "shape": [2], "datatype": "INT64", "data": [1, True]}, "not true or false"),
        ({"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2.5]}, "must be JSON integers"),
        ({"name": "a", "shape": [1], "datatype": "INT64", "data": [2**64]}, "must be JSON integers"),
        ({"name": "a", "shape": [1], "datatype": "INT8", "data": [300]}, "does not fit INT8"),
        ({"name": "a", "shape": [2], "datatype": "INT64", "data": [[1], [2, 3]]}, "regular array"),
        ({"name": "a", "shape": [3], "datatype": "INT64", "data": [1, 2]}, "2 data elements for shape [3]"),
        ({"name": "a", "shape": [1], "datatype": "INT128", "data": [1]}, "not one of the protocol's datatypes"),
        ({"name": "a", "shape": [1], "datatype": "INT64"}, "neither 'data' nor a binary_data_size"),
        ({"name": "a", "shape": [-1], "datatype": "INT64", "data": [1]}, "non-negative integers"),
    ],
)
def test_malformed_tensors_are_refused_with_the_reason(tensor: dict[str, object], message: str) -> None:
    with pytest.raises(InferenceRequestInvalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_inputs({"inputs": [tensor]}, b"")


def test_binary_sizes_must_account_for_the_whole_tail() -> None:
    header = {"inputs": [{"name": "a", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}]}
    with pytest.raises(InferenceRequestInvalid, match="bytes of binary data follow"):
        decode_inputs(header, bytes(16))
    with pytest.raises(InferenceRequestInvalid, match="runs past the end"):
        decode_inputs(header, bytes(4))


def test_outputs_encode_as_json_data_or_binary() -> None:
    scores = np.asarray([0.5, 0.25], dtype=np.float32)
    listed, tail = encode_outputs([("score", "FP32", scores), ("index", "INT64", np.asarray([3, 1]))], {"score"})
    assert listed[0] == {"name": "score", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
    assert np.array_equal(np.frombuffer(tail, dtype="<f4"), scores)
    assert listed[1] == {"name": "index", "datatype": "INT64", "shape": [2], "data": [3, 1]}
