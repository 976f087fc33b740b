"""Summaries of repeated measurements: median, min and max, with the runs kept for the record."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Median, min and max of a figure measured several times (every run is kept in ``runs``)."""

    median: float
    min: float
    max: float
    runs: tuple[float, ...]

    @classmethod
    def of(cls, runs: Sequence[float]) -> Summary:
        if not runs:
            raise ValueError("a summary needs at least one run")
        return cls(statistics.median(runs), min(runs), max(runs), tuple(runs))

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "runs": list(self.runs)}
