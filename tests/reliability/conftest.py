"""Real ``liverank serve`` processes, real faults: the harness the reliability tests and ``scripts/kill9_series.py``
share.

``ServerProcess`` (a thin subclass of ``liverank.server_process.ServerProcess``, the helper every ``liverank serve``
child process goes through) runs ``python -m liverank.cli serve`` as a child process (port 0: the port is read back
from uvicorn's start-up line), waits for ``/readyz``, and is stopped with SIGTERM or killed with SIGKILL. The child's
stdout and stderr go to one log file per server, which the tests read (start-up errors, the admin token never
logged).

The crash stream (used by the kill -9 series): delta ``k`` of producer ``trainer`` writes group ``k`` of
``item_id`` (fresh ids: ``BIG_GROUP_ROWS`` for every 8th delta, so that the updater falls behind and kills find
acknowledged deltas still queued, ``GROUP_ROWS`` otherwise) and rewrites one shared ``item_id`` row and one shared
``author_id`` row, every row to ``float(k)`` with event time ``k``. So the store alone tells which deltas are
applied, and whether any is applied partly or twice (``check_store``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from liverank import server_process
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.store import EmbeddingStore, Inbox, SlotDelta, SparseDelta, encode_delta

REPO_ROOT = Path(__file__).resolve().parents[2]
# Distinctive, so that finding it in a log (or an answer) cannot be a coincidence.
TOKEN = "rel-admin-token-5c1e9a7f2b"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DIM = 8
PRODUCER = "trainer"
GROUP_ROWS = 32
BIG_GROUP_ROWS = 4000
_GROUP_STRIDE = 1 << 24  # group k holds ids k, k + stride, k + 2 stride, ...: spread over the tree
SHARED_ITEM_ID = 0  # no group's id (groups start at 1)
SHARED_AUTHOR_ID = 7
KILL9_MAP_SIZE_BYTES = 1 << 30
START_TIMEOUT_S = 90.0


def build_bundle(path: Path, version: str, seed: int = 0) -> Path:
    build_synthetic_bundle(path, preset="tiny", dim=DIM, version=version, seed=seed)
    return path


def server_env(extra: Mapping[str, str] | None = None, *, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVERANK_")}
    if token is not None:
        env["LIVERANK_ADMIN_TOKEN"] = token
    env.update(extra or {})
    return env


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children, then theirs), from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(children)
            todo.extend(children)
    return out


class ServerProcess(server_process.ServerProcess):
    """``liverank serve`` on ``data_dir`` in a child process (``liverank.server_process``), restartable on the same
    data directory after a stop or a kill; leaving the ``with`` block kills it (SIGKILL: no shutdown code runs)."""

    def __init__(
        self,
        data_dir: Path,
        bundle: Path | None,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        token: str | None = TOKEN,
    ) -> None:
        self.cwd: Path = cwd or REPO_ROOT
        super().__init__(
            server_process.serve_command(data_dir, bundle, args),
            log_path=log_path,
            # The shared RAM tier beside the data (not under /dev/shm): a SIGKILLed test server leaves nothing behind.
            env=server_env({"LIVERANK_SHARED_TIER_DIR": str(data_dir / "tier"), **(env or {})}, token=token),
            cwd=self.cwd,
        )
        self.data_dir = data_dir

    def kill(self) -> None:
        """SIGKILL to the whole server (master, writer, workers at once, as an OOM kill of its cgroup would):
        no shutdown code runs anywhere."""
        if self.proc is not None and self.proc.poll() is None:
            for pid in [*descendants(self.proc.pid), self.proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        super().kill()

    @property
    def tier_dir(self) -> Path:
        return self.data_dir / "tier"

    def writer_pid(self) -> int:
        return int((self.tier_dir / "writer.pid").read_text())

    def worker_pids(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.tier_dir / "workers").glob("*.json"))

    def kill_part(self, target: str, rng: random.Random) -> int:
        """SIGKILL one part of the running server: ``writer`` or a random ``worker``. Returns its pid."""
        pid = self.writer_pid() if target == "writer" else rng.choice(self.worker_pids())
        os.kill(pid, signal.SIGKILL)
        return pid

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store"

    def start(self, *, ready: bool = True, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        super().start(ready=ready, timeout_s=timeout_s)
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# --- the crash stream -----------------------------------------------------------------------------------------


def group_rows(seq: int) -> int:
    return BIG_GROUP_ROWS if seq % 8 == 3 else GROUP_ROWS


def group_ids(seq: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    return np.arange(group_rows(seq), dtype=np.uint64) * np.uint64(_GROUP_STRIDE) + np.uint64(seq)


def _rows(ids: np.ndarray[Any, np.dtype[np.uint64]], value: int) -> SlotDelta:
    n = len(ids)
    return SlotDelta(ids, np.full((n, DIM), float(value), dtype=np.float32), np.full(n, value, dtype=np.int64))


def stream_delta(schema_hash: str, seq: int, producer: str = PRODUCER) -> bytes:
    items = np.concatenate([group_ids(seq), np.asarray([SHARED_ITEM_ID], dtype=np.uint64)])
    authors = np.asarray([SHARED_AUTHOR_ID], dtype=np.uint64)
    slots = {"item_id": _rows(items, seq), "author_id": _rows(authors, seq)}
    return encode_delta(SparseDelta(producer, seq, schema_hash, seq, slots))


@dataclass
class StoreCheck:
    """What a stopped server's store holds: ``applied`` deltas whole, ``queued`` (acknowledged) ones in the inbox."""

    applied: int
    queued_to: int
    generation: int
    applied_left: bool = False  # the inbox still held the last applied delta's entry (killed before its removal)
    violations: list[str] = field(default_factory=list)


