"""The server's ranking slots (``serving/rank_slots.py``): a real System V semaphore, real threads, a real process.

- a slot held by a process killed with SIGKILL comes back (SEM_UNDO), so a killed worker leaks none;
- slots move to where the work is: a worker alone uses every slot; a borrowed slot goes back as soon as another
  worker waits; a worker with work keeps its own slot; with every worker busy, each runs one ranking at a time;
- an error in a ranking reaches its caller, and the slot is given back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liverank.serving.rank_slots import ID_FILE, RankSlots, SlotRunner

DEADLINE_S = 30.0


@pytest.fixture
def make_slots(tmp_path: Path) -> Iterator[Callable[[int], RankSlots]]:
    made: list[RankSlots] = []

    def make(n: int) -> RankSlots:
        tier = tmp_path / f"tier-{len(made)}"
        tier.mkdir()
        slots = RankSlots.create(tier, n)
        made.append(slots)
        return slots

    yield make
    for slots in made:
        slots.remove()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def test_a_slot_held_by_a_killed_process_comes_back(make_slots: Callable[[int], RankSlots]) -> None:
    slots = make_slots(1)
    code = (
        "import time\n"
        "from liverank.serving.rank_slots import RankSlots\n"
        f"RankSlots({slots.semid}).take()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            assert slots.free() == 0
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(DEADLINE_S)
            wait_until(lambda: slots.free() == 1, "the killed holder's slot came back")
        finally:
            holder.kill()


class Rankings:
    """Rankings that run until released, on several runners (each one a worker), recording who runs now."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, str] = {}  # ranking -> worker
        self.done: list[str] = []
        self.release: dict[str, threading.Event] = {}

    def job(self, worker: str, name: str) -> Callable[[], str]:
        self.release[name] = threading.Event()

        def run() -> str:
            with self.lock:
                self.running[name] = worker
            self.release[name].wait(DEADLINE_S)
            with self.lock:
                del self.running[name]
                self.done.append(name)
            return name

        return run

    def now(self) -> dict[str, str]:
        with self.lock:
            return dict(self.running)


def test_slots_move_to_where_the_work_is(make_slots: Callable[[int], RankSlots]) -> None:
    slots = make_slots(2)
    a, b = SlotRunner(slots, 2), SlotRunner(slots, 2)
    r = Rankings()

    async def scenario() -> list[str]:
        tasks = [asyncio.create_task(a.run(r.job("a", f"a{i}"))) for i in range(3)]
        # Worker a alone: its own slot and the idle worker's.
        await asyncio.to_thread(wait_until, lambda: len(r.now()) == 2, "worker a runs two rankings")
        assert set(r.now()) == {"a0", "a1"}
        assert slots.free() == 0
        tasks += [asyncio.create_task(b.run(r.job("b", f"b{i}"))) for i in range(2)]
        await asyncio.to_thread(wait_until, lambda: slots.waiters() == 1, "worker b waits for a slot")
        # The borrowed slot goes back after its ranking, to the waiting worker; a keeps its own slot (for a2).
        for name in ("a0", "a1"):
            r.release[name].set()
            await asyncio.to_thread(wait_until, lambda n=name: n in r.done, f"{name} ended")
            if "b0" in r.now():
                break
        await asyncio.to_thread(wait_until, lambda: "b0" in r.now(), "worker b runs")
        assert sorted(r.now().values()) == ["a", "b"], r.now()  # every worker busy: one ranking each
        # Worker b keeps its slot while it has work: b1 follows b0, a's queued ranking does not take it.
        r.release["b0"].set()
        await asyncio.to_thread(wait_until, lambda: "b1" in r.now(), "b1 runs after b0")
        assert sorted(r.now().values()) == ["a", "b"], r.now()
        for event in r.release.values():
            event.set()
        return list(await asyncio.gather(*tasks))

    try:
        assert sorted(asyncio.run(scenario())) == ["a0", "a1", "a2", "b0", "b1"]
        wait_until(lambda: slots.free() == 2, "every slot is given back")
    finally:
        a.close()
        b.close()


def test_an_error_in_a_ranking_reaches_its_caller_and_frees_the_slot(make_slots: Callable[[int], RankSlots]) -> None:
    slots = make_slots(1)
    runner = SlotRunner(slots, 2)

    def fails() -> None:
        raise ValueError("bad request")

    async def scenario() -> str:
        with pytest.raises(ValueError, match="bad request"):
            await runner.run(fails)
        return await runner.run(lambda: "next")

    try:
        assert asyncio.run(scenario()) == "next"
        wait_until(lambda: slots.free() == 1, "the slot is given back")
    finally:
        runner.close()


def test_the_next_start_removes_the_semaphore_a_killed_master_left(tmp_path: Path) -> None:
    """A master killed with SIGKILL cannot remove its semaphore; the next one on the same tier directory does."""
    tier = tmp_path / "tier"
    tier.mkdir()
    left = RankSlots.create(tier, 2)  # a master that never ran remove(): its id stays in the tier directory
    assert (tier / ID_FILE).read_text() == str(left.semid)
    slots = RankSlots.create(tier, 3)
    try:
        assert (tier / ID_FILE).read_text() == str(slots.semid)
        assert slots.free() == 3
        with pytest.raises(OSError, match=r"semctl\(GETVAL\)"):
            left.free()
    finally:
        slots.remove()
