"""The lookup peers compared by the store benchmark.

Every peer answers the same question the same way: a batch of uint64 ids in, a ``(batch, dim)`` float32 array of
their vectors out. Keys for LMDB and Redis are built per batch, as a caller of those stores would have to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from liverank.benchmarks.workload import IntIds, Vectors
from liverank.store import EmbeddingStore
from liverank.store.format import encode_int_keys, value_dtype
from liverank.store.hash_index import HashIndex, probe_numpy

LookupFn = Callable[[IntIds], Vectors]


@dataclass(frozen=True)
class PeerInfo:
    """A peer's stable name (JSON key) and what it is (table label)."""

    name: str
    label: str


HOT = PeerInfo("liverank_hot", "liverank hot (RAM tier)")
LMDB_ONLY = PeerInfo("liverank_lmdb", "liverank LMDB-only")
KERNEL = PeerInfo("kernel_probe", "kernel probe+take")
NUMPY = PeerInfo("numpy_probe", "numpy probe+take")
GETMULTI = PeerInfo("lmdb_getmulti", "py-lmdb getmulti")
REDIS = PeerInfo("redis_mget", "Redis MGET")
DICT = PeerInfo("python_dict", "dict + np.stack")
ALL_PEERS: tuple[PeerInfo, ...] = (HOT, LMDB_ONLY, KERNEL, NUMPY, GETMULTI, REDIS, DICT)


def record_dtype(dim: int) -> np.dtype[Any]:
    """One stored value (event time + float32 vector), as LMDB holds it and as the benchmark loads Redis."""
    return value_dtype(dim, np.dtype(np.float32))


def decode_values(raw: list[bytes], dim: int) -> Vectors:
    records = np.frombuffer(b"".join(raw), dtype=record_dtype(dim))
    return np.ascontiguousarray(records["v"], dtype=np.float32)


def store_lookup(store: EmbeddingStore, slot: str) -> LookupFn:
    def lookup(ids: IntIds) -> Vectors:
        return store.lookup(slot, ids).vectors

    return lookup


def kernel_probe(index: HashIndex, vectors: Vectors) -> LookupFn:
    """The compiled probe and a gather, without the store around them: the floor of the hot path."""

    def lookup(ids: IntIds) -> Vectors:
        return np.take(vectors, index.find(ids), axis=0)

    return lookup


def numpy_probe(index: HashIndex, vectors: Vectors) -> LookupFn:
    """The vectorised numpy reference probe and a gather: the "before" of the compiled kernel."""

    def lookup(ids: IntIds) -> Vectors:
        return np.take(vectors, probe_numpy(index.keys, index.rows, ids), axis=0)

    return lookup


def dict_gather(rows: Mapping[int, Vectors]) -> LookupFn:
    def lookup(ids: IntIds) -> Vectors:
        return np.stack([rows[i] for i in ids.tolist()])

    return lookup


def redis_mget(client: redis.Redis, slot_code: int, dim: int) -> LookupFn:
    def lookup(ids: IntIds) -> Vectors:
        values = client.mget(encode_int_keys(slot_code, ids))
        return decode_values([v for v in values if isinstance(v, bytes)], dim)

    return lookup


def lmdb_getmulti(env: Any, db: Any, slot_code: int, dim: int) -> LookupFn:
    """Naive py-lmdb: one read transaction and one ``Cursor.getmulti`` per batch."""

    def lookup(ids: IntIds) -> Vectors:
        with env.begin(db=db) as txn:
            pairs = txn.cursor(db=db).getmulti(encode_int_keys(slot_code, ids))
        return decode_values([value for _, value in pairs], dim)

    return lookup


def time_lookups(lookup: LookupFn, batches: np.ndarray[Any, np.dtype[np.uint64]]) -> int:
    """Nanoseconds to look up every batch (one row of ``batches`` per call), back to back."""
    start = time.perf_counter_ns()
    for ids in batches:
        lookup(ids)
    return time.perf_counter_ns() - start
