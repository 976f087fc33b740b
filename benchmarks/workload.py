"""Seeded workloads for the store benchmark: the table every peer serves, and the ids its readers ask for.

Ids are 64-bit and scattered over the whole id space (row ``i`` of the generator maps to ``fmix64(i)``, a bijection,
so new ids never collide with table ids). The table keeps them in ascending order, which is also LMDB key order, so a
store can be built with appends. Popularity is decoupled from position: Zipf rank ``r`` names the row ``perm[r]`` of
a seeded permutation, so the hot rows are spread over the table (and over LMDB pages) rather than packed together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Distribution = Literal["uniform", "zipf"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("uniform", "zipf")
IntIds = np.ndarray[Any, np.dtype[np.uint64]]
Rows = np.ndarray[Any, np.dtype[np.int64]]
Vectors = np.ndarray[Any, np.dtype[np.float32]]

_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def scatter_ids(ordinals: IntIds) -> IntIds:
    """MurmurHash3's 64-bit finaliser: a bijection on uint64 that spreads consecutive ordinals over the id space."""
    x = ordinals ^ (ordinals >> _S33)
    x = x * _C1
    x ^= x >> _S33
    x = x * _C2
    x ^= x >> _S33
    return x


@dataclass(frozen=True)
class Table:
    """The rows every peer serves: ``n`` distinct ids in ascending order and their float32 vectors."""

    ids: IntIds
    vectors: Vectors
    updated_at_ms: int

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def make_table(n_rows: int, dim: int, seed: int, updated_at_ms: int) -> Table:
    ids = np.sort(scatter_ids(np.arange(n_rows, dtype=np.uint64)))
    rng = np.random.default_rng([seed, n_rows, 1])
    vectors = rng.standard_normal((n_rows, dim), dtype=np.float32)
    return Table(ids, vectors, updated_at_ms)


def fresh_ids(n_table_rows: int, start: int, count: int) -> IntIds:
    """Ids that are not in a table of ``n_table_rows`` rows: ordinals past the table's, scattered the same way."""
    return scatter_ids(np.arange(n_table_rows + start, n_table_rows + start + count, dtype=np.uint64))


class Popularity:
    """Zipf(s) popularity over a table's rows: rank r (0-based) has weight (r + 1) ** -s and names row ``perm[r]``.

    Depends only on (n, s, seed), so every sampler of one table agrees on which rows are hot.
    """

    def __init__(self, n_rows: int, zipf_s: float, seed: int) -> None:
        self.n_rows = n_rows
        self.zipf_s = zipf_s
        self.perm: Rows = np.random.default_rng([seed, n_rows, 3]).permutation(n_rows).astype(np.int64)
        cdf = np.cumsum(np.arange(1, n_rows + 1, dtype=np.float64) ** -zipf_s)
        self.cdf: np.ndarray[Any, np.dtype[np.float64]] = cdf / cdf[-1]

    def rows_at(self, quantiles: np.ndarray[Any, np.dtype[np.float64]]) -> Rows:
        ranks = np.searchsorted(self.cdf, quantiles, side="right")
        return self.perm[np.minimum(ranks, self.n_rows - 1)]


class RowSampler:
    """Draws table rows, uniformly or by Zipf popularity, from its own seeded stream."""

    def __init__(self, popularity: Popularity, seed: int, stream: int) -> None:
        self.popularity = popularity
        self.n_rows = popularity.n_rows
        self._rng = np.random.default_rng([seed, popularity.n_rows, 2, stream])

    def uniform(self, count: int) -> Rows:
        return self._rng.integers(0, self.n_rows, size=count, dtype=np.int64)

    def zipf(self, count: int) -> Rows:
        return self.popularity.rows_at(self._rng.random(count))

    def draw(self, dist: Distribution, count: int) -> Rows:
        return self.zipf(count) if dist == "zipf" else self.uniform(count)

    def distinct_zipf(self, count: int) -> Rows:
        """``count`` distinct rows drawn by Zipf popularity (a delta names each id once)."""
        if count > self.n_rows:
            raise ValueError(f"cannot draw {count} distinct rows from a table of {self.n_rows}")
        found = np.zeros(0, dtype=np.int64)
        while len(found) < count:
            found = np.union1d(found, self.zipf(max(4 * count, 1024)))
        return self._rng.permutation(found)[:count]


@dataclass(frozen=True)
class BatchSet:
    """The batches one measurement looks up: rows (to check answers) and ids (what peers are asked), one per row."""

    dist: Distribution
    batch_size: int
    rows: np.ndarray[Any, np.dtype[np.int64]]  # (n_batches, batch_size)
    ids: np.ndarray[Any, np.dtype[np.uint64]]  # (n_batches, batch_size)

    @property
    def n_keys(self) -> int:
        return int(self.ids.size)


def make_batches(table: Table, sampler: RowSampler, dist: Distribution, batch_size: int, n_batches: int) -> BatchSet:
    rows = sampler.draw(dist, batch_size * n_batches).reshape(n_batches, batch_size)
    return BatchSet(dist, batch_size, rows, np.ascontiguousarray(table.ids[rows]))
