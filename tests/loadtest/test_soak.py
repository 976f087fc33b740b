"""The soak's memory verdict: growth of the whole server's PSS from the end of minute 2 to the end of minute 10, and
what a shorter run measures instead (said, not crashed on)."""

from __future__ import annotations

from liverank.loadtest.soak import MemoryReading, memory_growth, per_minute

MIB = 2**20


def _readings(started: float, duration_s: float, mib_at: dict[float, int]) -> list[MemoryReading]:
    """A reading every 10 s; PSS steps to ``mib_at[t]`` from second ``t`` on."""
    out = []
    for t in range(0, int(duration_s) + 1, 10):
        mib = max((v for at, v in mib_at.items() if at <= t), default=0)
        out.append(MemoryReading(started + t, mib * MIB, None, None, None, 100 * MIB, 5))
    return out


def test_growth_is_measured_from_the_end_of_minute_2_to_the_end_of_minute_10() -> None:
    readings = _readings(1000.0, 600, {0: 1000, 60: 2000, 130: 2100, 600: 2300})
    growth = memory_growth(readings, 1000.0, 600)
    assert (growth["from_s"], growth["to_s"], growth["full_window"]) == (120.0, 600.0, True)
    assert (growth["from_bytes"], growth["to_bytes"]) == (2000 * MIB, 2300 * MIB)  # minute 1's rise left out
    assert growth["growth_pct"] == 15.0
    assert growth["met"] is False
    within = memory_growth(_readings(0.0, 600, {0: 2000, 300: 2150}), 0.0, 600)
    assert within["growth_pct"] == 7.5
    assert within["met"] is True


def test_a_short_run_measures_what_it_has_and_says_so() -> None:
    growth = memory_growth(_readings(0.0, 150, {0: 400, 100: 420}), 0.0, 150)
    assert (growth["from_s"], growth["to_s"], growth["full_window"]) == (75.0, 150.0, False)
    assert growth["growth_pct"] == 5.0
    nothing = memory_growth([], 0.0, 150)
    assert nothing["growth_pct"] is None
    assert nothing["met"] is None


def test_a_partial_last_minute_counts_its_own_seconds() -> None:
    samples = [(10.0 + i * 0.5, "POST", "/v1/rank", 5.0, False) for i in range(180)]  # 2 rank/s for 90 s
    rows = per_minute(samples, 10.0, 90, _readings(10.0, 90, {0: 300}))
    assert [r["rank_rps"] for r in rows] == [2.0, 2.0]
    assert [r["pss_mib"] for r in rows] == [300, 300]
