"""A ranking request's JSON body to the document ``parse_rank_request`` takes, with the candidates' integer id
columns read straight into uint64 arrays by a small C pass (``_rank_body.c``) and the rest parsed by orjson.

Why: orjson makes one Python int per id (11,029 in a W-500 request, most of them 19-digit hashes), the kernel then
copies those ints into numpy, and the document is freed after the answer. Under load these were 0.34, 0.05-0.12 and
0.12 ms of a worker's GIL time per request (py-spy, 2 workers, 1M rows, 2026-11-30; BENCHMARKS.md, seventh run).
The C pass reads the id columns' digits into uint64 buffers and hands back the body with each such array replaced
by ``0``; orjson parses that much smaller rest, and the arrays take the zeros' places.

Same document as orjson's, or orjson decides:

- the C pass takes a column only when it is, token for token, a flat JSON array of integers in 0..2**64-1 (no
  sign, fraction, exponent or leading zero: numbers orjson reads as exactly those ints) under a unique, unescaped
  key of the integer id features the caller names, inside a unique, unescaped top-level ``"candidates"`` object.
  Anything else (another shape, a repeated key, an escaped key, any other number, nothing to take, a manifest
  with more than 64 such features) and the whole body goes to orjson, which answers as it always did;
- the body with the array and the body with a ``0`` in its place are valid or invalid together: the rest is byte
  for byte the same, and a complete array and a ``0`` are both complete values at the same place. Their documents
  differ only in that value. So orjson's parse of the rest is the validation of everything the C pass did not take,
  and if it fails, orjson parses the original body to raise the error (and its positions) a client would get;
- the C pass never needs to find errors outside the arrays it takes (it matches brackets by count and skips what
  it does not take): orjson parses every byte it does not take.

``parse_rank_request`` accepts an array wherever it accepts an id column; if the live manifest changed between the
two calls and the feature is no longer an integer id, it turns the array back into a list and validates that.
``tests/serving/test_rank_body.py`` checks documents and errors against orjson's, on W-500 bodies, generated columns
of every kind of value, and byte-mutated bodies.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson

from liverank.serving.errors import InvalidJson
from liverank.serving.manifest_cache import per_manifest
from liverank.serving.request import takes_uint64_ids
from liverank.store.manifest import Manifest

log = logging.getLogger(__name__)

_split: Any
try:
    from liverank.serving import _rank_body

    _split = _rank_body.split_id_columns
except ImportError:  # pragma: no cover - every install builds it; without it orjson reads the whole body
    _split = None
    log.warning("liverank.serving._rank_body is not built: ranking bodies are parsed by orjson alone")


def load_json(body: bytes) -> Any:
    """orjson's document; ``InvalidJson`` (a 400) if the body is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from exc


def load_rank_json(body: bytes, manifest: Manifest) -> Any:
    """orjson's document of ``body``, but for ``manifest``'s integer id candidate columns, which are uint64 arrays
    when they are flat arrays of integers in range (see the module docstring). ``InvalidJson`` if not JSON."""
    names = id_columns(manifest)
    split = _split(body, names) if _split is not None and names else None
    if split is None:
        return load_json(body)
    rest, columns = split
    try:
        doc = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return load_json(body)  # raises the original body's error
    candidates = doc["candidates"]  # a valid rest has it: the C pass found it, unique, at the top level
    for name, ids in columns.items():
        candidates[name.decode()] = np.frombuffer(ids, dtype=np.uint64)
    return doc


@per_manifest
def id_columns(manifest: Manifest) -> tuple[bytes, ...]:
    """The raw keys of the candidate features whose column may be read as uint64 ids (``takes_uint64_ids``)."""
    return tuple(
        f.name.encode()
        for f in manifest.candidate_features
        if takes_uint64_ids(f, None if f.slot is None else manifest.slot(f.slot))
    )
