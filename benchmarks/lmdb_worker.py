"""The LMDB-side peers in a child process: liverank's LMDB-only path and naive py-lmdb ``getmulti``.

LMDB allows one environment per path per process, and the benchmark's own process holds the hot store open. The
child opens the same store with ``ram_budget_rows=0`` (every read goes to LMDB) and serves measurement requests,
one JSON object per line on stdin, one answer per line on stdout, so its peers alternate with the in-process ones.

Requests: ``{"op": "open", "path", "slot"}``, ``{"op": "measure", "peer", "batches"}`` (an ``.npy`` file of shape
``(n_batches, batch_size)``), ``{"op": "quit"}``. Answers carry the figures, or ``{"error": message}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from liverank.benchmarks.peers import GETMULTI, LMDB_ONLY, LookupFn, lmdb_getmulti, store_lookup, time_lookups
from liverank.store import EmbeddingStore


class _Server:
    def __init__(self) -> None:
        self.store: EmbeddingStore | None = None
        self.peers: dict[str, LookupFn] = {}
        self.batches: dict[str, np.ndarray[Any, np.dtype[np.uint64]]] = {}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "open":
            return self.open(str(request["path"]), str(request["slot"]))
        if op == "measure":
            return self.measure(str(request["peer"]), str(request["batches"]))
        raise ValueError(f"unknown op {op!r}")

    def open(self, path: str, slot: str) -> dict[str, Any]:
        started = time.perf_counter()
        store = EmbeddingStore.open(path, ram_budget_rows=0)
        open_s = time.perf_counter() - started
        config, code = store.lmdb.slot_table()[slot]
        self.store = store
        self.peers = {
            LMDB_ONLY.name: store_lookup(store, slot),
            GETMULTI.name: lmdb_getmulti(store.lmdb.env, store.lmdb.rows_db, code, config.dim),
        }
        source = store.lookup_many({slot: np.zeros(1, dtype=np.uint64)}).source
        return {"open_s": open_s, "source": source, "resident_rows": store.stats().resident_rows_by_slot}

    def measure(self, peer: str, batches_path: str) -> dict[str, Any]:
        if peer not in self.peers:
            raise ValueError(f"peer {peer!r} is not served here (open first; peers: {sorted(self.peers)})")
        batches = self.batches.get(batches_path)
        if batches is None:
            batches = self.batches[batches_path] = np.load(batches_path)
        lookup = self.peers[peer]
        elapsed_ns = time_lookups(lookup, batches)
        first = lookup(batches[0])
        return {"elapsed_ns": elapsed_ns, "keys": int(batches.size), "first_sum": float(first.sum(dtype=np.float64))}

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    server = _Server()
    try:
        for line in stdin:
            request = json.loads(line)
            if request.get("op") == "quit":
                break
            try:
                answer = server.handle(request)
            except Exception as exc:  # reported to the parent, which raises it there
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            stdout.write(json.dumps(answer) + "\n")
            stdout.flush()
    finally:
        server.close()


class LmdbWorker:
    """The parent's handle on the child: start it, send requests, stop it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LmdbWorker:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "liverank.benchmarks.lmdb_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def request(self, **fields: Any) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the LMDB worker is not running")
        process.stdin.write(json.dumps(fields) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the LMDB worker exited (code {process.poll()}) while answering {fields}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"LMDB worker: {answer['error']}")
        return answer

    def open(self, path: Path, slot: str) -> dict[str, Any]:
        return self.request(op="open", path=str(path), slot=slot)

    def measure(self, peer: str, batches: Path) -> dict[str, Any]:
        return self.request(op="measure", peer=peer, batches=str(batches))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None and process.stdin is not None:
            try:
                process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(60)
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
