"""liverank's embedding store: the on-disk contract and the only code that touches LMDB.

The public surface is what this module exports; everything else is private to the package.
"""

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
