"""Locust users for any liverank server: ranking load, live deltas with push-to-visible, bundle swaps.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000            # web UI
    LIVERANK_ADMIN_TOKEN=... LIVERANK_BUNDLE_ARCHIVE=v2.tar.gz \\
        locust -f loadtest/locustfile.py --headless -u 6 -r 6 -t 60s --host http://127.0.0.1:8000

- ``RankingUser``: W-500-style requests (``liverank.loadtest.payloads``) built from GET /v1/model; every answer is
  checked
  (200, k items, scores descending, an epoch with dense_version and sparse_seq). Stats name: ``/v1/rank``.
- ``DeltaUser`` (one, needs the admin token): a binary delta every ``LIVERANK_DELTA_INTERVAL_S`` with its own
  producer and increasing seq (``LIVERANK_DELTA_STREAM``: ``marker``, Zipf rows of the item slot, or ``d10k``,
  WORKLOADS.md's D-10k: 10,000 rows over item_id 70 %, author_id 20 %, tags 10 %, 5 % of them new ids), plus a marker
  row in the item slot; then probes the marker until the answer's ``epoch.sparse_seq[producer]`` reaches the seq; the
  time from starting the push to that answer is reported as ``VISIBLE push-to-visible``.
- ``BundleSwapUser`` (one, needs the token and ``LIVERANK_BUNDLE_ARCHIVE``): uploads the archives in turn every
  ``LIVERANK_SWAP_INTERVAL_S``.

Settings (environment): ``LIVERANK_CANDIDATES`` (500), ``LIVERANK_K`` (50), ``LIVERANK_SEED`` (0),
``LIVERANK_LARGEST_IDS`` (1000000: ids of the largest slots, user_id and item_id, are drawn from 0 to this minus
one; the other slots from 0 to their W-500 cardinality capped at it; ``liverank bench fill --rows`` with the same
number stores every id a request can name), ``LIVERANK_RANK_RPS_PER_USER`` (0: no wait), ``LIVERANK_POOL_SIZE`` (64
distinct request bodies), ``LIVERANK_DELTA_INTERVAL_S`` (1.0), ``LIVERANK_DELTA_STREAM`` (``marker`` or ``d10k``),
``LIVERANK_DELTA_ROWS`` (rows besides the marker: 100 for ``marker``, 10000 for ``d10k``), ``LIVERANK_DELTA_USERS``
(1), ``LIVERANK_PRODUCER`` (default: a fresh ``loadtest-<hex>`` per delta user), ``LIVERANK_VISIBLE_TIMEOUT_S`` (30),
``LIVERANK_PROBE_INTERVAL_S`` (0.01), ``LIVERANK_ADMIN_TOKEN``, ``LIVERANK_BUNDLE_ARCHIVE`` (paths joined by
``os.pathsep``), ``LIVERANK_SWAP_INTERVAL_S`` (60), ``LIVERANK_SHAPE`` (``step``, ``spike``, ``all``; see
``liverank.loadtest.shapes``), ``LIVERANK_TIMELINE_JSON`` (write every request's time and latency there at exit).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from locust import FastHttpUser, constant, constant_pacing, constant_throughput, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment

from liverank.loadtest import shapes
from liverank.loadtest.payloads import (
    DEFAULT_CANDIDATES,
    DEFAULT_K,
    LARGEST_IDS,
    DeltaFactory,
    ModelView,
    RequestFactory,
    archive_version,
    encode,
    rank_answer_problem,
    w500_draws,
)

log = logging.getLogger(__name__)

RANK = "/v1/rank"
PROBE = "/v1/rank probe"
VISIBLE = ("VISIBLE", "push-to-visible")


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


CANDIDATES = _env_int("LIVERANK_CANDIDATES", DEFAULT_CANDIDATES)
K = _env_int("LIVERANK_K", DEFAULT_K)
SEED = _env_int("LIVERANK_SEED", 0)
DRAWS = w500_draws(_env_int("LIVERANK_LARGEST_IDS", LARGEST_IDS))
RANK_RPS_PER_USER = _env_float("LIVERANK_RANK_RPS_PER_USER", 0.0)
POOL_SIZE = _env_int("LIVERANK_POOL_SIZE", 64)
DELTA_INTERVAL_S = _env_float("LIVERANK_DELTA_INTERVAL_S", 1.0)
DELTA_STREAM = os.environ.get("LIVERANK_DELTA_STREAM") or "marker"
DELTA_ROWS = int(os.environ["LIVERANK_DELTA_ROWS"]) if os.environ.get("LIVERANK_DELTA_ROWS") else None
DELTA_USERS = _env_int("LIVERANK_DELTA_USERS", 1)
PRODUCER = os.environ.get("LIVERANK_PRODUCER", "")
VISIBLE_TIMEOUT_S = _env_float("LIVERANK_VISIBLE_TIMEOUT_S", 30.0)
PROBE_INTERVAL_S = _env_float("LIVERANK_PROBE_INTERVAL_S", 0.01)
SWAP_INTERVAL_S = _env_float("LIVERANK_SWAP_INTERVAL_S", 60.0)
ADMIN_TOKEN = os.environ.get("LIVERANK_ADMIN_TOKEN", "")
ARCHIVES = [Path(p) for p in os.environ.get("LIVERANK_BUNDLE_ARCHIVE", "").split(os.pathsep) if p]

_user_numbers = itertools.count()


def _json(resp: ResponseContextManager) -> Any:
    try:
        return json.loads(resp.content or b"")
    except ValueError:
        return None


def _http_problem(resp: ResponseContextManager, doc: Any, expected: int) -> str | None:
    if resp.status_code == expected:
        return None
    if not resp.status_code:
        return f"no answer: {getattr(resp, 'error', None)!r}"
    detail = f"{doc.get('code')}: {doc.get('detail')}" if isinstance(doc, dict) else (resp.text or "")[:200]
    return f"HTTP {resp.status_code}: {detail}"


class _LiverankUser(FastHttpUser):
    """Reads the live model once per user (GET /v1/model, retried by the next task if it failed)."""

    abstract = True

    def on_start(self) -> None:
        self.number = next(_user_numbers)
        self.seed = SEED * 1_000_003 + self.number
        self.model_view: ModelView | None = None

    def live_model(self) -> ModelView | None:
        if self.model_view is None:
            with self.client.get("/v1/model", name="/v1/model", catch_response=True) as resp:
                doc = _json(resp)
                problem = _http_problem(resp, doc, 200)
                if problem is None:
                    try:
                        self.model_view = ModelView.from_model_json(doc)
                    except ValueError as exc:
                        problem = str(exc)
                if problem is not None:
                    resp.failure(problem)
            if self.model_view is None:
                time.sleep(1.0)  # a server that is not ready yet: do not spin
        return self.model_view

    def post(self, path: str, body: bytes, name: str, headers: dict[str, str]) -> ResponseContextManager:
        # locust types ``data`` as str | dict; geventhttpclient sends bytes as they are.
        return self.client.post(path, data=cast(Any, body), name=name, headers=headers, catch_response=True)

    def admin_headers(self, content_type: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": content_type}


class RequestPool:
    """Ranking request bodies shared by this process's ranking users, drawn lazily: one new body per request until
    ``size`` exist, then round-robin. Drawing and encoding 11,000 ids costs the load generator milliseconds of CPU,
    so drawing them all up front would stall every user's event loop (and inflate its latencies) at the start."""

    def __init__(self, factory: RequestFactory, size: int) -> None:
        self.factory = factory
        self.size = max(1, size)
        self.bodies: list[bytes] = []
        self.sent = 0

    def next_body(self) -> bytes:
        self.sent += 1
        if len(self.bodies) < self.size:
            self.bodies.append(encode(self.factory.request()))
            return self.bodies[-1]
        return self.bodies[self.sent % self.size]


