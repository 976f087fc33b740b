"""How many rankings the whole server computes at once, and where: one count shared by the workers of ``liverank
serve``, and at most one ranking per worker while the others have work.

What was measured (BENCHMARKS.md, fifth run; 2 cores, 2 workers, W-500):
- A ranking is CPU from start to end (JSON, lookups, ONNX Runtime, the answer). One ranking at a time in each
  worker cost 0.5-1 ms less CPU per request than two, and the server answered 15-20 % more: two ranking threads in
  one process hand the GIL back and forth, and more rankings than cores evict each other's caches (4 workers of one
  thread each were as costly as 2 workers of two threads).
- But one ranking per worker caps each worker at one core, and clients keep their connections: the kernel spread 8
  connections over 2 workers 2 / 6 in three of five tries. The busier worker then queued with a core idle, and under
  open-loop load with deltas its latency grew without bound (p99 3-6 s at 70 % of the maximum rate).
- A server-wide count alone (any worker may take any slot) did not help: two rankings often ran in one worker, and
  a slot moving between processes left cores idle (1.71 cores used, 7.8 ms CPU per request).

So each worker ranks on threads of its own (``SlotRunner``): its first thread waits for a slot when work arrives and
keeps it while the worker has work; the others borrow a slot only when another worker has given its slot back (it
has no work), and give it back after each ranking if a ranking anywhere waits for one. With every worker busy, each
runs one ranking at a time; when one worker's clients are idle, a busier worker uses that core.

The count is a System V semaphore: the kernel blocks a waiter without spinning (the calls release the GIL), and
``SEM_UNDO`` gives a slot back when its holder dies, SIGKILL included, so a killed worker cannot leak one (POSIX
semaphores cannot do that). The master makes it before the workers start, names it in the tier directory and
removes it when it stops; a master killed with SIGKILL cannot, and the next start on the same data directory removes
the one it left (until then it is a few bytes of kernel memory; `ipcs -s` lists them).
A standalone app has none: its own thread limit is the only one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from liverank.serving.errors import RankingUnavailable

T = TypeVar("T")

_IPC_PRIVATE = 0
_IPC_CREAT = 0o1000
_IPC_RMID = 0
_GETNCNT = 14
_GETVAL = 12
_SETVAL = 16
_SEM_UNDO = 0x1000
_MAX_SLOTS = 32767  # SEMVMX: a semaphore's largest value
ID_FILE = "rank-slots.id"  # in the tier directory: the semaphore's id, for the workers and a restarted master


class _SemBuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


_libc = ctypes.CDLL(None, use_errno=True)  # ctypes releases the GIL around every call: a blocked wait holds none
_libc.semget.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_libc.semop.argtypes = [ctypes.c_int, ctypes.POINTER(_SemBuf), ctypes.c_size_t]
_libc.semctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class RankSlots:
    """A server's count of rankings computed at once (see the module docstring)."""

    def __init__(self, semid: int) -> None:
        self.semid = semid

    @classmethod
    def create(cls, tier: Path, slots: int) -> RankSlots:
        """The master's: make the server's semaphore with ``slots`` free, and name it in the tier directory. A
        semaphore named there by a server that died without removing it (SIGKILL) is removed first."""
        if not 1 <= slots <= _MAX_SLOTS:
            raise ValueError(f"rank slots must be in 1..{_MAX_SLOTS}, got {slots}")
        id_file = tier / ID_FILE
        with contextlib.suppress(FileNotFoundError, ValueError):
            cls(int(id_file.read_text())).remove()
        semid = _check(_libc.semget(_IPC_PRIVATE, 1, _IPC_CREAT | 0o600), "semget")
        made = cls(semid)
        try:
            _check(_libc.semctl(semid, 0, _SETVAL, slots), "semctl(SETVAL)")
            id_file.write_text(str(semid))
        except BaseException:
            made.remove()
            raise
        return made

    def waiters(self) -> int:
        """Processes' threads waiting for a slot now (GETNCNT)."""
        return _check(_libc.semctl(self.semid, 0, _GETNCNT, 0), "semctl(GETNCNT)")

    def free(self) -> int:
        """Slots free now (for status and tests)."""
        return _check(_libc.semctl(self.semid, 0, _GETVAL, 0), "semctl(GETVAL)")

    def remove(self) -> None:
        """The master's, at stop: the semaphore goes (waiters, if any, get EIDRM); one already gone is no error."""
        if _libc.semctl(self.semid, 0, _IPC_RMID, 0) == -1 and ctypes.get_errno() not in (errno.EINVAL, errno.EIDRM):
            _check(-1, "semctl(IPC_RMID)")

    def take(self) -> None:
        """Take a slot, waiting until one is free (the wait holds no GIL)."""
        self._op(-1)

    def give_back(self) -> None:
        self._op(+1)

    def _op(self, delta: int) -> None:
        op = _SemBuf(0, delta, _SEM_UNDO)
        while _libc.semop(self.semid, ctypes.byref(op), 1) == -1:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue  # a signal arrived while waiting: wait again
            raise RankingUnavailable(
                f"the server's ranking slots are gone ({os.strerror(err)}): the server is stopping or was restarted"
            )