def check_store(store_path: Path, acked: set[int], sent_max: int, map_size_bytes: int) -> StoreCheck:
    """Open the store of a stopped server and check the crash stream's invariants.

    Every applied delta (1..applied) is there whole and once; nothing of a later delta is; the inbox holds exactly
    the sequences after ``applied`` up to ``queued_to``, plus at most the entry of ``applied`` itself (the writer
    removes an entry after the transaction that applied it commits: a kill between the two leaves it, and the next
    writer retires it as a duplicate); every acknowledged sequence is applied or queued.
    """
    with EmbeddingStore.open(store_path, map_size_bytes=map_size_bytes, ram_budget_rows=1 << 20) as store:
        applied = store.applied_seq(PRODUCER)
        stats = store.stats()
        pending = Inbox(store.lmdb, 1 << 30).pending(limit=1 << 30)
        queued = [entry.seq for entry in pending if entry.producer == PRODUCER]
        check = StoreCheck(applied, queued[-1] if queued else applied, stats.generation, applied_left=applied in queued)
        if check.applied_left:
            queued.remove(applied)
        queued_to = check.queued_to
        bad = check.violations
        if queued != list(range(applied + 1, queued_to + 1)):
            bad.append(f"inbox holds {queued[:5]}..., not the run {applied + 1}..{queued_to}")
        lost = sorted(s for s in acked if s > queued_to)
        if lost:
            bad.append(f"acknowledged deltas neither applied nor queued: {lost[:10]}")
        if stats.generation != applied:
            bad.append(f"generation {stats.generation} != applied sequence {applied}: a delta applied twice?")
        expected_rows = sum(group_rows(s) for s in range(1, applied + 1)) + (1 if applied else 0)
        if stats.rows_by_slot.get("item_id", 0) != expected_rows:
            bad.append(f"item_id holds {stats.rows_by_slot.get('item_id')} rows, expected {expected_rows}")
        if applied:
            seqs = np.concatenate([np.full(group_rows(s), s) for s in range(1, applied + 1)])
            found = store.lookup("item_id", np.concatenate([group_ids(s) for s in range(1, applied + 1)]))
            wrong = ~np.all(found.vectors == seqs[:, None].astype(np.float32), axis=1) | (found.updated_at_ms != seqs)
            if found.unseen.any() or wrong.any():
                rows = np.flatnonzero(found.unseen | wrong)
                bad.append(f"{len(rows)} rows of applied deltas are missing or wrong, e.g. seq {seqs[rows[:5]]}")
        later = range(applied + 1, max(sent_max, queued_to) + 3)
        unseen = store.lookup("item_id", np.concatenate([group_ids(s) for s in later])).unseen
        if not unseen.all():
            bad.append(f"{int((~unseen).sum())} rows of deltas after {applied} are visible (a partial delta)")
        for slot, row in (("item_id", SHARED_ITEM_ID), ("author_id", SHARED_AUTHOR_ID)):
            shared = store.lookup(slot, [row])
            value = None if shared.unseen[0] else float(shared.vectors[0, 0])
            if value != (float(applied) if applied else None) or (
                value is not None and shared.updated_at_ms[0] != applied
            ):
                bad.append(f"shared {slot} row reads {value}, expected {applied or None}")
    return check


