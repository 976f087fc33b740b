"""What the load test sends and what it expects back, built from the manifest a server serves (GET /v1/model).

Requests follow W-500 (``/work/shared/WORKLOADS.md``): ids per slot are drawn uniformly or Zipf(1.1)-like over the
slot's cardinality in that table; a slot the table does not name gets Zipf over 10,000 ids. User id lists are
filled to their ``max_len`` (capped at the server's default ``max_list_ids``), candidate id lists hold 1-5 ids.
Everything is seeded with ``random.Random(seed)`` and needs no numpy and no project code: the load test is a
black-box HTTP client.

Zipf draws are exact (rejection-inversion sampling over ranks 1..n); rank r becomes id r - 1, so the popular ids
are the small ones.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ZIPF_S = 1.1
DEFAULT_CANDIDATES = 500
DEFAULT_K = 50
MAX_LIST_IDS = 256  # the server's default LIVERANK_MAX_LIST_IDS
CANDIDATE_LIST_LEN = (1, 5)  # W-500 tags: 1-5 ids per candidate
MARKER_BASE = 1 << 62  # marker ids sit far above every drawn id


@dataclass(frozen=True)
class IdDraw:
    """How ids of one slot are drawn: ``cardinality`` distinct ids, Zipf(1.1)-like or uniform."""

    cardinality: int
    zipf: bool


# W-500, keyed by slot name (hist_item_ids shares the item_id slot, so it draws like item_id).
W500_DRAWS: dict[str, IdDraw] = {
    "user_id": IdDraw(1_000_000, zipf=False),
    "device": IdDraw(8, zipf=False),
    "country": IdDraw(200, zipf=False),
    "hour_bucket": IdDraw(24, zipf=False),
    "user_age_bucket": IdDraw(10, zipf=False),
    "item_id": IdDraw(1_000_000, zipf=True),
    "author_id": IdDraw(100_000, zipf=True),
    "music_id": IdDraw(200_000, zipf=True),
    "tags": IdDraw(20_000, zipf=True),
    "category": IdDraw(300, zipf=False),
    "language": IdDraw(50, zipf=False),
    "duration_bucket": IdDraw(20, zipf=False),
    "age_bucket_item": IdDraw(30, zipf=False),
    **{f"item_f{i}": IdDraw(10_000, zipf=True) for i in range(12)},
}
DEFAULT_DRAW = IdDraw(10_000, zipf=True)


class ZipfSampler:
    """Exact Zipf(s) over ranks 1..n by rejection-inversion (Hörmann and Derflinger 1996, as in Apache Commons
    RNG): O(1) per draw, no table, about one ``random()`` per draw."""

    def __init__(self, n: int, s: float = ZIPF_S) -> None:
        if n < 1 or s <= 0:
            raise ValueError(f"need n >= 1 and s > 0, got n={n}, s={s}")
        self.n, self.s = n, s
        self._h_x1 = self._h_integral(1.5) - 1.0
        self._h_n = self._h_integral(n + 0.5)
        self._cut = 2.0 - self._h_integral_inverse(self._h_integral(2.5) - self._h(2.0))

    def _h(self, x: float) -> float:
        return math.exp(-self.s * math.log(x))

    def _h_integral(self, x: float) -> float:
        log_x = math.log(x)
        return _expm1_over_x((1.0 - self.s) * log_x) * log_x

    def _h_integral_inverse(self, x: float) -> float:
        t = max(-1.0, x * (1.0 - self.s))
        return math.exp(_log1p_over_x(t) * x)

    def rank(self, rng: random.Random) -> int:
        """A rank in 1..n; rank r has probability proportional to r ** -s."""
        while True:
            u = self._h_n + rng.random() * (self._h_x1 - self._h_n)
            x = self._h_integral_inverse(u)
            k = min(max(int(x + 0.5), 1), self.n)
            if k - x <= self._cut or u >= self._h_integral(k + 0.5) - self._h(k):
                return k


def _log1p_over_x(x: float) -> float:
    return math.log1p(x) / x if abs(x) > 1e-8 else 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))


def _expm1_over_x(x: float) -> float:
    return math.expm1(x) / x if abs(x) > 1e-8 else 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))


_samplers: dict[int, ZipfSampler] = {}


def draw_id(rng: random.Random, draw: IdDraw) -> int:
    """An id in 0..cardinality-1: Zipf rank r becomes id r - 1 (popular ids are small), or uniform."""
    if not draw.zipf:
        return rng.randrange(draw.cardinality)
    sampler = _samplers.get(draw.cardinality)
    if sampler is None:
        sampler = _samplers[draw.cardinality] = ZipfSampler(draw.cardinality)
    return sampler.rank(rng) - 1


@dataclass(frozen=True)
class SlotSpec:
    name: str
    dim: int
    id_kind: str  # "int", "str" or "str_hash"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    side: str  # "user" or "candidate"
    kind: str  # "id", "id_list" or "numeric"
    slot: str | None
    max_len: int | None


@dataclass(frozen=True)
class ModelView:
    """The parts of a live manifest a client needs: feature names and kinds, slots, heads, schema hash."""

    model: str
    version: str
    schema_hash: str
    slots: Mapping[str, SlotSpec]
    features: tuple[FeatureSpec, ...]
    heads: tuple[str, ...]

    @classmethod
    def from_model_json(cls, doc: Any) -> ModelView:
        """Read the body of GET /v1/model (``{"manifest": {...}, ...}``) or a bare manifest."""
        manifest = doc.get("manifest", doc) if isinstance(doc, dict) else None
        if not isinstance(manifest, dict):
            raise ValueError("GET /v1/model did not return an object with a 'manifest'")
        try:
            slots = {s["name"]: SlotSpec(str(s["name"]), int(s["dim"]), str(s["id_kind"])) for s in manifest["slots"]}
            features = tuple(
                FeatureSpec(str(f["name"]), str(f["side"]), str(f["kind"]), f.get("slot"), f.get("max_len"))
                for f in manifest["features"]
            )
            heads = tuple(str(h["name"]) for h in manifest["heads"])
            return cls(
                str(manifest["model"]), str(manifest["version"]), str(manifest["schema_hash"]), slots, features, heads
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the manifest from GET /v1/model is not readable: {exc!r}") from exc

    @property
    def item_feature(self) -> FeatureSpec:
        """The first candidate id feature: it names the items of an answer, and deltas write its slot."""
        for feature in self.features:
            if feature.side == "candidate" and feature.kind == "id" and feature.slot is not None:
                return feature
        raise ValueError(f"model {self.model!r} has no candidate id feature to put a marker row in")


class RequestFactory:
    """Seeded W-500-style ranking requests for one model (a dict, ready for JSON)."""

    def __init__(self, model: ModelView, *, seed: int, n_candidates: int = DEFAULT_CANDIDATES, k: int = DEFAULT_K):
        if n_candidates < 1 or k < 1:
            raise ValueError(f"n_candidates and k must be positive, got {n_candidates} and {k}")
        self.model = model
        self.n_candidates = n_candidates
        self.k = k
        self._rng = random.Random(seed)

    def ids(self, slot_name: str, n: int) -> list[Any]:
        draw = W500_DRAWS.get(slot_name, DEFAULT_DRAW)
        slot = self.model.slots.get(slot_name)
        drawn = [draw_id(self._rng, draw) for _ in range(n)]
        if slot is not None and slot.id_kind == "str":
            return [f"{slot_name}-{i}" for i in drawn]
        return drawn

    def _user_value(self, feature: FeatureSpec) -> Any:
        if feature.kind == "numeric" or feature.slot is None:
            return round(self._rng.random(), 4)
        if feature.kind == "id":
            return self.ids(feature.slot, 1)[0]
        return self.ids(feature.slot, min(feature.max_len or MAX_LIST_IDS, MAX_LIST_IDS))

    def _column(self, feature: FeatureSpec, n: int) -> list[Any]:
        if feature.kind == "numeric" or feature.slot is None:
            return [round(self._rng.random(), 4) for _ in range(n)]
        if feature.kind == "id":
            return self.ids(feature.slot, n)
        low, high = CANDIDATE_LIST_LEN
        high = max(low, min(high, feature.max_len or high))
        return [self.ids(feature.slot, self._rng.randint(low, high)) for _ in range(n)]

    def request(self, n_candidates: int | None = None) -> dict[str, Any]:
        n = self.n_candidates if n_candidates is None else n_candidates
        user = {f.name: self._user_value(f) for f in self.model.features if f.side == "user"}
        candidates = {f.name: self._column(f, n) for f in self.model.features if f.side == "candidate"}
        return {"user": user, "candidates": candidates, "k": min(self.k, n)}

    def encoded_pool(self, size: int) -> list[bytes]:
        """``size`` distinct request bodies, encoded once: drawing and encoding 11,000 ids per request would cost
        the load generator more CPU than the server spends ranking them."""
        return [encode(self.request()) for _ in range(size)]


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class DeltaFactory:
    """JSON deltas of one producer: a marker row whose vector changes with every delta, plus ``rows`` Zipf-drawn
    rows of the same slot (the rows ranking requests read), all with absolute values."""

    def __init__(self, model: ModelView, *, producer: str, seed: int, rows: int) -> None:
        self.model = model
        self.producer = producer
        self.rows = rows
        self._rng = random.Random(seed)
        self.slot = model.slots[model.item_feature.slot or ""]
        suffix = self._rng.getrandbits(32)
        self.marker: int | str = f"loadtest-marker-{suffix:08x}" if self.slot.id_kind == "str" else MARKER_BASE + suffix

    def _vector(self) -> list[float]:
        return [round(self._rng.gauss(0.0, 1.0), 5) for _ in range(self.slot.dim)]

    def delta(self, seq: int) -> bytes:
        draw = W500_DRAWS.get(self.slot.name, DEFAULT_DRAW)
        drawn = sorted({draw_id(self._rng, draw) for _ in range(self.rows)})
        others: list[Any] = [f"{self.slot.name}-{i}" for i in drawn] if self.slot.id_kind == "str" else drawn
        ids = [self.marker, *others]
        now_ms = time.time_ns() // 1_000_000
        return encode(
            {
                "format": 1,
                "producer": self.producer,
                "seq": seq,
                "schema_hash": self.model.schema_hash,
                "created_at_ms": now_ms,
                "slots": {
                    self.slot.name: {"ids": ids, "values": [self._vector() for _ in ids], "updated_at_ms": now_ms}
                },
            }
        )

    def probe(self, factory: RequestFactory) -> bytes:
        """A one-candidate request in which every lookup of the marker's slot is the marker: the answer's
        ``stats.unseen_ids[slot]`` is 0 exactly when the marker row is visible."""
        doc = factory.request(n_candidates=1)
        for feature in self.model.features:
            if feature.slot != self.slot.name:
                continue
            side = doc["user"] if feature.side == "user" else doc["candidates"]
            value: Any = self.marker if feature.kind == "id" else [self.marker]
            side[feature.name] = value if feature.side == "user" else [value]
        doc["k"] = 1
        return encode(doc)


def rank_answer_problem(doc: Any, k: int) -> str | None:
    """Why a /v1/rank answer is wrong (None if it is right): k items, scores sorted descending, an epoch with
    ``dense_version`` and ``sparse_seq``."""
    if not isinstance(doc, dict):
        return "the answer is not a JSON object"
    items = doc.get("items")
    if not isinstance(items, list) or len(items) != k:
        return f"expected {k} items, got {len(items) if isinstance(items, list) else type(items).__name__}"
    raw = [item.get("score") if isinstance(item, dict) else None for item in items]
    scores = [float(s) for s in raw if isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s)]
    if len(scores) != len(raw):
        return "an item has no finite score"
    if any(a < b for a, b in itertools.pairwise(scores)):
        return "scores are not sorted descending"
    epoch = doc.get("epoch")
    if not isinstance(epoch, dict) or not isinstance(epoch.get("dense_version"), str):
        return "the answer has no epoch.dense_version"
    if not isinstance(epoch.get("sparse_seq"), dict):
        return "the answer has no epoch.sparse_seq"
    return None


def archive_version(archive: bytes) -> str:
    """The ``version`` in the manifest.json of a bundle archive (tar or tar.gz)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.rsplit("/", 1)[-1] == "manifest.json":
                extracted = tar.extractfile(member)
                if extracted is not None:
                    return str(json.loads(extracted.read())["version"])
    raise ValueError("the bundle archive holds no manifest.json")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]
