"""Area under the ROC curve: one implementation for the trainer's evaluations and the exporter's parity reports."""

from __future__ import annotations

from typing import Any

import numpy as np


def roc_auc(labels: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]) -> float:
    """Area under the ROC curve of ``scores`` against 0/1 ``labels`` (ties count one half); NaN if one class only."""
    y = np.asarray(labels, dtype=np.float64) > 0.5
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties.
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
