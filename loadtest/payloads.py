"""What the load test sends and what it expects back, built from the manifest a server serves (GET /v1/model).

Requests follow W-500 (``/work/shared/WORKLOADS.md``): ids per slot are drawn uniformly or Zipf(1.1)-like over the
slot's cardinality in that table (``w500_draws``: the largest slots' size is a setting, 1M by default, so that a
store pre-filled by ``liverank bench fill`` holds every id drawn); a slot the table does not name gets Zipf over
10,000 ids. User id lists are filled to their ``max_len`` (capped at the server's default ``max_list_ids``),
candidate id lists hold 1-5 ids. Deltas (``DeltaFactory``: a marker row plus Zipf rows of the item slot, or D-10k)
are written in the documented binary wire format with ``struct``, ``array`` and ``zlib``. Everything is seeded with
``random.Random(seed)`` and needs no numpy and no project code: the load test is a black-box HTTP client.

Zipf draws are exact (rejection-inversion sampling over ranks 1..n); rank r becomes id r - 1, so the popular ids
are the small ones.
"""

from __future__ import annotations

import array
import io
import itertools
import json
import math
import random
import struct
import sys
import tarfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ZIPF_S = 1.1
DEFAULT_CANDIDATES = 500
DEFAULT_K = 50
MAX_LIST_IDS = 256  # the server's default LIVERANK_MAX_LIST_IDS
CANDIDATE_LIST_LEN = (1, 5)  # W-500 tags: 1-5 ids per candidate
MARKER_BASE = 1 << 62  # marker ids sit far above every drawn id
BINARY_DELTA_MAGIC = b"LRDL"


@dataclass(frozen=True)
class IdDraw:
    """How ids of one slot are drawn: ``cardinality`` distinct ids, Zipf(1.1)-like or uniform."""

    cardinality: int
    zipf: bool


LARGEST_IDS = 1_000_000  # ids of the largest W-500 slots (user_id, item_id): 1M, or 10M in the large variant
# W-500, keyed by slot name (hist_item_ids shares the item_id slot, so it draws like item_id). Cardinality None: one
# of the largest slots, sized by the run (``w500_draws``).
_W500_SLOTS: dict[str, tuple[int | None, bool]] = {
    "user_id": (None, False),
    "device": (8, False),
    "country": (200, False),
    "hour_bucket": (24, False),
    "user_age_bucket": (10, False),
    "item_id": (None, True),
    "author_id": (100_000, True),
    "music_id": (200_000, True),
    "tags": (20_000, True),
    "category": (300, False),
    "language": (50, False),
    "duration_bucket": (20, False),
    "age_bucket_item": (30, False),
    **{f"item_f{i}": (10_000, True) for i in range(12)},
}


def w500_draws(largest: int = LARGEST_IDS) -> dict[str, IdDraw]:
    """How each W-500 slot is drawn when the largest slots hold ``largest`` ids: user_id and item_id over
    ``largest``, every other slot over its W-500 cardinality capped at ``largest``. ``liverank bench fill --rows
    largest`` stores exactly these ids (0 .. cardinality - 1 of every slot), so every id a request names exists."""
    if largest < 1:
        raise ValueError(f"the largest slots need at least one id, got {largest}")
    return {
        name: IdDraw(largest if fixed is None else min(fixed, largest), zipf)
        for name, (fixed, zipf) in _W500_SLOTS.items()
    }


W500_DRAWS: dict[str, IdDraw] = w500_draws()
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
    """Seeded W-500-style ranking requests for one model (a dict, ready for JSON); ``draws``: how each slot's ids are
    drawn (``w500_draws``; a slot it does not name: ``DEFAULT_DRAW``)."""

    def __init__(
        self,
        model: ModelView,
        *,
        seed: int,
        n_candidates: int = DEFAULT_CANDIDATES,
        k: int = DEFAULT_K,
        draws: Mapping[str, IdDraw] = W500_DRAWS,
    ):
        if n_candidates < 1 or k < 1:
            raise ValueError(f"n_candidates and k must be positive, got {n_candidates} and {k}")
        self.model = model
        self.n_candidates = n_candidates
        self.k = k
        self.draws = draws
        self._rng = random.Random(seed)

    def ids(self, slot_name: str, n: int) -> list[Any]:
        draw = self.draws.get(slot_name, DEFAULT_DRAW)
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