class Producer(threading.Thread):
    """Streams the crash stream from ``start_seq`` as fast as the server acknowledges it, until stopped or the
    connection dies. Every 16th delta asks for ``?wait=visible``."""

    def __init__(self, url: str, schema_hash: str, start_seq: int) -> None:
        super().__init__(name="kill9-producer", daemon=True)
        self.url = url
        self.schema_hash = schema_hash
        self.next_seq = start_seq
        self.sent_max = start_seq - 1
        self.acked: list[int] = []
        self.unexpected: list[str] = []
        self.transport_error = False
        self._stop_flag = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop_flag.is_set():
                seq = self.next_seq
                query = "?wait=visible" if seq % 16 == 0 else ""
                self.sent_max = max(self.sent_max, seq)
                try:
                    answer = client.post(
                        f"/admin/deltas{query}", content=stream_delta(self.schema_hash, seq), headers=ADMIN
                    )
                except httpx.TransportError:
                    self.transport_error = True
                    return
                if answer.status_code in (200, 202):
                    self.acked.append(seq)
                    self.next_seq = seq + 1
                elif answer.status_code == 429:
                    time.sleep(float(answer.headers.get("retry-after", "1")))
                else:
                    self.unexpected.append(f"seq {seq}: {answer.status_code} {answer.text[:200]}")
                    return

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(60)


@dataclass
class Kill9Trial:
    trial: int
    delay_s: float
    resumed_from: int  # the applied sequence the restarted server reported, plus one
    gap_probe: bool  # a deliberate gap was sent first, and 409's expected_seq named the resume point
    sent: int
    acked: int
    last_acked: int
    applied_at_kill: int
    queued_at_kill: int
    violations: list[str]
    applied_entry_left: bool = False  # killed between a delta's LMDB commit and its inbox entry's removal

    @property
    def ack_then_kill_before_apply(self) -> bool:
        return self.queued_at_kill > self.applied_at_kill

    @property
    def committed_not_acked(self) -> bool:
        return self.queued_at_kill > self.last_acked


@dataclass
class Kill9Report:
    trials: list[Kill9Trial]
    final_applied: int
    final_violations: list[str]
    seconds: float

    @property
    def violations(self) -> list[str]:
        out = [f"trial {t.trial}: {v}" for t in self.trials for v in t.violations]
        return out + [f"final: {v}" for v in self.final_violations]

    def summary(self) -> dict[str, Any]:
        return {
            "trials": len(self.trials),
            "acked_deltas": sum(t.acked for t in self.trials),
            "final_applied_seq": self.final_applied,
            "kills_with_acked_deltas_still_queued": sum(t.ack_then_kill_before_apply for t in self.trials),
            "kills_after_commit_before_ack": sum(t.committed_not_acked for t in self.trials),
            "kills_between_apply_and_entry_removal": sum(t.applied_entry_left for t in self.trials),
            "gap_probes": sum(t.gap_probe for t in self.trials),
            "violations": self.violations,
            "seconds": round(self.seconds, 1),
        }

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "trials": [asdict(t) for t in self.trials]}


