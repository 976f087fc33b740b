"""A bundle's precision and its parity report: how far a reduced-precision graph's scores are from its fp32 graph's.

A bundle whose ``dense.onnx`` is not fp32 (today: int8) carries, in its manifest, a report measured at export by
ONNX Runtime (the runtime that serves it) on held-out requests::

    "precision": "int8",
    "parity": {"reference": "fp32", "method": "onnxruntime dynamic int8 (...)", "runtime": "onnxruntime 1.32.0",
               "requests": 64, "candidates_per_request": 500, "k": 50,
               "topk_overlap_mean": 0.987, "topk_overlap_min": 0.94,
               "heads": {"click": {"max_abs_diff": 0.018, "mean_abs_diff": 0.0021}, ...},
               "labelled_rows": 2048, "auc_head": "click", "auc_reference": 0.7412, "auc": 0.7409, "auc_diff": 0.0003}

Top-k overlap is ``|top-k(fp32) ∩ top-k(int8)| / k`` per request, on the blended score (manifest head weights).
The AUC fields are null when the exporter had no labelled rows (e.g. a synthetic bundle). ``parity_violations``
is the check serving runs before a bundle goes live. A manifest without these fields is an fp32 bundle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from liverank.store.errors import ManifestInvalid

# fp16 and bf16 are left out on purpose: on the CPUs measured, ONNX Runtime's CPU provider runs them no faster
# than fp32 (see BENCHMARKS.md, dense tower precision); a precision that costs accuracy and saves nothing is not
# offered.
Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
REFERENCE_PRECISION = "fp32"


@dataclass(frozen=True)
class HeadParity:
    """One head's probability differences against the reference graph, over every held-out candidate."""

    head: str
    max_abs_diff: float
    mean_abs_diff: float

    def to_json(self) -> dict[str, float]:
        return {"max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff}


@dataclass(frozen=True, kw_only=True)
class ParityReport:
    """What the exporter measured; see the module docstring for the fields."""

    reference: str = REFERENCE_PRECISION
    method: str
    runtime: str
    requests: int
    candidates_per_request: int
    k: int
    topk_overlap_mean: float
    topk_overlap_min: float
    heads: tuple[HeadParity, ...]
    labelled_rows: int = 0
    auc_head: str | None = None
    auc_reference: float | None = None
    auc: float | None = None
    auc_diff: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests", "candidates_per_request", "k"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ManifestInvalid(f"parity: {name} must be a positive integer, got {value!r}")
        if not _is_int(self.labelled_rows) or self.labelled_rows < 0:
            raise ManifestInvalid(f"parity: labelled_rows must be a non-negative integer, got {self.labelled_rows!r}")
        for name in ("topk_overlap_mean", "topk_overlap_min"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ManifestInvalid(f"parity: {name} must be a number in [0, 1], got {value!r}")
        for name in ("auc_reference", "auc", "auc_diff"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                raise ManifestInvalid(f"parity: {name} must be a finite number or null, got {value!r}")
        object.__setattr__(self, "heads", tuple(self.heads))
        if not self.heads:
            raise ManifestInvalid("parity: heads must name at least one head")
        for diffs in self.heads:
            for name, value in diffs.to_json().items():
                if not _is_number(value) or not math.isfinite(value) or value < 0:
                    raise ManifestInvalid(f"parity: head {diffs.head!r}: {name} must be a non-negative number")

    @property
    def head_names(self) -> set[str]:
        return {diffs.head for diffs in self.heads}

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "method": self.method,
            "runtime": self.runtime,
            "requests": self.requests,
            "candidates_per_request": self.candidates_per_request,
            "k": self.k,
            "topk_overlap_mean": self.topk_overlap_mean,
            "topk_overlap_min": self.topk_overlap_min,
            "heads": {diffs.head: diffs.to_json() for diffs in self.heads},
            "labelled_rows": self.labelled_rows,
            "auc_head": self.auc_head,
            "auc_reference": self.auc_reference,
            "auc": self.auc,
            "auc_diff": self.auc_diff,
        }


def parity_from_json(doc: object) -> ParityReport:
    """Parse a manifest's ``parity`` object; ``ManifestInvalid`` on any defect."""
    if not isinstance(doc, Mapping):
        raise ManifestInvalid(f"parity must be an object, got {doc!r}")
    heads = doc.get("heads")
    if not isinstance(heads, Mapping):
        raise ManifestInvalid("parity: heads must be an object of head name -> differences")
    try:
        return ParityReport(
            reference=_text(doc, "reference"),
            method=_text(doc, "method"),
            runtime=_text(doc, "runtime"),
            requests=_field(doc, "requests"),
            candidates_per_request=_field(doc, "candidates_per_request"),
            k=_field(doc, "k"),
            topk_overlap_mean=_field(doc, "topk_overlap_mean"),
            topk_overlap_min=_field(doc, "topk_overlap_min"),
            heads=tuple(_head(name, diffs) for name, diffs in heads.items()),
            labelled_rows=doc.get("labelled_rows", 0),
            auc_head=doc.get("auc_head"),
            auc_reference=doc.get("auc_reference"),
            auc=doc.get("auc"),
            auc_diff=doc.get("auc_diff"),
        )
    except TypeError as exc:
        raise ManifestInvalid(f"parity: {exc}") from exc


def parity_violations(
    precision: str, report: ParityReport | None, *, min_topk_overlap: float, max_auc_diff: float
) -> list[str]:
    """Why a bundle of ``precision`` with ``report`` must not go live (empty: it may).

    An fp32 bundle needs no report; any other precision needs one, and a report (whatever the precision) must be
    within the bounds. The AUC bound applies when the report has labelled rows.
    """
    if report is None:
        if precision == REFERENCE_PRECISION:
            return []
        return [f"a {precision} bundle must carry a parity report against fp32, and this one has none"]
    problems = []
    if report.topk_overlap_mean < min_topk_overlap:
        problems.append(
            f"mean top-{report.k} overlap with fp32 is {report.topk_overlap_mean:.4f}, below the bound "
            f"{min_topk_overlap:g} (LIVERANK_PARITY_MIN_TOPK_OVERLAP)"
        )
    if report.auc_diff is not None and abs(report.auc_diff) > max_auc_diff:
        problems.append(
            f"AUC differs from fp32 by {abs(report.auc_diff):.4f}, above the bound {max_auc_diff:g} "
            f"(LIVERANK_PARITY_MAX_AUC_DIFF)"
        )
    return problems


def _head(name: object, doc: object) -> HeadParity:
    if not isinstance(doc, Mapping):
        raise ManifestInvalid(f"parity: head {name!r} must be an object")
    return HeadParity(
        head=str(name), max_abs_diff=_field(doc, "max_abs_diff"), mean_abs_diff=_field(doc, "mean_abs_diff")
    )


def _field(doc: Mapping[str, Any], key: str) -> Any:
    if key not in doc:
        raise ManifestInvalid(f"parity: missing field {key!r}")
    return doc[key]


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestInvalid(f"parity: {key} must be a non-empty string, got {value!r}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
