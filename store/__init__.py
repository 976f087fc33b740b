"""liverank's embedding store: the on-disk contract and the only code that touches LMDB.

The public surface is what this module exports; everything else is private to the package. Exports load lazily
(PEP 562), so that code needing only the pure codecs (the exporter imports ``store.format`` and
``store.manifest``) never loads LMDB.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store.embedding_store import EmbeddingStore, Lookup, SlotLookup, StoreStats
    from store.errors import (
        ChecksumMismatch,
        DeltaCorrupt,
        DeltaError,
        DimMismatch,
        DtypeMismatch,
        IdOutOfRange,
        ManifestInvalid,
        NonFiniteValues,
        NotAStore,
        SchemaMismatch,
        SequenceGap,
        SlotConflict,
        StoreAlreadyOpen,
        StoreClosed,
        StoreError,
        StoreFull,
        StoreOpenError,
        UnknownSlot,
        UnsupportedFormat,
    )
    from store.format import (
        FORMAT_VERSION,
        SlotDelta,
        SparseDelta,
        decode_any,
        decode_delta,
        delta_from_json,
        delta_to_json,
        encode_delta,
        hash_str_id,
    )
    from store.inbox import EnqueueResult, Inbox, InboxEntry, InboxFull
    from store.lmdb_store import ApplyResult, Durability
    from store.slots import SlotConfig

_HOMES = {
    "store.embedding_store": ("EmbeddingStore", "Lookup", "SlotLookup", "StoreStats"),
    "store.errors": (
        "ChecksumMismatch",
        "DeltaCorrupt",
        "DeltaError",
        "DimMismatch",
        "DtypeMismatch",
        "IdOutOfRange",
        "ManifestInvalid",
        "NonFiniteValues",
        "NotAStore",
        "SchemaMismatch",
        "SequenceGap",
        "SlotConflict",
        "StoreAlreadyOpen",
        "StoreClosed",
        "StoreError",
        "StoreFull",
        "StoreOpenError",
        "UnknownSlot",
        "UnsupportedFormat",
    ),
    "store.format": (
        "FORMAT_VERSION",
        "SlotDelta",
        "SparseDelta",
        "decode_any",
        "decode_delta",
        "delta_from_json",
        "delta_to_json",
        "encode_delta",
        "hash_str_id",
    ),
    "store.inbox": ("EnqueueResult", "Inbox", "InboxEntry", "InboxFull"),
    "store.lmdb_store": ("ApplyResult", "Durability"),
    "store.slots": ("SlotConfig",),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "FORMAT_VERSION",
    "ApplyResult",
    "ChecksumMismatch",
    "DeltaCorrupt",
    "DeltaError",
    "DimMismatch",
    "DtypeMismatch",
    "Durability",
    "EmbeddingStore",
    "EnqueueResult",
    "IdOutOfRange",
    "Inbox",
    "InboxEntry",
    "InboxFull",
    "Lookup",
    "ManifestInvalid",
    "NonFiniteValues",
    "NotAStore",
    "SchemaMismatch",
    "SequenceGap",
    "SlotConfig",
    "SlotConflict",
    "SlotDelta",
    "SlotLookup",
    "SparseDelta",
    "StoreAlreadyOpen",
    "StoreClosed",
    "StoreError",
    "StoreFull",
    "StoreOpenError",
    "StoreStats",
    "UnknownSlot",
    "UnsupportedFormat",
    "decode_any",
    "decode_delta",
    "delta_from_json",
    "delta_to_json",
    "encode_delta",
    "hash_str_id",
]
