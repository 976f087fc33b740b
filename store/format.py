"""The on-disk and on-the-wire contract: keys, values and sparse deltas. Pure codecs: no LMDB here.

Key (LMDB key of one embedding row)::

    slot_code   u16 big-endian          the slot's number, assigned when the slot is first declared
    id          int and str_hash slots: u64 big-endian (the id itself, all 64 bits, no bucketing)
                str slots: the id's UTF-8 bytes, 1..MAX_STR_ID_BYTES long

  Big-endian puts one slot's keys next to each other, in id order, so a slot is one contiguous range scan.

Value::

    updated_at_ms  i64 little-endian    the producer's event time of the row's last update, ms since the epoch
    vector         dim x storage dtype   float32 or float16, little-endian

Sparse delta, binary form (format 1), safetensors-style: a small JSON header, then raw little-endian arrays::

    magic          4 bytes  b"LRDL"
    format         u16 LE   1
    reserved       u16 LE   0
    header_len     u32 LE
    crc32          u32 LE   zlib.crc32 of the 12 bytes before it, then header bytes + data bytes
    header         header_len bytes of UTF-8 JSON:
                   {"producer": str, "seq": int, "schema_hash": str, "created_at_ms": int,
                    "slots": [{"name": str, "n": int, "dim": int, "dtype": "float32"|"float16",
                               "id_kind": "int"|"str", "ids_bytes": int, "n_tombstones": int,
                               "tombstone_bytes": int}, ...]}
    data           for each slot, in header order, back to back:
                     ids            n x u64 LE, or (str) n x u32 LE byte lengths then the UTF-8 bytes
                     values         n x dim x dtype LE
                     updated_at_ms  n x i64 LE
                     tombstones     like ids, n_tombstones of them

  Sizes follow from the header, so there are no offsets to forge; the decoder must consume the payload exactly.
  A delta carries absolute row values, not gradients: re-applying one is harmless.

Sparse delta, JSON form (for small hand-made deltas; no checksum, the transport has its own)::

    {"format": 1, "producer": "trainer-0", "seq": 7, "schema_hash": "...", "created_at_ms": 1700000000000,
     "slots": {"item_id": {"ids": [1, 2], "values": [[...], [...]], "updated_at_ms": 1700000000000,
                           "tombstones": [3], "dtype": "float32"}}}

  ``updated_at_ms`` may be one int for all rows or a list; ``tombstones`` and ``dtype`` are optional.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from liverank.store.errors import ChecksumMismatch, DeltaCorrupt, IdOutOfRange, UnsupportedFormat

FORMAT_VERSION = 1
MAGIC = b"LRDL"
MAX_STR_ID_BYTES = 480  # LMDB's default maximum key is 511 bytes; the slot code takes 2.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_PRODUCER_BYTES = 128
MAX_SEQ = 2**63 - 1
_PREAMBLE = struct.Struct("<4sHHII")
_CRC_AT = 12  # the CRC covers the preamble bytes before it, so a flipped version or length is caught too
_KEY_PREFIX = struct.Struct(">H")
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_U64 = np.dtype("<u8")
_I64 = np.dtype("<i8")
_U32 = np.dtype("<u4")

IntIds = np.ndarray[Any, np.dtype[np.uint64]]
Ids = IntIds | tuple[str, ...]
Array = np.ndarray[Any, np.dtype[Any]]


def hash_str_id(value: str) -> int:
    """The documented 64-bit hash of a ``str_hash`` slot: BLAKE2b, 8-byte digest, read big-endian."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "big")


def encode_int_keys(slot_code: int, ids: IntIds) -> list[bytes]:
    """LMDB keys of integer ids (u16 BE slot code + u64 BE id), vectorised."""
    keys = np.empty(len(ids), dtype=[("slot", ">u2"), ("id", ">u8")])
    keys["slot"] = slot_code
    keys["id"] = ids
    raw = keys.tobytes()
    return [raw[i : i + 10] for i in range(0, len(raw), 10)]