class _Job:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.args = args
        self.future = future

    def run(self) -> None:
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # delivered to the awaiting request, as anyio's threads do
            self._deliver(None, exc)
        else:
            self._deliver(result, None)

    def _deliver(self, result: Any, exc: BaseException | None) -> None:
        def settle() -> None:
            if self.future.done():  # the request was cancelled (its client went away)
                return
            if exc is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(exc)

        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits any more
            self.future.get_loop().call_soon_threadsafe(settle)


class SlotRunner:
    """One worker's ranking threads, each running in one of the server's slots (see the module docstring).

    ``await run(fn, *args)`` queues a ranking and waits for its result. Thread 0 (the worker's own) waits for a slot
    when work arrives and keeps it while this worker has work. The others *borrow*: they wait for a slot only while
    rankings queue here, get one only when another worker gives its slot back (it has no work) or a borrower yields
    one, and yield it after each ranking if a ranking anywhere waits for a slot. With every worker busy, each runs
    one ranking at a time; a busier worker uses the cores the others do not need.
    """

    def __init__(self, slots: RankSlots, threads: int) -> None:
        self._slots = slots
        self._jobs: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self._own_wakes = threading.Condition(self._lock)
        self._borrow_wakes = threading.Condition(self._lock)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, args=(i > 0,), name=f"liverank-rank-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._closed:
                raise RankingUnavailable("the worker is stopping")
            self._jobs.append(_Job(fn, args, future))
            self._own_wakes.notify()
        return await future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._own_wakes.notify_all()
            self._borrow_wakes.notify_all()
        for thread in self._threads:
            thread.join(10)

    def _next_job(self) -> _Job | None:
        with self._lock:
            if not self._jobs:
                return None
            job = self._jobs.popleft()
            if self._jobs:
                self._borrow_wakes.notify()  # more queued than this thread can take: a borrower may find a slot
            return job

    def _serve(self, borrower: bool) -> None:
        wakes = self._borrow_wakes if borrower else self._own_wakes
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    wakes.wait()
                if self._closed and not self._jobs:
                    return
            try:
                self._slots.take()  # off the GIL; a borrower gets one only when another worker gives one back
            except RankingUnavailable as exc:
                self._fail_queued(exc)
                continue
            try:
                while (job := self._next_job()) is not None:
                    job.run()
                    if borrower and self._slots.waiters() > 0:
                        break  # a ranking waits for a slot somewhere: give the borrowed one back
                    # Let this worker's other threads have the GIL between rankings (the event loop answering
                    # ?wait=visible, a pushed delta's intake); otherwise they get it only at the switch interval.
                    time.sleep(0)
            finally:
                self._slots.give_back()

    def _fail_queued(self, exc: RankingUnavailable) -> None:
        with self._lock:
            jobs, self._jobs = list(self._jobs), collections.deque()
        for job in jobs:
            job._deliver(None, exc)