def _restart_and_resume(
    server: ServerProcess, expect_applied: int, probe_gap: bool
) -> tuple[str, int, bool, list[str]]:
    """Start the server again; the sequence it reports must be exactly what the stopped store held (applied plus
    queued). Returns the schema hash, the resume sequence and the violations."""
    bad: list[str] = []
    server.start()
    with server.client() as client:
        status = client.get("/admin/status", headers=ADMIN).json()
        applied = int(status["applied_seq"].get(PRODUCER, 0))
        if applied != expect_applied:
            bad.append(f"after restart the server reports applied {applied}, the store held {expect_applied}")
        if status["inbox_depth"] != 0:
            bad.append(f"inbox not drained when ready: {status['inbox_depth']}")
        if status["store"]["generation"] != applied:
            bad.append(f"generation {status['store']['generation']} != applied {applied} after restart")
        schema = client.get("/v1/model").json()["manifest"]["schema_hash"]
        probed = False
        if probe_gap:
            gap = client.post("/admin/deltas", content=stream_delta(schema, applied + 3), headers=ADMIN)
            probed = gap.status_code == 409 and gap.json().get("expected_seq") == applied + 1
            if not probed:
                bad.append(f"a gap got {gap.status_code} {gap.text[:200]}, not 409 with expected_seq {applied + 1}")
    return schema, applied + 1, probed, bad


def run_kill9_series(
    workdir: Path,
    bundle: Path,
    *,
    trials: int,
    seed: int,
    delay_range_s: tuple[float, float] = (0.05, 1.0),
    progress: Callable[[Kill9Trial], None] | None = None,
    target: str = "server",
    workers: int = 2,
) -> Kill9Report:
    """Start, stream, SIGKILL at a random moment, check the stopped store, restart, resume: ``trials`` times.

    ``target``: ``server`` kills the whole server; ``writer`` or ``worker`` kills that one process, lets the server
    replace it and become ready again while the producer keeps streaming, then kills the whole server for the check
    (so an acknowledged delta lost by the partial kill shows up as a violation)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    server = ServerProcess(
        workdir / "data",
        bundle,
        log_path=workdir / "server.log",
        env={"LIVERANK_MAP_SIZE_BYTES": str(KILL9_MAP_SIZE_BYTES)},
        args=["--workers", str(workers)],
    )
    acked: set[int] = set()
    results: list[Kill9Trial] = []
    expect_applied = 0
    with server:
        for trial in range(trials):
            schema, resume, probed, bad = _restart_and_resume(server, expect_applied, probe_gap=trial % 3 == 1)
            delay_s = rng.uniform(*delay_range_s)
            producer = Producer(server.url, schema, resume)
            producer.start()
            time.sleep(delay_s)
            if target != "server":
                server.kill_part(target, rng)
                try:
                    server.wait_ready()
                except server_process.ServerNotStarted as exc:
                    bad.append(f"not ready again after the {target} was killed: {exc}")
                time.sleep(rng.uniform(*delay_range_s))  # stream on against the repaired server
            server.kill()
            producer.stop()
            bad += producer.unexpected
            acked.update(producer.acked)
            check = check_store(server.store_path, acked, producer.sent_max, KILL9_MAP_SIZE_BYTES)
            expect_applied = check.queued_to
            result = Kill9Trial(
                trial=trial,
                delay_s=round(delay_s, 4),
                resumed_from=resume,
                gap_probe=probed,
                sent=producer.sent_max - resume + 1,
                acked=len(producer.acked),
                last_acked=max(acked, default=0),
                applied_at_kill=check.applied,
                queued_at_kill=check.queued_to,
                violations=bad + check.violations,
                applied_entry_left=check.applied_left,
            )
            results.append(result)
            if progress is not None:
                progress(result)
        _, _, _, final_bad = _restart_and_resume(server, expect_applied, probe_gap=False)
        server.stop()
    final = check_store(server.store_path, acked, max(acked, default=0), KILL9_MAP_SIZE_BYTES)
    if final.queued_to != final.applied or final.applied_left:
        final_bad.append(
            f"after a clean stop the inbox still holds entries (applied {final.applied}, queued to "
            f"{final.queued_to}, the applied one left: {final.applied_left})"
        )
    return Kill9Report(results, final.applied, final_bad + final.violations, time.perf_counter() - started)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundle_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundles") / "v1", "1")


@pytest.fixture
def make_server(tmp_path: Path, bundle_v1: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory of server processes on fresh data directories; every one is killed at teardown."""
    made: list[ServerProcess] = []

    def make(
        *, env: Mapping[str, str] | None = None, args: Sequence[str] = (), name: str = "server", **kwargs: Any
    ) -> ServerProcess:
        kwargs.setdefault("bundle", bundle_v1)
        server = ServerProcess(tmp_path / name, log_path=tmp_path / f"{name}.log", env=env, args=args, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()