def encode_str_key(slot_code: int, value: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw or len(raw) > MAX_STR_ID_BYTES:
        raise IdOutOfRange(f"string id must be 1..{MAX_STR_ID_BYTES} UTF-8 bytes, got {len(raw)} bytes")
    return _KEY_PREFIX.pack(slot_code) + raw


def slot_key_prefix(slot_code: int) -> bytes:
    return _KEY_PREFIX.pack(slot_code)


def decode_key(key: bytes, id_kind: str) -> tuple[int, int | str]:
    """(slot_code, id) of an LMDB key."""
    (slot_code,) = _KEY_PREFIX.unpack_from(key)
    body = key[2:]
    if id_kind == "str":
        return slot_code, body.decode("utf-8")
    return slot_code, int.from_bytes(body, "big")


def encode_values(vectors: Array, updated_at_ms: Array, dtype: np.dtype[Any]) -> list[bytes]:
    """LMDB values (i64 LE event time + vector), vectorised."""
    dim = vectors.shape[1]
    rows = np.empty(len(vectors), dtype=[("t", "<i8"), ("v", dtype.newbyteorder("<"), (dim,))])
    rows["t"] = updated_at_ms
    rows["v"] = vectors
    raw = rows.tobytes()
    width = rows.dtype.itemsize
    return [raw[i : i + width] for i in range(0, len(raw), width)]


def value_dtype(dim: int, dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The numpy record dtype of one stored value; ``np.frombuffer`` with it decodes values in bulk."""
    return np.dtype([("t", "<i8"), ("v", dtype.newbyteorder("<"), (dim,))])


@dataclass(frozen=True)
class SlotDelta:
    """One slot's part of a delta: rows to write (absolute values) and ids to delete."""

    ids: Ids
    values: Array
    updated_at_ms: Array
    tombstones: Ids = field(default_factory=tuple)

    @property
    def n_rows(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class SparseDelta:
    """The rows a producer touched since its previous delta, with its sequence number and schema binding."""

    producer: str
    seq: int
    schema_hash: str
    created_at_ms: int
    slots: Mapping[str, SlotDelta]

    @property
    def n_rows(self) -> int:
        return sum(s.n_rows for s in self.slots.values())

    @property
    def n_tombstones(self) -> int:
        return sum(len(s.tombstones) for s in self.slots.values())


# --- binary codec ---------------------------------------------------------------------------------------------


def _ids_to_bytes(ids: Ids) -> tuple[str, bytes]:
    if isinstance(ids, tuple):
        try:
            encoded = [s.encode("utf-8") for s in ids]
        except UnicodeEncodeError as exc:
            raise IdOutOfRange(f"a string id is not encodable as UTF-8: {exc.reason}") from exc
        lengths = np.asarray([len(b) for b in encoded], dtype=_U32)
        return "str", lengths.tobytes() + b"".join(encoded)
    return "int", np.ascontiguousarray(ids, dtype=_U64).tobytes()


def encode_delta(delta: SparseDelta) -> bytes:
    """The binary form of a delta (format 1)."""
    check_header_fields(delta.producer, delta.seq, delta.schema_hash, delta.created_at_ms)
    slot_headers: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, slot in delta.slots.items():
        values = np.asarray(slot.values)
        if values.ndim != 2 or len(values) != slot.n_rows:
            raise DeltaCorrupt(f"slot {name!r}: values must be an (n, dim) array matching {slot.n_rows} ids")
        dtype_name = "float16" if values.dtype == np.float16 else "float32"
        id_kind, id_bytes = _ids_to_bytes(slot.ids)
        tomb_kind, tomb_bytes = _ids_to_bytes(slot.tombstones)
        if len(slot.tombstones) and tomb_kind != id_kind and slot.n_rows:
            raise DeltaCorrupt(f"slot {name!r}: ids and tombstones must be of one kind")
        if not slot.n_rows:
            id_kind = tomb_kind
        slot_headers.append(
            {
                "name": name,
                "n": slot.n_rows,
                "dim": int(values.shape[1]),
                "dtype": dtype_name,
                "id_kind": id_kind,
                "ids_bytes": len(id_bytes),
                "n_tombstones": len(slot.tombstones),
                "tombstone_bytes": len(tomb_bytes),
            }
        )
        chunks.append(id_bytes)
        chunks.append(np.ascontiguousarray(values, dtype=_DTYPES[dtype_name]).tobytes())
        chunks.append(np.ascontiguousarray(_updated_at_array(slot.updated_at_ms, slot.n_rows)).tobytes())
        chunks.append(tomb_bytes)
    header = orjson.dumps(
        {
            "producer": delta.producer,
            "seq": delta.seq,
            "schema_hash": delta.schema_hash,
            "created_at_ms": delta.created_at_ms,
            "slots": slot_headers,
        }
    )
    data = b"".join(chunks)
    lead = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header), 0)[:_CRC_AT]
    crc = zlib.crc32(data, zlib.crc32(header, zlib.crc32(lead)))
    return lead + struct.pack("<I", crc) + header + data


def is_binary_delta(payload: bytes) -> bool:
    return payload[:4] == MAGIC


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DeltaCorrupt(f"delta payload is truncated: {what} needs {n} bytes, {self.remaining} remain")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _read_ids(reader: _Reader, kind: str, n: int, n_bytes: int, what: str) -> Ids:
    if kind == "int":
        if n_bytes != n * 8:
            raise DeltaCorrupt(f"{what}: {n} integer ids need {n * 8} bytes, header says {n_bytes}")
        return np.frombuffer(reader.take(n_bytes, what), dtype=_U64).astype(np.uint64)
    if n_bytes < n * 4:
        raise DeltaCorrupt(f"{what}: {n} string ids need at least {n * 4} bytes, header says {n_bytes}")
    block = reader.take(n_bytes, what)
    lengths = np.frombuffer(block[: n * 4], dtype=_U32)
    if int(lengths.sum(dtype=np.uint64)) != n_bytes - n * 4:
        raise DeltaCorrupt(f"{what}: string id lengths do not add up to the declared size")
    text = bytes(block[n * 4 :])
    out: list[str] = []
    pos = 0
    try:
        for length in lengths.tolist():
            out.append(text[pos : pos + length].decode("utf-8"))
            pos += length
    except UnicodeDecodeError as exc:
        raise DeltaCorrupt(f"{what}: a string id is not valid UTF-8") from exc
    return tuple(out)


def _header_int(value: Any, what: str, low: int = 0, high: int = MAX_SEQ) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DeltaCorrupt(f"delta header: {what} must be an integer in {low}..{high}, got {value!r}")
    return value


def decode_delta(payload: bytes) -> SparseDelta:
    """Parse and integrity-check a binary delta. Raises a ``DeltaError`` subclass on any defect."""
    view = memoryview(payload)
    if len(view) < _PREAMBLE.size:
        raise DeltaCorrupt(f"delta payload is truncated: {len(view)} bytes, the preamble alone is {_PREAMBLE.size}")
    magic, version, _reserved, header_len, crc = _PREAMBLE.unpack_from(view)
    if magic != MAGIC:
        raise DeltaCorrupt("not a liverank delta: bad magic bytes")
    if version != FORMAT_VERSION:
        raise UnsupportedFormat(f"delta format version {version} is not supported (this build reads {FORMAT_VERSION})")
    body = view[_PREAMBLE.size :]
    if header_len > min(len(body), MAX_HEADER_BYTES):
        raise DeltaCorrupt(f"delta payload is truncated: header of {header_len} bytes, {len(body)} bytes remain")
    if zlib.crc32(body, zlib.crc32(view[:_CRC_AT])) != crc:
        raise ChecksumMismatch("delta checksum does not match its content (corrupted or truncated in transit)")
    try:
        header = orjson.loads(body[:header_len])
    except orjson.JSONDecodeError as exc:
        raise DeltaCorrupt(f"delta header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("slots"), list):
        raise DeltaCorrupt("delta header must be an object with a 'slots' list")
    reader = _Reader(body[header_len:])
    slots: dict[str, SlotDelta] = {}
    for entry in header["slots"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DeltaCorrupt("delta header: every slot entry needs a string 'name'")
        name = entry["name"]
        if name in slots:
            raise DeltaCorrupt(f"delta header: slot {name!r} appears twice")
        n = _header_int(entry.get("n"), f"slot {name!r} n")
        dim = _header_int(entry.get("dim"), f"slot {name!r} dim", 1, 1 << 16)
        dtype = _DTYPES.get(str(entry.get("dtype")))
        kind = entry.get("id_kind")
        if dtype is None or kind not in ("int", "str"):
            raise DeltaCorrupt(f"delta header: slot {name!r} has an unknown dtype or id_kind")
        ids = _read_ids(reader, kind, n, _header_int(entry.get("ids_bytes"), "ids_bytes"), f"slot {name!r} ids")
        values = np.frombuffer(reader.take(n * dim * dtype.itemsize, f"slot {name!r} values"), dtype=dtype)
        updated = np.frombuffer(reader.take(n * 8, f"slot {name!r} updated_at_ms"), dtype=_I64)
        n_tomb = _header_int(entry.get("n_tombstones"), f"slot {name!r} n_tombstones")
        tomb_bytes = _header_int(entry.get("tombstone_bytes"), "tombstone_bytes")
        tombstones = _read_ids(reader, kind, n_tomb, tomb_bytes, f"slot {name!r} tombstones")
        slots[name] = SlotDelta(
            ids=ids,
            values=values.reshape(n, dim).astype(dtype.newbyteorder("=")),
            updated_at_ms=updated.astype(np.int64),
            tombstones=tombstones,
        )
    if reader.remaining:
        raise DeltaCorrupt(f"delta payload has {reader.remaining} unexpected trailing bytes")
    producer, seq, schema_hash, created = (header.get(k) for k in ("producer", "seq", "schema_hash", "created_at_ms"))
    return SparseDelta(*check_header_fields(producer, seq, schema_hash, created), slots)


def check_header_fields(producer: Any, seq: Any, schema_hash: Any, created_at_ms: Any) -> tuple[str, int, str, int]:
    """Validate a delta's header fields; returns them typed."""
    if (
        not isinstance(producer, str)
        or not 1 <= len(producer.encode("utf-8")) <= MAX_PRODUCER_BYTES
        or "\x00" in producer
    ):
        raise DeltaCorrupt(
            f"delta producer must be a string of 1..{MAX_PRODUCER_BYTES} bytes without NUL, got {producer!r}"
        )
    _header_int(seq, "seq", 1)
    if not isinstance(schema_hash, str) or len(schema_hash) > 256:
        raise DeltaCorrupt("delta schema_hash must be a string of at most 256 characters")
    _header_int(created_at_ms, "created_at_ms", -(2**62), 2**62)
    return producer, seq, schema_hash, created_at_ms


def _updated_at_array(value: Any, n: int) -> Array:
    arr = np.asarray(value, dtype=np.int64) if not np.isscalar(value) else np.full(n, value, dtype=np.int64)
    if arr.shape != (n,):
        raise DeltaCorrupt(f"updated_at_ms must be one integer or a list of {n}, got shape {arr.shape}")
    return arr.astype(_I64)


# --- JSON codec -----------------------------------------------------------------------------------------------


def _json_ids(raw: Any, what: str) -> Ids:
    if not isinstance(raw, list):
        raise DeltaCorrupt(f"{what} must be a list")
    if not raw:
        return ()
    if all(isinstance(x, str) for x in raw):
        return tuple(raw)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        raise DeltaCorrupt(f"{what} must be all integers or all strings")
    bad = [x for x in raw if not 0 <= x < 2**64]
    if bad:
        raise IdOutOfRange(f"{what}: integer ids must be in 0..2**64-1, got {bad[0]}")
    return np.asarray(raw, dtype=np.uint64)


def delta_from_json(payload: bytes | Mapping[str, Any]) -> SparseDelta:
    """Parse the JSON form of a delta. Raises a ``DeltaError`` subclass on any defect."""
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DeltaCorrupt(f"delta is not valid JSON: {exc}") from exc
    else:
        doc = payload
    if not isinstance(doc, dict):
        raise DeltaCorrupt("a JSON delta must be an object")
    version = doc.get("format", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UnsupportedFormat(
            f"delta format version {version!r} is not supported (this build reads {FORMAT_VERSION})"
        )
    producer, seq, schema_hash, created = check_header_fields(
        doc.get("producer"), doc.get("seq"), doc.get("schema_hash", ""), doc.get("created_at_ms", 0)
    )
    raw_slots = doc.get("slots")
    if not isinstance(raw_slots, dict):
        raise DeltaCorrupt("a JSON delta needs a 'slots' object mapping slot names to rows")
    slots: dict[str, SlotDelta] = {}
    for name, entry in raw_slots.items():
        if not isinstance(entry, dict):
            raise DeltaCorrupt(f"slot {name!r} must be an object")
        ids = _json_ids(entry.get("ids", []), f"slot {name!r} ids")
        dtype = _DTYPES.get(entry.get("dtype", "float32"))
        if dtype is None:
            raise DeltaCorrupt(f"slot {name!r}: dtype must be 'float32' or 'float16'")
        raw_values = entry.get("values", [])
        if isinstance(raw_values, list) and any(
            isinstance(x, bool) for row in raw_values if isinstance(row, list) for x in row
        ):
            raise DeltaCorrupt(f"slot {name!r}: values must be numbers, not true/false")
        try:
            values = np.asarray(raw_values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DeltaCorrupt(f"slot {name!r}: values must be a list of equal-length lists of numbers") from exc
        if len(ids) == 0 and values.size == 0:
            values = np.zeros((0, 1), dtype=np.float64)
        if values.ndim != 2 or len(values) != len(ids):
            raise DeltaCorrupt(f"slot {name!r}: values must be {len(ids)} lists of numbers, one per id")
        with np.errstate(over="ignore"):
            typed = values.astype(dtype.newbyteorder("="))
        slots[name] = SlotDelta(
            ids=ids,
            values=typed,
            updated_at_ms=_json_updated_at(entry.get("updated_at_ms", created), len(ids), name),
            tombstones=_json_ids(entry.get("tombstones", []), f"slot {name!r} tombstones"),
        )
    return SparseDelta(producer, seq, schema_hash, created, slots)


def _json_updated_at(raw: Any, n: int, name: str) -> Array:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return np.full(n, raw, dtype=np.int64)
    if isinstance(raw, list) and len(raw) == n and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        try:
            return np.asarray(raw, dtype=np.int64)
        except OverflowError as exc:
            raise DeltaCorrupt(f"slot {name!r}: updated_at_ms out of range") from exc
    raise DeltaCorrupt(f"slot {name!r}: updated_at_ms must be one integer or a list of {n} integers")


def delta_to_json(delta: SparseDelta) -> dict[str, Any]:
    """The JSON form of a delta (a dict; serialise with orjson)."""

    def ids_json(ids: Ids) -> list[Any]:
        return list(ids) if isinstance(ids, tuple) else [int(x) for x in ids]

    return {
        "format": FORMAT_VERSION,
        "producer": delta.producer,
        "seq": delta.seq,
        "schema_hash": delta.schema_hash,
        "created_at_ms": delta.created_at_ms,
        "slots": {
            name: {
                "ids": ids_json(s.ids),
                "values": np.asarray(s.values, dtype=np.float64).tolist(),
                "updated_at_ms": [int(t) for t in s.updated_at_ms],
                "tombstones": ids_json(s.tombstones),
                "dtype": "float16" if np.asarray(s.values).dtype == np.float16 else "float32",
            }
            for name, s in delta.slots.items()
        },
    }


def decode_any(payload: bytes) -> SparseDelta:
    """Binary or JSON, told apart by the magic bytes."""
    return decode_delta(payload) if is_binary_delta(payload) else delta_from_json(payload)


def int_ids(values: Sequence[int] | IntIds) -> IntIds:
    """Integer ids as the uint64 array the codecs and lookups take."""
    return np.asarray(values, dtype=np.uint64)
