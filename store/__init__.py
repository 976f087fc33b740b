"""liverank's embedding store: the on-disk contract and the only code that touches LMDB.

The public surface is what this module exports; everything else is private to the package. Exports load lazily
(PEP 562), so that code needing only the pure codecs (the exporter imports ``liverank.store.format`` and
``liverank.store.manifest``) never loads LMDB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from liverank._exports import lazy_exports

if TYPE_CHECKING:
    from liverank.store.embedding_store import EmbeddingStore, Lookup, SlotLookup, StoreStats
    from liverank.store.errors import (
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
    from liverank.store.format import (
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
    from liverank.store.inbox import EnqueueResult, Inbox, InboxEntry, InboxFull
    from liverank.store.lmdb_store import ApplyResult, Durability
    from liverank.store.slots import SlotConfig

_HOMES = {
    "liverank.store.embedding_store": ("EmbeddingStore", "Lookup", "SlotLookup", "StoreStats"),
    "liverank.store.errors": (
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
    "liverank.store.format": (
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
    "liverank.store.inbox": ("EnqueueResult", "Inbox", "InboxEntry", "InboxFull"),
    "liverank.store.lmdb_store": ("ApplyResult", "Durability"),
    "liverank.store.slots": ("SlotConfig",),
}
__getattr__ = lazy_exports(__name__, _HOMES)


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
