"""A seeded synthetic short-video impression stream in which freshness matters.

The generative model (all of it hidden from the trainer, which sees only ids and labels):

- **Latent space.** Every user, author, tag and item has a vector in a small latent space (``latent_dim``).
- **Users** have an interest vector that *drifts*: ``u(t) = normalize(base + drift * (a cos(wt+p) + b sin(wt+p)))``,
  a closed form, so the truth at any event time is exact and cheap. Users differ in activity (Pareto weights).
- **Authors** have a latent style; an item's topic is ``normalize(0.6 style + 0.8 noise)``, so the author tells
  something about an item. **Tags** are fixed prototype vectors; an item carries the 1..``max_tags`` tags whose
  prototypes lie nearest its topic, so tags tell something too. Each item also has a hidden *quality* (click)
  and *finish quality*, which only its own id can learn.
- **Catalog.** ``initial_items`` exist at the start (their arrival spread over the past hour); then a new item
  arrives every ``1 / new_items_per_s`` simulated seconds. A ``viral_fraction`` of new items go viral: from a
  random moment 5..30 s after arrival, a viral level ``exp(-(t - start) / viral_duration_s)`` multiplies their
  exposure by ``1 + viral_exposure * level`` and adds ``viral_click_boost * level`` to their click logit.
- **Exposure.** Each simulated second, ``events_per_second`` impressions are drawn: a user by activity, an item by
  ``popularity * (recency_floor + exp(-age / recency_s)) * viral exposure``, where popularity is Pareto
  (Zipf-like) distributed. Most traffic therefore goes to items a few minutes old.
- **Labels.** ``p(click) = sigmoid(affinity_scale * u(t).v + quality + viral boost - click_bias)``;
  a click is finished with ``p = sigmoid(finish_affinity * u(t).v + finish_quality - finish_bias)``; no click,
  no finish. History: the user's last ``history_len`` clicked items, most recent first (as of the start of
  the simulated second).

A model frozen after the first part of the stream has no rows for later items (nor their quality or virality)
and stale user rows, so it ranks later traffic worse than one that keeps learning: ``tests/trainer`` measures it.

Ids are 63-bit, spread over the whole range (an odd-multiplier bijection of the index, xor a per-kind salt), so
they exercise the collisionless 64-bit path and are never small consecutive integers. Everything is a function
of ``seed``: two streams with the same seed describe the same world, so a traffic generator can use its own
instance (``candidates_for``, ``user_history`` at the training stream's time) without sharing state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from liverank.trainer.events import EventBatch, I64Array, U64Array

F64Array = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

DEFAULT_START_MS = 1_700_000_000_000
_MASK63 = (1 << 63) - 1
_ITEM_BLOCK = 256  # new items are drawn in fixed-size blocks so the catalog never depends on who asked first
_INITIAL_AGE_S = 3600.0
_VIRAL_DELAY_S = (5.0, 30.0)


class _IdCodec:
    """index <-> 63-bit id: ``((index + 1) * mult mod 2**63) xor salt``, a bijection (mult is odd)."""

    def __init__(self, mult: int, salt: int) -> None:
        self._mult = np.uint64(mult)
        self._inv = np.uint64(pow(mult, -1, 1 << 63))
        self._salt = np.uint64(salt & _MASK63)

    def encode(self, index: IntArray) -> U64Array:
        # Array arithmetic wraps modulo 2**64 without a warning; the mask reduces it modulo 2**63.
        x = (np.asarray(index, dtype=np.uint64) + np.uint64(1)) * self._mult
        return (x & np.uint64(_MASK63)) ^ self._salt

    def decode(self, ids: U64Array, n: int, what: str) -> IntArray:
        x = ((np.asarray(ids, dtype=np.uint64) ^ self._salt) * self._inv) & np.uint64(_MASK63)
        index = x.astype(np.int64) - 1
        if len(index) and (index.min() < 0 or index.max() >= n):
            raise ValueError(f"unknown {what} id(s) in {ids[(index < 0) | (index >= n)][:5]}")
        return index


_USERS = _IdCodec(0x9E3779B97F4A7C15, 0x1F0D_35A1_77B2_C3E5)
_ITEMS = _IdCodec(0xBF58476D1CE4E5B9, 0x5A3C_0E19_D2F4_8B61)
_AUTHORS = _IdCodec(0x94D049BB133111EB, 0x2B7E_1516_28AE_D2A6)
_TAGS = _IdCodec(0xD6E8FEB86659FD93, 0x3C6E_F372_FE94_F82B)


@dataclass(frozen=True)
class Candidates:
    """Items offered for one ranking request, with the candidate-side features a ranker reads."""

    item_ids: U64Array
    author_ids: U64Array
    tag_ids: U64Array  # [N, max_tags], padded
    tag_lengths: I64Array

    def __len__(self) -> int:
        return len(self.item_ids)

    def tag_lists(self) -> list[list[int]]:
        """The tags as ragged Python lists (the JSON request form)."""
        return [row[:n].tolist() for row, n in zip(self.tag_ids, self.tag_lengths, strict=True)]


class _Catalog:
    """The items: their hidden attributes, grown lazily in arrival order; arrays are over-allocated."""

    def __init__(self, capacity: int, latent_dim: int, max_tags: int) -> None:
        self.n = 0
        self.vec = np.zeros((capacity, latent_dim), dtype=np.float64)
        self.quality = np.zeros(capacity)
        self.finish_quality = np.zeros(capacity)
        self.popularity = np.zeros(capacity)
        self.author = np.zeros(capacity, dtype=np.int64)
        self.tags = np.zeros((capacity, max_tags), dtype=np.int64)
        self.n_tags = np.zeros(capacity, dtype=np.int64)
        self.arrival_ms = np.zeros(capacity, dtype=np.int64)
        self.viral_start_ms = np.full(capacity, np.iinfo(np.int64).max, dtype=np.int64)

    _COLUMNS = (
        "vec",
        "quality",
        "finish_quality",
        "popularity",
        "author",
        "tags",
        "n_tags",
        "arrival_ms",
        "viral_start_ms",
    )

    def append(self, **columns: np.ndarray[Any, Any]) -> None:
        k = len(columns["arrival_ms"])
        if self.n + k > len(self.arrival_ms):
            grow = max(self.n + k, 2 * len(self.arrival_ms))
            for name in self._COLUMNS:
                old = getattr(self, name)
                fill = np.iinfo(np.int64).max if name == "viral_start_ms" else 0
                new = np.full((grow, *old.shape[1:]), fill, dtype=old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        for name, values in columns.items():
            getattr(self, name)[self.n : self.n + k] = values
        self.n += k


class ShortVideoStream:
    """The synthetic impression stream (an ``EventSource``); see the module docstring for the model.

    ``batches`` continues where the previous call stopped: the stream is one simulated timeline. It is endless;
    take what you need with ``itertools.islice``. Not thread-safe for ``batches``; ``candidates_for``,
    ``ground_truth_*`` and ``user_history`` may be called from another thread.
    """

    def __init__(
        self,
        seed: int,
        *,
        n_users: int = 1000,
        initial_items: int = 2000,
        new_items_per_s: float = 2.0,
        n_authors: int = 300,
        n_tags: int = 40,
        latent_dim: int = 8,
        events_per_second: int = 500,
        start_ms: int = DEFAULT_START_MS,
        history_len: int = 20,
        max_tags: int = 5,
        popularity_alpha: float = 1.5,
        recency_s: float = 60.0,
        recency_floor: float = 0.05,
        viral_fraction: float = 0.05,
        viral_duration_s: float = 60.0,
        viral_exposure: float = 5.0,
        viral_click_boost: float = 2.0,
        drift_amplitude: float = 0.5,
        drift_period_s: float = 600.0,
        affinity_scale: float = 3.0,
        click_bias: float = 1.5,
        finish_affinity: float = 2.0,
        finish_bias: float = 0.3,
    ) -> None:
        if n_users < 1 or initial_items < 1 or n_authors < 1 or n_tags < max_tags or events_per_second < 1:
            raise ValueError("need n_users, initial_items, n_authors, events_per_second >= 1 and n_tags >= max_tags")
        if new_items_per_s <= 0:
            raise ValueError(f"new_items_per_s must be positive, got {new_items_per_s}")
        self.seed = seed
        self.start_ms = start_ms
        self.events_per_second = events_per_second
        self.history_len = history_len
        self.max_tags = max_tags
        self.new_items_per_s = new_items_per_s
        self._p = _Params(
            popularity_alpha,
            recency_s,
            recency_floor,
            viral_fraction,
            viral_duration_s,
            viral_exposure,
            viral_click_boost,
            affinity_scale,
            click_bias,
            finish_affinity,
            finish_bias,
        )
        world_seq, items_seq, events_seq = np.random.SeedSequence(seed).spawn(3)
        world = np.random.default_rng(world_seq)
        self._item_rng = np.random.default_rng(items_seq)
        self._rng = np.random.default_rng(events_seq)
        self._lock = threading.Lock()

        d = latent_dim
        self._user_base = _unit(world.standard_normal((n_users, d)))
        self._user_a = drift_amplitude * _unit(world.standard_normal((n_users, d)))
        self._user_b = drift_amplitude * _unit(world.standard_normal((n_users, d)))
        self._user_omega = 2 * np.pi / (drift_period_s * world.uniform(0.5, 1.5, n_users))
        self._user_phase = world.uniform(0, 2 * np.pi, n_users)
        self._user_cdf = np.cumsum(world.pareto(2.0, n_users) + 1.0)
        self._author_style = _unit(world.standard_normal((n_authors, d)))
        self._tag_proto = _unit(world.standard_normal((n_tags, d)))

        self._catalog = _Catalog(initial_items + 4 * _ITEM_BLOCK, d, max_tags)
        arrivals = np.sort(start_ms - (world.uniform(0, _INITIAL_AGE_S, initial_items) * 1000).astype(np.int64))
        self._add_items(world, arrivals, viral=False)
        self._new_items_added = 0

        # Each user's last clicked item indices: a ring buffer and a count of clicks so far.
        self._hist_ring = np.zeros((n_users, history_len), dtype=np.int64)
        self._hist_count = np.zeros(n_users, dtype=np.int64)
        self._next_second = 0
        self._buffer: EventBatch | None = None
        self._last_event_ms = start_ms

    # --- the world -----------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self._user_base)

    @property
    def now_ms(self) -> int:
        """Event time of the last event handed out by ``batches`` (the start time before any)."""
        return self._last_event_ms

    def user_ids(self, index: IntArray | None = None) -> U64Array:
        """The ids of users ``index`` (all users by default)."""
        return _USERS.encode(np.arange(self.n_users) if index is None else index)

    def n_items_at(self, at_ms: int) -> int:
        """How many items have arrived by ``at_ms``."""
        cat = self._ensure_items_until(at_ms)
        return int(np.searchsorted(cat.arrival_ms[: cat.n], at_ms, side="right"))

    def item_arrival_ms(self, item_ids: U64Array) -> I64Array:
        cat = self._catalog
        return cat.arrival_ms[_ITEMS.decode(item_ids, cat.n, "item")].copy()

    def viral_items(self, at_ms: int) -> U64Array:
        """Items whose virality has started by ``at_ms`` and is still above 10% of its peak."""
        cat = self._ensure_items_until(at_ms)
        level = self._viral_level(np.arange(cat.n), np.int64(at_ms))
        return _ITEMS.encode(np.flatnonzero(level > 0.1))

    def user_history(self, user_id: int) -> U64Array:
        """The user's last clicked items, most recent first, as of the stream's current position."""
        index = int(_USERS.decode(np.asarray([user_id], dtype=np.uint64), self.n_users, "user")[0])
        with self._lock:
            count = int(self._hist_count[index])
            n = min(count, self.history_len)
            slots = (count - 1 - np.arange(n)) % self.history_len
            return _ITEMS.encode(self._hist_ring[index, slots])

    def candidates_for(self, user_id: int, n: int, at_ms: int, rng: np.random.Generator) -> Candidates:
        """``n`` distinct items a retrieval stage could offer ``user_id`` at ``at_ms``.

        Drawn without replacement (Gumbel top-k) with log-weight ``log(exposure weight) + affinity``, so
        candidates lean towards what is popular and what the user likes, as retrieval output does.
        """
        cat = self._ensure_items_until(at_ms)
        alive = int(np.searchsorted(cat.arrival_ms[: cat.n], at_ms, side="right"))
        index = np.arange(alive)
        user = _USERS.decode(np.asarray([user_id], dtype=np.uint64), self.n_users, "user")
        affinity = cat.vec[:alive] @ self._user_vectors(user, np.asarray([at_ms]))[0]
        keys = np.log(self._exposure_weights(index, at_ms)) + affinity + rng.gumbel(size=alive)
        n = min(n, alive)
        chosen = np.argpartition(-keys, n - 1)[:n] if n < alive else index
        chosen = chosen[rng.permutation(len(chosen))]
        return Candidates(
            item_ids=_ITEMS.encode(chosen),
            author_ids=_AUTHORS.encode(cat.author[chosen]),
            tag_ids=_tag_ids(cat, chosen),
            tag_lengths=cat.n_tags[chosen].copy(),
        )

    def ground_truth_click(self, user_ids: U64Array, item_ids: U64Array, at_ms: int) -> F64Array:
        """The true click probability of each (user, item) pair at ``at_ms``; one user id broadcasts."""
        users, items, times = self._pairs(user_ids, item_ids, at_ms)
        return _sigmoid(self._click_logit(users, items, times))

    def ground_truth_finish(self, user_ids: U64Array, item_ids: U64Array, at_ms: int) -> F64Array:
        """The true probability that the pair is clicked and finished at ``at_ms``; one user id broadcasts."""
        users, items, times = self._pairs(user_ids, item_ids, at_ms)
        return _sigmoid(self._click_logit(users, items, times)) * _sigmoid(self._finish_logit(users, items, times))

    # --- the stream ----------------------------------------------------------------------------------------

    def batches(self, batch_size: int) -> Iterator[EventBatch]:
        """Endless batches of ``batch_size`` events; one simulated second is generated at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        while True:
            while self._buffer is None or len(self._buffer) < batch_size:
                second = self._generate_second()
                self._buffer = second if self._buffer is None else EventBatch.concat([self._buffer, second])
            batch = self._buffer.take(slice(0, batch_size))
            self._buffer = self._buffer.take(slice(batch_size, None))
            self._last_event_ms = int(batch.event_time_ms[-1])
            yield batch

    def _generate_second(self) -> EventBatch:
        n = self.events_per_second
        t0 = self.start_ms + 1000 * self._next_second
        self._next_second += 1
        times = t0 + (np.arange(n, dtype=np.int64) * 1000) // n
        cat = self._ensure_items_until(int(times[-1]))
        alive = int(np.searchsorted(cat.arrival_ms[: cat.n], t0, side="right"))
        rng = self._rng
        users = np.minimum(
            np.searchsorted(self._user_cdf, rng.random(n) * self._user_cdf[-1]), self.n_users - 1
        ).astype(np.int64)
        item_cdf = np.cumsum(self._exposure_weights(np.arange(alive), t0))
        items = np.minimum(np.searchsorted(item_cdf, rng.random(n) * item_cdf[-1]), alive - 1).astype(np.int64)

        click = rng.random(n) < _sigmoid(self._click_logit(users, items, times))
        finish = click & (rng.random(n) < _sigmoid(self._finish_logit(users, items, times)))

        with self._lock:
            hist_ids, hist_len = self._histories(users)
            # History is the state at the start of the second; this second's clicks join it afterwards.
            for user, item in zip(users[click].tolist(), items[click].tolist(), strict=True):
                self._hist_ring[user, self._hist_count[user] % self.history_len] = item
                self._hist_count[user] += 1

        return EventBatch(
            user_ids=_USERS.encode(users),
            hist_item_ids=hist_ids,
            hist_lengths=hist_len,
            item_ids=_ITEMS.encode(items),
            author_ids=_AUTHORS.encode(cat.author[items]),
            tag_ids=_tag_ids(cat, items),
            tag_lengths=cat.n_tags[items].copy(),
            click=click.astype(np.float32),
            finish=finish.astype(np.float32),
            event_time_ms=times,
        )

    def _histories(self, users: IntArray) -> tuple[U64Array, I64Array]:
        counts = self._hist_count[users]
        lengths = np.minimum(counts, self.history_len)
        slots = (counts[:, None] - 1 - np.arange(self.history_len)[None, :]) % self.history_len
        ids = _ITEMS.encode(self._hist_ring[users[:, None], slots])
        ids[np.arange(self.history_len)[None, :] >= lengths[:, None]] = 0  # padding
        return ids, lengths

    # --- the hidden truth ----------------------------------------------------------------------------------

    def _pairs(self, user_ids: U64Array, item_ids: U64Array, at_ms: int) -> tuple[IntArray, IntArray, IntArray]:
        cat = self._ensure_items_until(at_ms)
        items = _ITEMS.decode(np.asarray(item_ids, dtype=np.uint64), cat.n, "item")
        users = _USERS.decode(np.asarray(user_ids, dtype=np.uint64), self.n_users, "user")
        users = np.broadcast_to(users, items.shape) if len(users) == 1 else users
        if users.shape != items.shape:
            raise ValueError(f"{len(users)} user ids for {len(items)} item ids (pass one user id, or one per item)")
        return users, items, np.full(len(items), at_ms, dtype=np.int64)

    def _user_vectors(self, users: IntArray, times_ms: IntArray) -> F64Array:
        angle = self._user_omega[users] * ((times_ms - self.start_ms) / 1000.0) + self._user_phase[users]
        drift = self._user_a[users] * np.cos(angle)[:, None] + self._user_b[users] * np.sin(angle)[:, None]
        return _unit(self._user_base[users] + drift)

    def _affinity(self, users: IntArray, items: IntArray, times_ms: IntArray) -> F64Array:
        affinity: F64Array = (self._user_vectors(users, times_ms) * self._catalog.vec[items]).sum(axis=1)
        return affinity

    def _click_logit(self, users: IntArray, items: IntArray, times_ms: IntArray) -> F64Array:
        p, cat = self._p, self._catalog
        viral = p.viral_click_boost * self._viral_level(items, times_ms)
        return p.affinity_scale * self._affinity(users, items, times_ms) + cat.quality[items] + viral - p.click_bias

    def _finish_logit(self, users: IntArray, items: IntArray, times_ms: IntArray) -> F64Array:
        p = self._p
        affinity = self._affinity(users, items, times_ms)
        return p.finish_affinity * affinity + self._catalog.finish_quality[items] - p.finish_bias

    def _viral_level(self, items: IntArray, times_ms: IntArray | np.int64 | int) -> F64Array:
        since_s = (np.asarray(times_ms, dtype=np.float64) - self._catalog.viral_start_ms[items]) / 1000.0
        started = since_s >= 0
        return np.where(started, np.exp(-np.where(started, since_s, 0.0) / self._p.viral_duration_s), 0.0)

    def _exposure_weights(self, items: IntArray, at_ms: int) -> F64Array:
        p, cat = self._p, self._catalog
        age_s = np.maximum(at_ms - cat.arrival_ms[items], 0) / 1000.0
        recency = p.recency_floor + np.exp(-age_s / p.recency_s)
        return cat.popularity[items] * recency * (1.0 + p.viral_exposure * self._viral_level(items, at_ms))

    # --- catalog growth ------------------------------------------------------------------------------------

    def _ensure_items_until(self, at_ms: int) -> _Catalog:
        with self._lock:
            while self._new_item_arrival_ms(self._new_items_added) <= at_ms:
                first = self._new_items_added
                arrivals = np.array([self._new_item_arrival_ms(first + k) for k in range(_ITEM_BLOCK)])
                self._add_items(self._item_rng, arrivals, viral=True)
                self._new_items_added += _ITEM_BLOCK
            return self._catalog

    def _new_item_arrival_ms(self, k: int) -> int:
        return self.start_ms + round((k + 1) * 1000 / self.new_items_per_s)

    def _add_items(self, rng: np.random.Generator, arrival_ms: IntArray, *, viral: bool) -> None:
        k, p = len(arrival_ms), self._p
        author = rng.integers(0, len(self._author_style), k)
        vec = _unit(0.6 * self._author_style[author] + 0.8 * _unit(rng.standard_normal((k, self._tag_proto.shape[1]))))
        n_tags = rng.integers(1, self.max_tags + 1, k)
        tags = np.argsort(-(vec @ self._tag_proto.T), axis=1)[:, : self.max_tags]
        quality = rng.normal(0.0, 0.8, k)
        finish_quality = 0.5 * quality + rng.normal(0.0, 0.5, k)
        popularity = rng.pareto(p.popularity_alpha, k) + 1.0
        goes_viral = rng.random(k) < (p.viral_fraction if viral else 0.0)
        delay_ms = (rng.uniform(*_VIRAL_DELAY_S, k) * 1000).astype(np.int64)
        viral_start = np.where(goes_viral, arrival_ms + delay_ms, np.iinfo(np.int64).max)
        self._catalog.append(
            vec=vec,
            quality=quality,
            finish_quality=finish_quality,
            popularity=popularity,
            author=author,
            tags=tags,
            n_tags=n_tags,
            arrival_ms=arrival_ms,
            viral_start_ms=viral_start,
        )


@dataclass(frozen=True)
class _Params:
    popularity_alpha: float
    recency_s: float
    recency_floor: float
    viral_fraction: float
    viral_duration_s: float
    viral_exposure: float
    viral_click_boost: float
    affinity_scale: float
    click_bias: float
    finish_affinity: float
    finish_bias: float


def _tag_ids(cat: _Catalog, items: IntArray) -> U64Array:
    ids = _TAGS.encode(cat.tags[items])
    ids[np.arange(ids.shape[1])[None, :] >= cat.n_tags[items][:, None]] = 0  # padding
    return ids


def _unit(x: F64Array) -> F64Array:
    norms: F64Array = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _sigmoid(x: F64Array) -> F64Array:
    out: F64Array = 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow warning for large |x|
    return out
