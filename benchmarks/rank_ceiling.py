"""The dense-only ceiling of a ranking run: what the machine could serve if ONNX Runtime were the only work.

The inputs are exactly the server's: the benchmark's request bodies go through the serving code (parse, lookup in
the filled store, assembly) in the benchmark process, before the servers start; then an ONNX Runtime session of the
same bundle, with the same intra-op threads, runs them in a loop. ceiling rps = cores / (ONNX Runtime CPU seconds
per request). CPU time of the whole process, so that intra-op threads beyond the calling one count too.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from liverank.serving.bundle import load_bundle_dir
from liverank.serving.ranker import _assemble, _plan_lookups
from liverank.serving.request import Limits, parse_rank_request
from liverank.serving.runner import OnnxRunner
from liverank.store import EmbeddingStore

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
_LIMITS = Limits(max_candidates=100_000, max_list_ids=100_000, max_k=100_000)


def dense_inputs(store_dir: Path, bundle_dir: Path, bodies: list[bytes]) -> list[tuple[FloatArray, FloatArray]]:
    """The (user, candidates) inputs the server's network gets for each body, read from the filled store (LMDB
    only: no RAM tier is built in the benchmark process; the rows are the same)."""
    manifest = load_bundle_dir(bundle_dir).manifest
    inputs = []
    with EmbeddingStore.open(store_dir, ram_tier=False) as store:
        for body in bodies:
            request = parse_rank_request(orjson.loads(body), manifest, _LIMITS)
            segments, per_slot = _plan_lookups(request)
            lookup = store.lookup_many(per_slot)
            user = _assemble(manifest, "user", request.user, segments, lookup, 1).copy()  # buffers are reused
            candidates = _assemble(manifest, "candidate", request.candidates, segments, lookup, request.n_candidates)
            inputs.append((user, candidates.copy()))
    return inputs


def measure_ceiling(
    bundle_dir: Path, inputs: list[tuple[FloatArray, FloatArray]], onnx_threads: int, min_runs: int = 200
) -> dict[str, Any]:
    """ONNX Runtime CPU ms per request (median over at least ``min_runs`` runs) and the ceiling it implies."""
    runner = OnnxRunner.build(load_bundle_dir(bundle_dir), intra_op_threads=onnx_threads)
    runner.warm_up()
    for user, candidates in inputs[:10]:
        runner.run(user, candidates)
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    runs = max(min_runs, len(inputs))
    for i in range(runs):
        user, candidates = inputs[i % len(inputs)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        runner.run(user, candidates)
        cpu_ms.append((time.process_time() - cpu0) * 1000)
        wall_ms.append((time.perf_counter() - wall0) * 1000)
    cores = len(os.sched_getaffinity(0))
    onnx_ms = statistics.median(cpu_ms)
    return {
        "runs": runs,
        "onnx_threads": onnx_threads,
        "onnx_cpu_ms_per_request": onnx_ms,
        "onnx_wall_ms_per_request": statistics.median(wall_ms),
        "cores": cores,
        "rps": cores * 1000.0 / onnx_ms if onnx_ms > 0 else None,
    }
