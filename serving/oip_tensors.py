"""Open Inference Protocol tensors: JSON ``data`` and the binary tensor data extension, both ways. HTTP-free.

Binary extension (what tritonclient sends by default): the body is a JSON header of ``header_length`` bytes (the
``Inference-Header-Content-Length`` HTTP header), then the raw data of every tensor whose ``parameters`` carry
``binary_data_size``, in the order of the header's list. Raw data is little-endian, row-major, without padding;
a BYTES element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from liverank.serving.errors import InferenceRequestInvalid

# The protocol's datatypes this server reads or writes, and their little-endian numpy dtypes.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_MAX_DIMS = 4
_KIND_WORDS = {"b": "booleans", "iu": "integers", "iuf": "numbers"}


@dataclass(frozen=True)
class Tensor:
    """One decoded input. ``values`` holds the shape given; BYTES tensors hold Python ``bytes`` (dtype object)."""

    name: str
    datatype: str
    values: np.ndarray[Any, Any]


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail of an inference request body."""
    if header_length is None:
        json_part, tail = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InferenceRequestInvalid(
                f"Inference-Header-Content-Length {header_length!r} is not a length within the {len(body)}-byte body"
            )
        json_part, tail = body[: int(header_length)], body[int(header_length) :]
    try:
        header = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InferenceRequestInvalid(f"the inference request header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InferenceRequestInvalid("the inference request must be a JSON object with 'inputs'")
    return header, tail


def decode_inputs(header: dict[str, Any], tail: bytes) -> dict[str, Tensor]:
    """Every input tensor of a request, by name, with its shape and datatype checked against its data."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferenceRequestInvalid("'inputs' must be a non-empty list of tensors")
    out: dict[str, Tensor] = {}
    offset = 0
    for raw in inputs:
        tensor, used = _decode_one(raw, tail, offset)
        if tensor.name in out:
            raise InferenceRequestInvalid(f"input {tensor.name!r} is given twice")
        out[tensor.name] = tensor
        offset += used
    if offset != len(tail):
        raise InferenceRequestInvalid(f"{len(tail) - offset} bytes of binary data follow the last binary input")
    return out


def _decode_one(raw: Any, tail: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InferenceRequestInvalid("every input must be an object with 'name', 'shape', 'datatype' and data")
    name, datatype, shape = raw["name"], raw.get("datatype"), raw.get("shape")
    what = f"input {name!r}"
    if datatype != "BYTES" and datatype not in NUMPY_DTYPES:
        raise InferenceRequestInvalid(f"{what}: datatype {datatype!r} is not one of the protocol's datatypes")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InferenceRequestInvalid(f"{what}: 'shape' must be a list of at most {_MAX_DIMS} non-negative integers")
    count = math.prod(shape)  # Python ints: a huge shape is refused below, it does not overflow
    parameters = raw.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(tail):
            raise InferenceRequestInvalid(f"{what}: binary_data_size {size!r} runs past the end of the body")
        chunk = tail[offset : offset + size]
        values = _from_bytes(chunk, datatype, count, what)
        return Tensor(name, datatype, values.reshape(shape)), size
    if "data" not in raw:
        raise InferenceRequestInvalid(f"{what} has neither 'data' nor a binary_data_size parameter")
    return Tensor(name, datatype, _from_json(raw["data"], datatype, shape, count, what)), 0


def _from_bytes(chunk: bytes, datatype: str, count: int, what: str) -> np.ndarray[Any, Any]:
    if datatype != "BYTES":
        dtype = NUMPY_DTYPES[datatype]
        if len(chunk) != count * dtype.itemsize:
            raise InferenceRequestInvalid(
                f"{what}: {len(chunk)} bytes of binary data for {count} {datatype} elements "
                f"({count * dtype.itemsize} expected)"
            )
        return np.frombuffer(chunk, dtype=dtype)
    items: list[bytes] = []
    pos = 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise InferenceRequestInvalid(f"{what}: a BYTES element's 4-byte length is cut off")
        n = int.from_bytes(chunk[pos : pos + 4], "little")
        if pos + 4 + n > len(chunk):
            raise InferenceRequestInvalid(f"{what}: a BYTES element runs past its binary data")
        items.append(chunk[pos + 4 : pos + 4 + n])
        pos += 4 + n
    if len(items) != count:
        raise InferenceRequestInvalid(f"{what}: {len(items)} BYTES elements for a shape of {count}")
    return _object_array(items)


def _from_json(data: Any, datatype: str, shape: list[int], count: int, what: str) -> np.ndarray[Any, Any]:
    """``data``, flat or nested (the protocol accepts both), as an array of ``shape``; numpy does the walking."""
    if datatype == "BYTES":
        flat = list(np.asarray(data, dtype=object).ravel()) if isinstance(data, list) else [data]
        if len(flat) != count or not all(isinstance(v, str) for v in flat):
            raise InferenceRequestInvalid(f"{what}: BYTES data in JSON must be {count} strings for shape {shape}")
        return _object_array([v.encode() for v in flat]).reshape(shape)
    try:
        arr = np.asarray(data)
    except (ValueError, OverflowError) as exc:
        raise InferenceRequestInvalid(f"{what}: 'data' is not a regular array of numbers") from exc
    if arr.size != count:
        raise InferenceRequestInvalid(f"{what}: {arr.size} data elements for shape {shape}")
    dtype = NUMPY_DTYPES[datatype]
    accepted = "b" if datatype == "BOOL" else ("iu" if dtype.kind in "iu" else "iuf")
    if arr.size and arr.dtype.kind not in accepted:
        raise InferenceRequestInvalid(f"{what}: {datatype} data must be JSON {_KIND_WORDS[accepted]}")
    # numpy reads true/false among numbers as 1/0: where a 0 or 1 is, look for a JSON boolean.
    if datatype != "BOOL" and ((arr == 0) | (arr == 1)).any() and _has_bool(data):
        raise InferenceRequestInvalid(f"{what}: {datatype} data must be numbers, not true or false")
    if dtype.kind in "iu" and arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
        raise InferenceRequestInvalid(f"{what}: a value does not fit {datatype}")
    return arr.astype(dtype).reshape(shape)


def _has_bool(data: Any) -> bool:
    if not isinstance(data, list):
        return type(data) is bool
    types = set(map(type, data))  # a C loop: this runs on every column that holds a 0 or a 1
    return bool in types or (list in types and any(_has_bool(v) for v in data if isinstance(v, list)))


def _object_array(items: list[bytes]) -> np.ndarray[Any, Any]:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def encode_outputs(
    outputs: list[tuple[str, str, np.ndarray[Any, Any]]], binary: set[str]
) -> tuple[list[dict[str, Any]], bytes]:
    """The response's ``outputs`` list and the binary tail holding the outputs named in ``binary``."""
    listed: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, datatype, values in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        if name in binary:
            raw = np.ascontiguousarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values.ravel().tolist()
        listed.append(entry)
    return listed, b"".join(chunks)