_pools: dict[str, RequestPool] = {}


def _pool_for(model: ModelView) -> RequestPool:
    key = f"{model.schema_hash}/{model.version}"
    if key not in _pools:
        _pools[key] = RequestPool(
            RequestFactory(model, seed=SEED, n_candidates=CANDIDATES, k=K, draws=DRAWS), POOL_SIZE
        )
    return _pools[key]


class RankingUser(_LiverankUser):
    """Ranks W-500-style requests (``LIVERANK_CANDIDATES`` candidates, top ``LIVERANK_K``) and checks every answer."""

    wait_time = constant_throughput(RANK_RPS_PER_USER) if RANK_RPS_PER_USER > 0 else constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.pool: RequestPool | None = None

    @task
    def rank(self) -> None:
        if self.pool is None:
            model = self.live_model()
            if model is None:
                return
            self.pool = _pool_for(model)
        with self.post(RANK, self.pool.next_body(), RANK, {"Content-Type": "application/json"}) as resp:
            doc = _json(resp)
            problem = _http_problem(resp, doc, 200) or rank_answer_problem(doc, min(K, CANDIDATES))
            if problem is None:
                resp.success()
            else:
                resp.failure(problem)


class DeltaUser(_LiverankUser):
    """Pushes a binary delta every ``LIVERANK_DELTA_INTERVAL_S`` and measures when ranking answers show it."""

    abstract = not (ADMIN_TOKEN and DELTA_USERS > 0)
    fixed_count = DELTA_USERS
    wait_time = constant_pacing(DELTA_INTERVAL_S)

    def on_start(self) -> None:
        super().on_start()
        suffix = f"-{self.number}" if PRODUCER and DELTA_USERS > 1 else ""
        self.producer = f"{PRODUCER}{suffix}" if PRODUCER else f"loadtest-{uuid.uuid4().hex[:12]}"
        self.seq = 1
        self.synced = False  # until the first delta is queued, a gap or duplicate only means "resume from there"
        self.deltas: DeltaFactory | None = None
        self.probe = b""

    @task
    def push_delta(self) -> None:
        if self.deltas is None:
            model = self.live_model()
            if model is None:
                return
            self.deltas = DeltaFactory(
                model, producer=self.producer, seed=self.seed, rows=DELTA_ROWS, stream=DELTA_STREAM, draws=DRAWS
            )
            self.probe = self.deltas.probe(RequestFactory(model, seed=self.seed, draws=DRAWS))
        pushed = self._push(self.deltas)
        if pushed is not None:
            self._await_visible(self.deltas, *pushed)

    def _push(self, deltas: DeltaFactory) -> tuple[int, float] | None:
        """Push the next seq; resume from the server's sequence on a gap or duplicate. (seq, start) if queued."""
        for _ in range(3):
            seq = self.seq
            body = deltas.delta(seq)  # drawn and encoded before the clock starts
            started = time.perf_counter()
            headers = self.admin_headers("application/octet-stream")
            with self.post("/admin/deltas", body, "/admin/deltas", headers) as resp:
                doc = _json(resp)
                status = doc.get("status") if isinstance(doc, dict) else None
                if resp.status_code == 202 and status == "queued":
                    resp.success()
                    self.seq, self.synced = seq + 1, True
                    return seq, started
                if resp.status_code == 200 and status == "duplicate":
                    # A re-sent seq (e.g. after a push whose answer was lost): values, not gradients, so harmless.
                    self.seq = int(doc["epoch"]["sparse_seq"].get(self.producer, seq)) + 1
                    resp.success()
                    continue
                if resp.status_code == 409 and isinstance(doc, dict) and doc.get("code") == "sequence_gap":
                    self.seq = int(doc["expected_seq"])
                    if self.synced:
                        resp.failure(f"sequence gap after seq {seq - 1} was queued: {doc.get('detail')}")
                        return None
                    log.info("producer %s resumes at seq %d", self.producer, self.seq)
                    resp.success()
                    continue
                resp.failure(_http_problem(resp, doc, 202) or f"unexpected answer: {doc!r}"[:300])
                return None
        return None

    def _await_visible(self, deltas: DeltaFactory, seq: int, started: float) -> None:
        """Probe until the answer's epoch shows ``seq``; report the time since the push started."""
        slot = deltas.slot.name
        deadline = started + VISIBLE_TIMEOUT_S
        while True:
            with self.post(RANK, self.probe, PROBE, {"Content-Type": "application/json"}) as resp:
                doc = _json(resp)
                problem = _http_problem(resp, doc, 200) or rank_answer_problem(doc, 1)
                if problem is not None:
                    resp.failure(problem)
                    self._report_visible(started, RuntimeError(f"probe failed: {problem}"))
                    return
                resp.success()
                applied = doc["epoch"]["sparse_seq"].get(self.producer, 0)
                if isinstance(applied, int) and applied >= seq:
                    unseen = doc.get("stats", {}).get("unseen_ids", {}).get(slot)
                    error = None if unseen == 0 else RuntimeError(f"seq {seq} is visible but the marker row is not")
                    self._report_visible(started, error)
                    return
            if time.perf_counter() > deadline:
                self._report_visible(started, TimeoutError(f"seq {seq} not visible after {VISIBLE_TIMEOUT_S} s"))
                return
            time.sleep(PROBE_INTERVAL_S)

    def _report_visible(self, started: float, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=VISIBLE[0],
            name=VISIBLE[1],
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=0,
            exception=exception,
            context={},
        )


