"""The store's exception tree, drawn once.

Every error carries a stable machine-readable ``code`` (what an HTTP shell maps to a status) and a message meant
for the person who sent the bad input. No HTTP status lives here: the serving API owns that map.
"""

from __future__ import annotations

from liverank.errors import LiverankError


class StoreError(LiverankError):
    """Base of every error the store raises on purpose."""

    code = "store_error"


# --- a delta (or its payload) is not acceptable; nothing was written -----------------------------------------


class DeltaError(StoreError):
    """A sparse delta was refused before anything was written."""

    code = "invalid_delta"


class DeltaCorrupt(DeltaError):
    """The payload is truncated or its structure cannot be parsed."""

    code = "delta_corrupt"


class ChecksumMismatch(DeltaError):
    """The payload's checksum does not match its content."""

    code = "checksum_mismatch"


class UnsupportedFormat(DeltaError):
    """The payload names a format version this build cannot read."""

    code = "unsupported_format"


class UnknownSlot(DeltaError):
    """The delta (or a lookup) names a slot the store does not have."""

    code = "unknown_slot"


class DimMismatch(DeltaError):
    """Vectors have a different dimension from the slot's."""

    code = "dim_mismatch"


class DtypeMismatch(DeltaError):
    """Vectors are stored in a different dtype from the slot's."""

    code = "dtype_mismatch"


class NonFiniteValues(DeltaError):
    """Vectors contain NaN or infinity (or overflow the slot's storage dtype)."""

    code = "non_finite_values"


class IdOutOfRange(DeltaError):
    """An id does not fit the slot's key space (negative, above 2**64 - 1, or a string too long for a key)."""

    code = "id_out_of_range"


class SchemaMismatch(DeltaError):
    """The delta was built for a different model schema from the store's."""

    code = "schema_mismatch"


# --- sequence bookkeeping -------------------------------------------------------------------------------------


class SequenceGap(StoreError):
    """The delta's sequence skips ahead of the producer's next expected sequence."""

    code = "sequence_gap"

    def __init__(self, producer: str, expected: int, got: int) -> None:
        super().__init__(
            f"producer {producer!r} sent sequence {got} but the store expects {expected}; resend from {expected}"
        )
        self.producer = producer
        self.expected = expected
        self.got = got


# --- capacity -------------------------------------------------------------------------------------------------


class StoreFull(StoreError):
    """The LMDB map has no room for new rows. Deletes still work; raise ``map_size_bytes`` to grow."""

    code = "store_full"


# --- opening and lifecycle ------------------------------------------------------------------------------------


class StoreOpenError(StoreError):
    """The store directory cannot be opened as a liverank store."""

    code = "store_open_failed"


class StoreAlreadyOpen(StoreOpenError):
    """LMDB allows one environment per path per process; this path is already open here."""

    code = "store_already_open"


class NotAStore(StoreOpenError):
    """The directory holds something that is not a liverank store (or a store of another format version)."""

    code = "not_a_store"


class SlotConflict(StoreError):
    """A slot is declared with a configuration that contradicts the one the store already has."""

    code = "slot_conflict"


class StoreClosed(StoreError):
    """The store was closed, or this process was forked after it was opened (LMDB handles do not survive fork)."""

    code = "store_closed"


# --- the model bundle's manifest ------------------------------------------------------------------------------


class ManifestInvalid(StoreError):
    """A bundle manifest is malformed or inconsistent (features, slots, heads, schema hash)."""

    code = "invalid_manifest"
