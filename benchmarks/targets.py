"""The issue's targets for the store, checked against one table size's figures (only where a target is stated)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from liverank.benchmarks.peers import HOT, REDIS

SIZE_1M = 1_000_000
SIZE_10M = 10_000_000
HOT_NS_PER_KEY_MAX = 100.0  # at 10M keys
HOT_VS_REDIS_MIN = 15.0  # at 10M keys
APPLY_ROWS_PER_S_MIN = {SIZE_1M: 300_000.0, SIZE_10M: 100_000.0}  # durability "process"
OPEN_TO_FIRST_LOOKUP_MAX_S = 30.0  # 10M rows


@dataclass(frozen=True)
class Target:
    """One stated target and the measured median it is held against."""

    name: str
    bound: str
    value: float
    unit: str
    met: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.bound, "value": self.value, "unit": self.unit, "met": self.met}


def _at_most(name: str, value: float, limit: float, unit: str) -> Target:
    return Target(name, f"<= {limit:g} {unit}", value, unit, value <= limit)


def _at_least(name: str, value: float, limit: float, unit: str) -> Target:
    return Target(name, f">= {limit:g} {unit}", value, unit, value >= limit)


def evaluate_targets(size: dict[str, Any]) -> list[dict[str, Any]]:
    n = size["n_keys"]
    found: list[Target] = []
    if n == SIZE_10M:
        for entry in size.get("lookups", []):
            where = f"{entry['dist']}, batch {entry['batch']:,}"
            hot = entry["ns_per_key"][HOT.name]["median"]
            found.append(_at_most(f"hot lookup ({where})", hot, HOT_NS_PER_KEY_MAX, "ns/key"))
            ratio = entry["ratios"].get(f"{REDIS.name}/{HOT.name}")
            if ratio is not None:
                found.append(_at_least(f"hot vs Redis MGET ({where})", ratio, HOT_VS_REDIS_MIN, "x"))
        opens = [o["total_s"] for o in size.get("open", [])]
        if opens:
            found.append(_at_most("open to first lookup", statistics.median(opens), OPEN_TO_FIRST_LOOKUP_MAX_S, "s"))
    if n in APPLY_ROWS_PER_S_MIN:
        for entry in size.get("deltas", []):
            if entry["durability"] == "process":
                reader = "with a reader" if entry["reader"] else "alone"
                found.append(
                    _at_least(
                        f"delta apply, process-crash safe, {reader}",
                        entry["rows_per_s"]["median"],
                        APPLY_ROWS_PER_S_MIN[n],
                        "rows/s",
                    )
                )
    return [t.to_json() for t in found]