class BundleSwapUser(_LiverankUser):
    """Uploads the bundle archives of ``LIVERANK_BUNDLE_ARCHIVE`` in turn every ``LIVERANK_SWAP_INTERVAL_S``."""

    abstract = not (ADMIN_TOKEN and ARCHIVES)
    fixed_count = 1
    wait_time = constant_pacing(SWAP_INTERVAL_S)

    def on_start(self) -> None:
        super().on_start()
        self.archives = [(data, archive_version(data)) for data in (path.read_bytes() for path in ARCHIVES)]
        self.swaps = 0

    @task
    def swap_bundle(self) -> None:
        data, version = self.archives[self.swaps % len(self.archives)]
        self.swaps += 1
        with self.post("/admin/bundles", data, "/admin/bundles", self.admin_headers("application/gzip")) as resp:
            doc = _json(resp)
            problem = _http_problem(resp, doc, 200)
            if problem is None and not (doc.get("status") == "live" and doc.get("version") == version):
                problem = f"expected version {version} live, got {doc!r}"[:300]
            if problem is None:
                resp.success()
            else:
                resp.failure(problem)


class TimelineRecorder:
    """Every request's (end time s, type, name, response time ms, failed), written as JSON when locust quits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, str, str, float, bool]] = []

    def on_request(
        self, request_type: str, name: str, response_time: float, exception: Exception | None = None, **_: Any
    ) -> None:
        self.samples.append((round(time.time(), 3), request_type, name, round(response_time, 2), exception is not None))

    def write(self, **_: Any) -> None:
        self.path.write_text(json.dumps({"samples": self.samples}))


def _listen(hook: Any, listener: Callable[..., None]) -> None:
    """``hook.add_listener`` (locust's event hooks are untyped)."""
    hook.add_listener(listener)


def _start_timeline(environment: Environment, **_: Any) -> None:
    path = os.environ.get("LIVERANK_TIMELINE_JSON")
    if path:
        recorder = TimelineRecorder(Path(path))
        _listen(environment.events.request, recorder.on_request)
        _listen(environment.events.quitting, recorder.write)


_listen(events.init, _start_timeline)


# Locust runs the first LoadTestShape it finds in this module, so only the chosen one is bound here.
_SHAPE = os.environ.get("LIVERANK_SHAPE", "").lower()
if _SHAPE in ("step", "all"):
    StepShape = shapes.StepShape
if _SHAPE in ("spike", "all"):
    SpikeShape = shapes.SpikeShape
if _SHAPE not in ("", "none", "step", "spike", "all"):
    raise ValueError(f"LIVERANK_SHAPE must be step, spike or all, got {_SHAPE!r}")