@dataclass(frozen=True)
class DeltaMix:
    """How a delta stream spreads its rows: ``shares`` of the rows per slot (None: all in the marker's slot), and
    ``new_fraction`` of each slot's rows on ids no request draws (past the slot's cardinality)."""

    shares: Mapping[str, float] | None
    new_fraction: float
    default_rows: int


# ``marker``: Zipf-popular existing rows of the marker's slot; ``d10k``: WORKLOADS.md's D-10k stream.
DELTA_STREAMS: dict[str, DeltaMix] = {
    "marker": DeltaMix(None, 0.0, 100),
    "d10k": DeltaMix({"item_id": 0.7, "author_id": 0.2, "tags": 0.1}, 0.05, 10_000),
}
DELTA_ID_POOL = 16  # distinct id draws per slot a stream cycles through (drawing 10k distinct Zipf ids costs ~50 ms)


@dataclass(frozen=True)
class SlotRows:
    """One slot's rows in every delta of a stream: ``existing`` distinct drawn ids, ``new`` never-drawn ids, and the
    marker first if ``marker``."""

    slot: SlotSpec
    draw: IdDraw
    existing: int
    new: int
    marker: bool

    @property
    def n(self) -> int:
        return int(self.marker) + self.existing + self.new


class DeltaFactory:
    """Binary deltas (the wire format of ``liverank.store.format``, written here with the standard library) of one
    producer: a marker row in the slot of the model's item feature, whose vector changes with every delta, plus
    ``rows`` rows spread as ``stream`` says (``DELTA_STREAMS``), all with absolute values.

    Cheap per delta, since the load generator shares the machine with the server: each slot's distinct Zipf draws
    are made for the first ``DELTA_ID_POOL`` deltas and then reused in turn, the vectors are one seeded block per
    slot rotated by a different number of rows each delta, and only the new ids, the header and the checksum are
    made afresh (a 10k-row delta: about 1.5 MB, a few ms)."""

    def __init__(
        self,
        model: ModelView,
        *,
        producer: str,
        seed: int,
        rows: int | None = None,
        stream: str = "marker",
        draws: Mapping[str, IdDraw] = W500_DRAWS,
    ) -> None:
        if stream not in DELTA_STREAMS:
            raise ValueError(f"delta stream must be one of {sorted(DELTA_STREAMS)}, got {stream!r}")
        mix = DELTA_STREAMS[stream]
        self.model = model
        self.producer = producer
        self.stream = stream
        self.rows = mix.default_rows if rows is None else rows
        self._rng = random.Random(seed)
        self.slot = model.slots[model.item_feature.slot or ""]
        suffix = self._rng.getrandbits(32)
        self.marker: int | str = f"loadtest-marker-{suffix:08x}" if self.slot.id_kind == "str" else MARKER_BASE + suffix
        shares = mix.shares if mix.shares is not None else {self.slot.name: 1.0}
        missing = sorted(set(shares) - set(model.slots))
        if missing:
            raise ValueError(f"the {stream} stream writes slots {missing} that model {model.model!r} does not have")
        self.plan: dict[str, SlotRows] = {}
        for name in dict.fromkeys([self.slot.name, *shares]):
            draw = draws.get(name, DEFAULT_DRAW)
            n = round(self.rows * shares.get(name, 0.0))
            new = round(n * mix.new_fraction)
            # Distinct Zipf draws: at most half the slot's ids, or collecting the rarest would never end (tiny stores).
            existing = min(n - new, max(draw.cardinality // 2, 1))
            self.plan[name] = SlotRows(model.slots[name], draw, existing, new, name == self.slot.name)
        self._vectors = {name: _float32_block(self._rng, rows.n * rows.slot.dim) for name, rows in self.plan.items()}
        self._pool: list[dict[str, list[int]]] = []
        self._made = 0
        self._new_issued = dict.fromkeys(self.plan, 0)

    def _existing_ids(self) -> dict[str, list[int]]:
        if len(self._pool) < DELTA_ID_POOL:
            drawn = {name: _distinct(self._rng, rows.draw, rows.existing) for name, rows in self.plan.items()}
            self._pool.append(drawn)
            return drawn
        return self._pool[self._made % DELTA_ID_POOL]

    def delta(self, seq: int) -> bytes:
        """The next delta, numbered ``seq``, in binary form (``application/octet-stream``)."""
        existing = self._existing_ids()
        self._made += 1
        now_ms = time.time_ns() // 1_000_000
        blocks: list[tuple[SlotRows, list[Any], bytes]] = []
        for name, rows in self.plan.items():
            start = rows.draw.cardinality + self._new_issued[name]
            self._new_issued[name] += rows.new
            ids: list[Any] = [*existing[name], *range(start, start + rows.new)]
            if rows.slot.id_kind == "str":
                ids = [f"{name}-{i}" for i in ids]
            if rows.marker:
                ids.insert(0, self.marker)
            vectors = self._vectors[name]
            shift = (self._made * 7919 % max(rows.n, 1)) * rows.slot.dim * 4
            blocks.append((rows, ids, vectors[shift:] + vectors[:shift]))
        return encode_binary_delta(self.producer, seq, self.model.schema_hash, now_ms, blocks)

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


def _float32_block(rng: random.Random, n: int) -> bytes:
    return _little_endian(array.array("f", (rng.gauss(0.0, 1.0) for _ in range(n))))


def _little_endian(values: array.array[Any]) -> bytes:
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def _distinct(rng: random.Random, draw: IdDraw, n: int) -> list[int]:
    """``n`` distinct ids drawn as ``draw`` says, in the order first drawn (n <= the slot's cardinality)."""
    seen: dict[int, None] = {}
    while len(seen) < n:
        seen[draw_id(rng, draw)] = None
    return list(seen)


def _ids_bytes(kind: str, ids: Sequence[Any]) -> bytes:
    if kind == "str":
        encoded = [str(i).encode() for i in ids]
        return _little_endian(array.array("I", map(len, encoded))) + b"".join(encoded)
    return _little_endian(array.array("Q", ids))


def encode_binary_delta(
    producer: str, seq: int, schema_hash: str, created_at_ms: int, slots: Sequence[tuple[SlotRows, list[Any], bytes]]
) -> bytes:
    """A delta in the binary wire format (format 1, ``liverank.store.format``): preamble, CRC32, JSON header, then
    per slot its ids, float32 values (``slots``: the plan, the ids and the values' bytes), updated_at_ms, no
    tombstones. Every row carries ``created_at_ms`` as its update time."""
    headers: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for rows, ids, values in slots:
        kind = "str" if rows.slot.id_kind == "str" else "int"
        id_bytes = _ids_bytes(kind, ids)
        headers.append(
            {
                "name": rows.slot.name,
                "n": len(ids),
                "dim": rows.slot.dim,
                "dtype": "float32",
                "id_kind": kind,
                "ids_bytes": len(id_bytes),
                "n_tombstones": 0,
                "tombstone_bytes": 0,
            }
        )
        chunks += [id_bytes, values, _little_endian(array.array("q", [created_at_ms])) * len(ids)]
    header = encode(
        {"producer": producer, "seq": seq, "schema_hash": schema_hash, "created_at_ms": created_at_ms, "slots": headers}
    )
    data = b"".join(chunks)
    lead = struct.pack("<4sHHI", BINARY_DELTA_MAGIC, 1, 0, len(header))
    crc = zlib.crc32(data, zlib.crc32(header, zlib.crc32(lead)))
    return lead + struct.pack("<I", crc) + header + data


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
