"""The baseline: the ranking service most teams build instead of liverank, for W-500.

FastAPI with pydantic row models (a request model holding a list of candidate objects), every embedding fetched
with one Redis MGET per request (keys ``<slot>:<id>``, values raw float32 bytes), the inputs assembled with numpy,
the same ``dense.onnx`` run by ONNX Runtime (same session options as liverank), the top-k returned through a
pydantic response model. A sync endpoint: FastAPI runs it on its thread pool, as it does for liverank's work.
One uvicorn process, no ``gc.freeze``. Run with ``python -m liverank.benchmarks.baseline_app``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import redis
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel

from liverank.store.manifest import MANIFEST_FILE, ONNX_FILE, Manifest, manifest_from_json

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


class User(BaseModel):
    user_id: int
    hist_item_ids: list[int]
    device: int
    country: int
    hour_bucket: int
    user_age_bucket: int


class Candidate(BaseModel):
    item_id: int
    author_id: int
    music_id: int
    tags: list[int]
    category: int
    language: int
    duration_bucket: int
    age_bucket_item: int
    item_f0: int
    item_f1: int
    item_f2: int
    item_f3: int
    item_f4: int
    item_f5: int
    item_f6: int
    item_f7: int
    item_f8: int
    item_f9: int
    item_f10: int
    item_f11: int


class RankBody(BaseModel):
    user: User
    candidates: list[Candidate]
    k: int = 50


class RankedItem(BaseModel):
    index: int
    id: int
    score: float
    heads: dict[str, float]


class RankAnswer(BaseModel):
    items: list[RankedItem]
    model_version: str


@dataclass
class Baseline:
    """What the endpoint needs: the manifest, the ONNX session and a Redis connection pool."""

    manifest: Manifest
    session: ort.InferenceSession
    redis: redis.Redis
    dim: int

    @classmethod
    def open(cls, bundle: Path, redis_port: int, onnx_threads: int) -> Baseline:
        manifest = manifest_from_json((bundle / MANIFEST_FILE).read_bytes())
        expected = set(User.model_fields) | set(Candidate.model_fields)
        if {f.name for f in manifest.features} != expected:
            raise SystemExit(f"baseline: {bundle} is not a W-500 bundle (features differ from the row models)")
        dims = {s.dim for s in manifest.slots}
        if len(dims) != 1:
            raise SystemExit("baseline: every slot must share one dim")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = onnx_threads
        session = ort.InferenceSession(
            (bundle / ONNX_FILE).read_bytes(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        client = redis.Redis(host="127.0.0.1", port=redis_port, max_connections=64)
        return cls(manifest, session, client, dims.pop())

    def rank(self, body: RankBody) -> RankAnswer:
        m = self.manifest
        n = len(body.candidates)
        keys: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        for f in m.features:
            start = len(keys)
            if f.side == "user":
                value = getattr(body.user, f.name)
                keys += [f"{f.slot}:{i}" for i in value] if isinstance(value, list) else [f"{f.slot}:{value}"]
            elif f.kind == "id_list":
                keys += [f"{f.slot}:{i}" for c in body.candidates for i in getattr(c, f.name)]
            else:
                keys += [f"{f.slot}:{getattr(c, f.name)}" for c in body.candidates]
            spans[f.name] = (start, len(keys))
        zero = bytes(4 * self.dim)
        raw = self.redis.mget(keys)
        rows = np.frombuffer(b"".join(v if isinstance(v, bytes) else zero for v in raw), dtype=np.float32)
        rows = rows.reshape(len(keys), self.dim)
        user = np.empty((1, m.user_width), dtype=np.float32)
        cand = np.empty((n, m.candidate_width), dtype=np.float32)
        for side, out in (("user", user), ("candidate", cand)):
            for f, lo, hi in m.feature_offsets(side):  # type: ignore[arg-type]
                a, b = spans[f.name]
                if f.kind == "id":
                    out[:, lo:hi] = rows[a:b]
                elif f.side == "user":
                    out[0, lo:hi] = rows[a:b].mean(axis=0)
                else:
                    lengths = np.asarray([len(getattr(c, f.name)) for c in body.candidates])
                    starts = np.cumsum(lengths) - lengths
                    out[:, lo:hi] = np.add.reduceat(rows[a:b], starts, axis=0) / lengths[:, None]
        outputs = self.session.run([h.output for h in m.heads], {m.user_input: user, m.candidate_input: cand})
        heads = {h.name: np.asarray(o).reshape(n) for h, o in zip(m.heads, outputs, strict=True)}
        score = sum(np.float32(h.weight) * heads[h.name] for h in m.heads)
        assert isinstance(score, np.ndarray)
        k = min(body.k, n)
        top = np.argpartition(-score, k - 1)[:k]
        top = top[np.argsort(-score[top], kind="stable")]
        items = [
            RankedItem(
                index=int(i),
                id=body.candidates[int(i)].item_id,
                score=float(score[i]),
                heads={name: float(v[i]) for name, v in heads.items()},
            )
            for i in top
        ]
        return RankAnswer(items=items, model_version=m.version)


def create_app(bundle: Path, redis_port: int, onnx_threads: int) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.baseline = Baseline.open(bundle, redis_port, onnx_threads)
        try:
            yield
        finally:
            app.state.baseline.redis.close()

    app = FastAPI(title="baseline ranker", lifespan=lifespan)

    @app.post("/rank", response_model=RankAnswer)
    def rank(body: RankBody, request: Request) -> RankAnswer:
        baseline: Baseline = request.app.state.baseline
        return baseline.rank(body)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m liverank.benchmarks.baseline_app", description=__doc__)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--onnx-threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app = create_app(args.bundle, args.redis_port, args.onnx_threads)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
