"""A load generator: N clients, each sending its next request as soon as the previous one is answered (closed loop),
or, with a rate, each on its own schedule (open loop, ``--rate-rps``: client ``i`` of ``N`` sends its ``n``-th
request at ``(i + n * N) / rate`` s). Paced latency counts from the scheduled start, not the actual send: a client
held up by a slow answer does not hide the wait its next request would have had (no coordinated omission).

It runs in its own process (``python -m liverank.benchmarks.load``), so its event loop does not share the server's
GIL. On a
2-core machine it still shares the CPU with the server: the result records the client's own CPU use, so a reader
can see how much of the machine the client took. ``LoadProcess`` starts it from the benchmark and reads its result.

Bodies come from a file, one request body per line; request ``j`` of client ``i`` sends body ``(i + j * N) % len``.
Requests started during the warm-up are not counted; the measurement window starts when the warm-up ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import numpy as np
import orjson

from liverank.benchmarks.http_client import HttpConnection, HttpError, encode_post

ClientKind = Literal["raw", "httpx"]
_MAX_FAILURES_KEPT = 200


@dataclass(frozen=True)
class LoadSpec:
    """One load run: where, what, how many clients, how long."""

    port: int
    path: str
    bodies: Path
    concurrency: int
    duration_s: float
    warmup_s: float = 2.0
    host: str = "127.0.0.1"
    client: ClientKind = "raw"
    samples: bool = False
    timeout_s: float = 30.0
    rate_rps: float | None = None  # open loop at this total rate (raw client only); None: closed loop

    def argv(self, out: Path) -> list[str]:
        args = [sys.executable, "-m", "liverank.benchmarks.load", "--host", self.host, "--port", str(self.port)]
        args += ["--path", self.path, "--bodies", str(self.bodies), "--concurrency", str(self.concurrency)]
        args += ["--duration-s", str(self.duration_s), "--warmup-s", str(self.warmup_s), "--client", self.client]
        args += ["--timeout-s", str(self.timeout_s), "--out", str(out)]
        if self.rate_rps is not None:
            args += ["--rate-rps", str(self.rate_rps)]
        return [*args, "--samples"] if self.samples else args


class _Records:
    def __init__(self) -> None:
        self.start_s: list[float] = []
        self.latency_s: list[float] = []
        self.status: list[int] = []
        self.failures: list[tuple[float, str]] = []

    def add(self, start_s: float, latency_s: float, status: int, failure: str | None) -> None:
        self.start_s.append(start_s)
        self.latency_s.append(latency_s)
        self.status.append(status)
        if failure is not None:
            self.failures.append((start_s, failure))


async def _raw_client(
    index: int, spec: LoadSpec, requests: list[bytes], t0: float, end: float, records: _Records
) -> None:
    conn = HttpConnection(spec.host, spec.port)
    await conn.connect()
    j = index
    period_s = None if spec.rate_rps is None else spec.concurrency / spec.rate_rps
    due = t0 + (0.0 if spec.rate_rps is None else index / spec.rate_rps)
    try:
        while (started := time.perf_counter()) < end:
            if period_s is not None:
                if due > started:
                    await asyncio.sleep(due - started)
                started = due  # the scheduled start: latency includes any wait behind a slow answer
                due += period_s
                if started >= end:
                    break
            failure: str | None = None
            try:
                status, _ = await asyncio.wait_for(conn.send(requests[j % len(requests)]), spec.timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError, TimeoutError) as exc:
                status, failure = -1, type(exc).__name__
                await conn.close()
            if status != 200 and failure is None:
                failure = f"http_{status}"
            records.add(started - t0, time.perf_counter() - started, status, failure)
            j += spec.concurrency
    finally:
        await conn.close()


async def _httpx_clients(spec: LoadSpec, bodies: list[bytes], t0: float, end: float, records: _Records) -> None:
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
    url = f"http://{spec.host}:{spec.port}{spec.path}"
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=spec.timeout_s) as client:

        async def one(index: int) -> None:
            j = index
            while (started := time.perf_counter()) < end:
                failure: str | None = None
                try:
                    status = (await client.post(url, content=bodies[j % len(bodies)], headers=headers)).status_code
                except httpx.HTTPError as exc:
                    status, failure = -1, type(exc).__name__
                if status != 200 and failure is None:
                    failure = f"http_{status}"
                records.add(started - t0, time.perf_counter() - started, status, failure)
                j += spec.concurrency

        await asyncio.gather(*(one(i) for i in range(spec.concurrency)))


async def _run(spec: LoadSpec, bodies: list[bytes]) -> dict[str, Any]:
    records = _Records()
    requests = [encode_post(spec.host, spec.port, spec.path, body) for body in bodies]
    t0 = time.perf_counter()
    t0_wall = time.time()
    cpu0 = time.process_time()
    end = t0 + spec.warmup_s + spec.duration_s
    print(f"started {t0_wall + spec.warmup_s:.6f}", flush=True)  # the parent times side actions from this
    if spec.client == "raw":
        await asyncio.gather(*(_raw_client(i, spec, requests, t0, end, records) for i in range(spec.concurrency)))
    else:
        await _httpx_clients(spec, bodies, t0, end, records)
    wall_s = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    return summarize(spec, records, t0_wall, wall_s, cpu_s)


def summarize(spec: LoadSpec, records: _Records, t0_wall: float, wall_s: float, cpu_s: float) -> dict[str, Any]:
    start = np.asarray(records.start_s)
    latency = np.asarray(records.latency_s)
    ok = np.asarray(records.status) == 200
    measured = start >= spec.warmup_s
    good = latency[measured & ok] * 1000.0
    window_s = float((start + latency)[measured].max() - spec.warmup_s) if measured.any() else 0.0
    percentiles = (
        dict(zip(("p50", "p90", "p99", "p999"), np.percentile(good, [50, 90, 99, 99.9]).tolist(), strict=True))
        if good.size
        else dict.fromkeys(("p50", "p90", "p99", "p999"))
    )
    out: dict[str, Any] = {
        "concurrency": spec.concurrency,
        "rate_rps": spec.rate_rps,
        "client": spec.client,
        "warmup_s": spec.warmup_s,
        "duration_s": spec.duration_s,
        "window_start_wall_s": t0_wall + spec.warmup_s,
        "window_s": window_s,
        "requests": int(measured.sum()),
        "requests_total": len(records.start_s),
        "ok": int(good.size),
        "failed": int((measured & ~ok).sum()),
        "failed_in_warmup": int((~measured & ~ok).sum()),
        "failures": [{"t_s": t, "kind": kind} for t, kind in records.failures[:_MAX_FAILURES_KEPT]],
        "latency_ms": {**percentiles, "max": float(good.max()) if good.size else None},
        "latency_mean_ms": float(good.mean()) if good.size else None,
        "rps": float(measured.sum() / window_s) if window_s > 0 else 0.0,
        "client_cpu_s": cpu_s,
        "client_cpu_cores": cpu_s / wall_s if wall_s > 0 else 0.0,
    }
    if spec.samples:
        out["samples"] = {"start_s": records.start_s, "latency_ms": (latency * 1000).tolist(), "status": records.status}
    return out


class LoadProcess:
    """A load generator child process; ``wait_started`` returns when its measurement window opens (wall clock)."""

    def __init__(self, spec: LoadSpec, workdir: Path, name: str) -> None:
        self.spec = spec
        self.out = workdir / f"{name}.json"
        self._log = workdir / f"{name}.log"
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                spec.argv(self.out),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_started(self, timeout_s: float = 60.0) -> float:
        """Wall-clock time at which the measurement window opens (after the warm-up)."""
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline().decode() if ready else ""
        if not line.startswith("started "):
            self.stop()
            raise RuntimeError(f"load generator did not start; see {self._log}")
        return float(line.split()[1])

    def wait(self) -> dict[str, Any]:
        budget_s = self.spec.warmup_s + self.spec.duration_s + self.spec.timeout_s + 60.0
        try:
            code = self._proc.wait(budget_s)
        finally:
            self.stop()
        if code != 0:
            raise RuntimeError(f"load generator exited with {code}; see {self._log}")
        result: dict[str, Any] = orjson.loads(self.out.read_bytes())
        return result

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def run_load(spec: LoadSpec, workdir: Path, name: str) -> dict[str, Any]:
    with LoadProcess(spec, workdir, name) as proc:
        proc.wait_started()
        return proc.wait()


def write_bodies(path: Path, bodies: list[bytes]) -> None:
    """One JSON body per line (orjson output has no newlines)."""
    path.write_bytes(b"\n".join(bodies) + b"\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m liverank.benchmarks.load", description="Closed-loop HTTP load generator."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--bodies", type=Path, required=True, help="file with one request body per line")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration-s", type=float, required=True)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--client", choices=["raw", "httpx"], default="raw")
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--samples", action="store_true", help="keep every request's start, latency and status")
    p.add_argument("--rate-rps", type=float, help="open loop: total requests per second over all clients")
    p.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    spec = LoadSpec(
        port=args.port,
        path=args.path,
        bodies=args.bodies,
        concurrency=args.concurrency,
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        host=args.host,
        client=args.client,
        samples=args.samples,
        timeout_s=args.timeout_s,
        rate_rps=args.rate_rps,
    )
    if spec.rate_rps is not None and (spec.rate_rps <= 0 or spec.client != "raw"):
        print("--rate-rps must be positive and needs --client raw", file=sys.stderr)
        return 2
    bodies = [line for line in args.bodies.read_bytes().split(b"\n") if line]
    if not bodies:
        print(f"no request bodies in {args.bodies}", file=sys.stderr)
        return 2
    result = asyncio.run(_run(spec, bodies))
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
