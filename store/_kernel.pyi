from typing import Any

import numpy as np

def probe(
    keys: np.ndarray[Any, Any], rows: np.ndarray[Any, Any], ids: np.ndarray[Any, Any], out: np.ndarray[Any, Any], /
) -> int: ...
def insert(
    keys: np.ndarray[Any, Any], rows: np.ndarray[Any, Any], ids: np.ndarray[Any, Any], new_rows: np.ndarray[Any, Any], /
) -> int: ...
def gather(
    keys: np.ndarray[Any, Any],
    rows: np.ndarray[Any, Any],
    ids: np.ndarray[Any, Any],
    vectors: np.ndarray[Any, Any],
    updated: np.ndarray[Any, Any],
    row_bytes: int,
    out_vectors: np.ndarray[Any, Any],
    out_updated: np.ndarray[Any, Any],
    out_rows: np.ndarray[Any, Any],
    /,
) -> int: ...
def int_ids(values: list[Any], out: np.ndarray[Any, Any], /) -> int: ...
def list_lengths(rows: list[Any], out: np.ndarray[Any, Any], /) -> int: ...
def int_id_lists(rows: list[Any], out: np.ndarray[Any, Any], /) -> int: ...
def pool_into(
    rows: np.ndarray[Any, Any],
    lengths: np.ndarray[Any, Any],
    out: np.ndarray[Any, Any],
    dim: int,
    width: int,
    col: int,
    mean: bool,
    /,
) -> None: ...
def gather_into(
    keys: np.ndarray[Any, Any],
    rows: np.ndarray[Any, Any],
    ids: np.ndarray[Any, Any],
    vectors: np.ndarray[Any, Any],
    updated: np.ndarray[Any, Any],
    default: np.ndarray[Any, Any],
    cutoff_ms: int,
    out: np.ndarray[Any, Any],
    col: int,
    lengths: np.ndarray[Any, Any] | None,
    mean: bool,
    seen: np.ndarray[Any, Any],
    seen_at: int,
    /,
) -> tuple[int, int, int, int]: ...
