"""Slot configuration: what one embedding table looks like (id kind, dim, storage dtype, TTL, unseen default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from liverank.store.errors import SlotConflict

IdKind = Literal["int", "str", "str_hash"]
StorageDtype = Literal["float32", "float16"]

ID_KINDS: tuple[str, ...] = ("int", "str", "str_hash")
STORAGE_DTYPES: tuple[str, ...] = ("float32", "float16")
MAX_SLOT_NAME_BYTES = 128
MAX_DIM = 4096


@dataclass(frozen=True)
class SlotConfig:
    """One embedding table.

    ``id_kind``: ``int`` keeps unsigned 64-bit ids exactly; ``str`` keeps string ids exactly (variable-length key);
    ``str_hash`` maps strings to a documented 64-bit hash (``liverank.store.format.hash_str_id``) and stores them
    as ints,
    trading exactness for speed where a slot asks for it.
    ``default``: the vector an unseen (or expired) id reads as: ``None`` means zeros, otherwise a learned "unknown" row.
    ``ttl_s``: rows whose last-update (event) time is older than this read as unseen and are swept; ``None``: never.
    """

    name: str
    dim: int
    dtype: StorageDtype = "float32"
    id_kind: IdKind = "int"
    ttl_s: float | None = None
    default: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        name_bytes = self.name.encode("utf-8")
        if not name_bytes or len(name_bytes) > MAX_SLOT_NAME_BYTES:
            raise SlotConflict(f"slot name must be 1..{MAX_SLOT_NAME_BYTES} UTF-8 bytes, got {self.name!r}")
        if not isinstance(self.dim, int) or not 1 <= self.dim <= MAX_DIM:
            raise SlotConflict(f"slot {self.name!r}: dim must be an integer in 1..{MAX_DIM}, got {self.dim!r}")
        if self.dtype not in STORAGE_DTYPES:
            raise SlotConflict(f"slot {self.name!r}: dtype must be one of {STORAGE_DTYPES}, got {self.dtype!r}")
        if self.id_kind not in ID_KINDS:
            raise SlotConflict(f"slot {self.name!r}: id_kind must be one of {ID_KINDS}, got {self.id_kind!r}")
        if self.ttl_s is not None and not self.ttl_s > 0:
            raise SlotConflict(f"slot {self.name!r}: ttl_s must be positive or None, got {self.ttl_s!r}")
        if self.default is not None:
            if len(self.default) != self.dim:
                raise SlotConflict(
                    f"slot {self.name!r}: default has {len(self.default)} values, the slot's dim is {self.dim}"
                )
            if not np.all(np.isfinite(np.asarray(self.default, dtype=np.float64))):
                raise SlotConflict(f"slot {self.name!r}: default contains NaN or infinity")

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float16) if self.dtype == "float16" else np.dtype(np.float32)

    @property
    def row_bytes(self) -> int:
        return self.dim * self.np_dtype.itemsize

    @property
    def ttl_ms(self) -> int | None:
        return None if self.ttl_s is None else int(self.ttl_s * 1000)

    def default_vector(self) -> np.ndarray[Any, np.dtype[Any]]:
        """The row unseen ids read as, in the slot's storage dtype."""
        if self.default is None:
            return np.zeros(self.dim, dtype=self.np_dtype)
        return np.asarray(self.default, dtype=self.np_dtype)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "dtype": self.dtype,
            "id_kind": self.id_kind,
            "ttl_s": self.ttl_s,
            "default": None if self.default is None else list(self.default),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlotConfig:
        default = data.get("default")
        return cls(
            name=str(data["name"]),
            dim=int(data["dim"]),
            dtype=data.get("dtype", "float32"),
            id_kind=data.get("id_kind", "int"),
            ttl_s=None if data.get("ttl_s") is None else float(data["ttl_s"]),
            default=None if default is None else tuple(float(x) for x in default),
        )

    def storage_compatible(self, other: SlotConfig) -> bool:
        """Whether rows written under ``other`` can be read under this config (TTL and default may change)."""
        return (self.name, self.dim, self.dtype, self.id_kind) == (
            other.name,
            other.dim,
            other.dtype,
            other.id_kind,
        )
