"""The issue's targets for ranking, held against one store size's figures (medians)."""

from __future__ import annotations

from typing import Any

RPS_MIN = 500.0
RPS_AT_P99_MAX_MS = 15.0
SINGLE_CLIENT_P50_MAX_MS = 3.0
PUSH_TO_VISIBLE_P99_MAX_MS = 200.0
P99_INFLATION_MAX_PCT = 20.0


def _target(name: str, bound: str, value: float | None, unit: str, met: bool) -> dict[str, Any]:
    return {"name": name, "target": bound, "value": value, "unit": unit, "met": met}


def best_rps_within_p99(rank: list[dict[str, Any]], server: str, p99_max_ms: float) -> tuple[float | None, int | None]:
    """The highest median rps among concurrencies whose median p99 is within ``p99_max_ms`` (and where it was)."""
    ok = [(e[server]["rps"]["median"], e["concurrency"]) for e in rank if e[server]["p99_ms"]["median"] <= p99_max_ms]
    if not ok:
        return None, None
    rps, concurrency = max(ok)
    return rps, concurrency


def evaluate_targets(size: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    rank = size.get("rank", [])
    if rank:
        rps, concurrency = best_rps_within_p99(rank, "liverank", RPS_AT_P99_MAX_MS)
        where = f" (c={concurrency})" if concurrency else " (no concurrency met the p99 bound)"
        found.append(
            _target(
                f"throughput at p99 <= {RPS_AT_P99_MAX_MS:g} ms{where}",
                f">= {RPS_MIN:g} rps",
                rps,
                "rps",
                rps is not None and rps >= RPS_MIN,
            )
        )
        single = [e for e in rank if e["concurrency"] == 1]
        if single:
            p50 = single[0]["liverank"]["p50_ms"]["median"]
            found.append(
                _target(
                    "single-client p50",
                    f"<= {SINGLE_CLIENT_P50_MAX_MS:g} ms",
                    p50,
                    "ms",
                    p50 <= SINGLE_CLIENT_P50_MAX_MS,
                )
            )
    deltas = size.get("deltas")
    if deltas:
        for side in ("client", "server"):
            p99 = deltas[f"push_to_visible_{side}_ms"]["p99"]
            found.append(
                _target(
                    f"push-to-visible p99 ({side})",
                    f"<= {PUSH_TO_VISIBLE_P99_MAX_MS:g} ms",
                    p99,
                    "ms",
                    p99 is not None and p99 <= PUSH_TO_VISIBLE_P99_MAX_MS,
                )
            )
        inflation = deltas["p99_inflation_pct"]
        found.append(
            _target(
                "rank p99 inflation while deltas apply",
                f"<= {P99_INFLATION_MAX_PCT:g} %",
                inflation,
                "%",
                inflation <= P99_INFLATION_MAX_PCT,
            )
        )
    swap = size.get("swap")
    if swap:
        failed = swap["failed_requests_total"]
        found.append(
            _target(
                "failed requests during bundle swaps",
                "= 0",
                failed,
                "requests",
                failed == 0 and swap["all_went_live"],
            )
        )
    return found
