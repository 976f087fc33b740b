"""Parity of a reduced-precision (or rewritten) dense graph against its fp32 graph, measured by ONNX Runtime.

Why ONNX Runtime here, when the rest of the exporter never imports it: the parity of a quantized graph is only
meaningful as measured by the runtime that serves it (its int8 kernels, its dynamic quantization of activations);
onnx's reference evaluator would measure a different computation.

Held-out rows come in as ``ParityRows``: tower inputs row by row (one user row and one candidate row per event) and,
when the exporter has them, labels per head. They are cut into blocks of ``candidates_per_request`` rows; a request
is one row's user with its block's candidates, as serving sees them (a whole request's activations share one
dynamic quantization range). Every request gives score differences per head and the top-k overlap of the blended
score; its own row's candidate gives the labelled score for the AUC.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from liverank.exporter.auc import roc_auc
from liverank.store.manifest import Manifest
from liverank.store.parity import HeadParity, ParityReport

log = logging.getLogger(__name__)

F32 = np.ndarray[Any, np.dtype[np.float32]]
DEFAULT_K = 50
DEFAULT_CANDIDATES_PER_REQUEST = 500


@dataclass(frozen=True)
class ParityRows:
    """Held-out tower inputs: ``users`` [n, user_width], ``candidates`` [n, candidate_width], optional labels
    per head name ([n] of 0/1)."""

    users: F32
    candidates: F32
    labels: Mapping[str, F32] | None = None

    def __post_init__(self) -> None:
        n = len(self.candidates)
        if self.users.ndim != 2 or self.candidates.ndim != 2 or len(self.users) != n:
            raise ValueError("parity rows need users [n, user_width] and candidates [n, candidate_width]")
        for name, labels in (self.labels or {}).items():
            if len(labels) != n:
                raise ValueError(f"parity labels of head {name!r} have {len(labels)} rows, the inputs have {n}")

    def __len__(self) -> int:
        return len(self.candidates)


def random_rows(manifest: Manifest, *, n_rows: int, seed: int) -> ParityRows:
    """Unlabelled rows of unit-normal embeddings (what the W-500 benchmarks store), for synthetic bundles."""
    rng = np.random.default_rng(seed)
    return ParityRows(
        users=rng.standard_normal((n_rows, manifest.user_width), dtype=np.float32),
        candidates=rng.standard_normal((n_rows, manifest.candidate_width), dtype=np.float32),
    )


def session(model: onnx.ModelProto | bytes, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU session configured as serving builds it (all graph optimisations, ``threads`` intra-op threads)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    payload = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(payload, sess_options=options, providers=["CPUExecutionProvider"])


def runtime_name() -> str:
    return f"onnxruntime {ort.__version__}"


def measure_parity(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    manifest: Manifest,
    rows: ParityRows,
    *,
    method: str,
    k: int = DEFAULT_K,
    candidates_per_request: int = DEFAULT_CANDIDATES_PER_REQUEST,
    users_per_block: int | None = None,
) -> ParityReport:
    """How ``candidate``'s scores differ from ``reference``'s on ``rows`` (see the module docstring).

    ``users_per_block`` caps the requests per block (None: every row's user, so every labelled row is scored).
    """
    per_request = min(candidates_per_request, len(rows))
    n_blocks = len(rows) // per_request
    if n_blocks < 1:
        raise ValueError("parity needs at least one held-out row")
    top = min(k, per_request)
    ref_session, cand_session = session(reference), session(candidate)
    outputs = [head.output for head in manifest.heads]
    weights = np.array([head.weight for head in manifest.heads], dtype=np.float64)
    n_heads = len(outputs)
    max_diff = np.zeros(n_heads)
    sum_diff = np.zeros(n_heads)
    n_scores = 0
    overlaps: list[float] = []
    scored_rows: list[int] = []
    ref_labelled: list[F32] = []
    cand_labelled: list[F32] = []
    for block in range(n_blocks):
        start = block * per_request
        candidates = np.ascontiguousarray(rows.candidates[start : start + per_request])
        users = range(start, start + per_request)
        if users_per_block is not None:
            users = range(start, start + min(users_per_block, per_request))
        for row in users:
            feed = {manifest.user_input: rows.users[row : row + 1], manifest.candidate_input: candidates}
            want = _scores(ref_session, outputs, feed, per_request)
            got = _scores(cand_session, outputs, feed, per_request)
            diff = np.abs(got.astype(np.float64) - want)
            max_diff = np.maximum(max_diff, diff.max(axis=0))
            sum_diff += diff.sum(axis=0)
            n_scores += per_request
            overlaps.append(_overlap(want @ weights, got @ weights, top))
            scored_rows.append(row)
            ref_labelled.append(want[row - start])
            cand_labelled.append(got[row - start])
    auc = _auc_fields(manifest, rows, np.array(scored_rows), np.stack(ref_labelled), np.stack(cand_labelled))
    report = ParityReport(
        method=method,
        runtime=runtime_name(),
        requests=len(overlaps),
        candidates_per_request=per_request,
        k=top,
        topk_overlap_mean=round(float(np.mean(overlaps)), 6),
        topk_overlap_min=round(float(np.min(overlaps)), 6),
        heads=tuple(
            HeadParity(head.name, float(f"{max_diff[h]:.6g}"), float(f"{sum_diff[h] / n_scores:.6g}"))
            for h, head in enumerate(manifest.heads)
        ),
        **auc,
    )
    log.info(
        "parity of %s vs fp32: top-%d overlap %.4f (min %.4f), max abs diff %.3g, AUC diff %s over %d requests",
        manifest.precision,
        top,
        report.topk_overlap_mean,
        report.topk_overlap_min,
        float(max_diff.max()),
        report.auc_diff,
        report.requests,
    )
    return report


def max_abs_diff(reference: onnx.ModelProto, candidate: onnx.ModelProto, manifest: Manifest, rows: ParityRows) -> float:
    """The largest difference of any head's score between two graphs, one request per block of 500 rows."""
    ref_session, cand_session = session(reference), session(candidate)
    outputs = [head.output for head in manifest.heads]
    worst = 0.0
    per_request = min(DEFAULT_CANDIDATES_PER_REQUEST, len(rows))
    for start in range(0, len(rows) - per_request + 1, per_request):
        feed = {
            manifest.user_input: rows.users[start : start + 1],
            manifest.candidate_input: np.ascontiguousarray(rows.candidates[start : start + per_request]),
        }
        diff = _scores(ref_session, outputs, feed, per_request) - _scores(cand_session, outputs, feed, per_request)
        worst = max(worst, float(np.abs(diff).max()))
    return worst


def _scores(sess: ort.InferenceSession, outputs: list[str], feed: dict[str, F32], n_rows: int) -> np.ndarray[Any, Any]:
    """[n_rows, heads] float64 probabilities."""
    raw = sess.run(outputs, feed)
    return np.stack([np.asarray(o, dtype=np.float64).reshape(n_rows) for o in raw], axis=1)


def _overlap(want: np.ndarray[Any, Any], got: np.ndarray[Any, Any], k: int) -> float:
    top_want = np.argpartition(-want, k - 1)[:k]
    top_got = np.argpartition(-got, k - 1)[:k]
    return len(np.intersect1d(top_want, top_got)) / k


def _auc_fields(
    manifest: Manifest,
    rows: ParityRows,
    scored: np.ndarray[Any, Any],
    want: np.ndarray[Any, Any],
    got: np.ndarray[Any, Any],
) -> dict[str, Any]:
    """AUC of reference and candidate on the labelled rows, for the head whose AUC moved most."""
    if not rows.labels:
        return {}
    worst: dict[str, Any] = {}
    for h, head in enumerate(manifest.heads):
        labels = rows.labels.get(head.name)
        if labels is None:
            continue
        y = np.asarray(labels, dtype=np.float64)[scored]
        auc_want, auc_got = roc_auc(y, want[:, h]), roc_auc(y, got[:, h])
        if math.isnan(auc_want) or math.isnan(auc_got):  # one class only among the labelled rows
            continue
        diff = auc_got - auc_want
        if not worst or abs(diff) > abs(worst["auc_diff"]):
            worst = {
                "auc_head": head.name,
                "auc_reference": round(auc_want, 6),
                "auc": round(auc_got, 6),
                "auc_diff": round(diff, 6),
            }
    return {"labelled_rows": len(scored), **worst} if worst else {}
