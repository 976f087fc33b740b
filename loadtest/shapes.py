"""Load shapes: ``StepShape`` (ranking users added in equal steps) and ``SpikeShape`` (baseline, sudden spike,
recovery).

Both read locust's common options: ``-u`` is the peak user count (all users, the fixed delta and bundle users
included), ``-r`` the spawn rate, ``-t`` the total run time (default 60 s). The locustfile exposes one of them
when ``LIVERANK_SHAPE`` is ``step`` or ``spike`` (``all`` exposes both, for the web UI's ``--class-picker``).
``LIVERANK_STEPS`` sets the number of steps of ``StepShape`` (default 4).
"""

from __future__ import annotations

import math
import os
import time
from typing import ClassVar

from locust import LoadTestShape

DEFAULT_RUN_TIME_S = 60


class _CommonOptionsShape(LoadTestShape):
    """Reads -u, -r and -t; counts the users of fixed_count classes (delta pusher, bundle swapper) apart."""

    abstract: ClassVar[bool] = True
    use_common_options: ClassVar[bool] = True

    def _options(self) -> tuple[int, float, float]:
        options = None if self.runner is None else self.runner.environment.parsed_options
        peak = int(getattr(options, "num_users", None) or 1)
        spawn_rate = float(getattr(options, "spawn_rate", None) or max(1, peak))
        run_time_s = float(getattr(options, "run_time", None) or DEFAULT_RUN_TIME_S)
        return peak, spawn_rate, run_time_s

    def elapsed_s(self) -> float:
        # The runner calls reset_time() when the shape starts, so start_time is the test's start.
        return time.perf_counter() - float(self.start_time)

    def _fixed_users(self) -> int:
        classes = [] if self.runner is None else self.runner.user_classes
        return sum(max(0, int(getattr(cls, "fixed_count", 0))) for cls in classes)


class StepShape(_CommonOptionsShape):
    """Ranking users rise in ``LIVERANK_STEPS`` equal steps to the peak, each step an equal share of the run
    time; the fixed users run throughout."""

    abstract: ClassVar[bool] = False

    def tick(self) -> tuple[int, float] | None:
        peak, spawn_rate, run_time_s = self._options()
        elapsed_s = self.elapsed_s()
        if elapsed_s >= run_time_s:
            return None
        steps = max(1, int(os.environ.get("LIVERANK_STEPS", "4")))
        fixed = self._fixed_users()
        rankers = max(1, peak - fixed)
        step = min(steps - 1, int(elapsed_s / (run_time_s / steps)))
        return fixed + math.ceil(rankers * (step + 1) / steps), spawn_rate


class SpikeShape(_CommonOptionsShape):
    """A quarter of the peak ranking users for the first 40 % of the run time, all of them for the next 20 %
    (spawned at once), then the quarter again for the rest: does latency recover after the spike?"""

    abstract: ClassVar[bool] = False

    def tick(self) -> tuple[int, float] | None:
        peak, spawn_rate, run_time_s = self._options()
        elapsed_s = self.elapsed_s()
        if elapsed_s >= run_time_s:
            return None
        fixed = self._fixed_users()
        rankers = max(1, peak - fixed)
        baseline = max(1, rankers // 4)
        in_spike = 0.4 * run_time_s <= elapsed_s < 0.6 * run_time_s
        return fixed + (rankers if in_spike else baseline), max(spawn_rate, float(rankers))
