"""Push -> visible on **all** replicas, under ranking load (issue 13's target: p99 <= 250 ms at D-10k).

A 3-node NATS JetStream cluster (stream R3) and 3 ``liverank serve --log`` replicas on loopback. A producer pushes
one D-10k-shaped delta a second (10,000 rows: item_id 70 %, author_id 20 %, tags 10 %, Zipf-popular ids plus 5 %
new; ``WORKLOADS.md``) through the replicas in turn; ranking threads keep every replica busy; one poller per replica
reads ``/v1/model``'s epoch every few ms. A delta's figure is the time from sending its push to the moment the
last replica's epoch showed its seq (so it includes the poll interval). On one loaded 2-core machine every process
(3 NATS nodes, 3 servers with their writers, the load) shares two cores: the figures are noisy and pessimistic.

    .venv/bin/python scripts/replication_bench.py --deltas 30 --out replication-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from liverank.benchmarks.machine import machine_info  # noqa: E402
from liverank.exporter.synthetic import build_synthetic_bundle  # noqa: E402
from liverank.serving.replication.local_nats import NatsCluster  # noqa: E402
from liverank.store import SlotDelta, SparseDelta, encode_delta  # noqa: E402
from liverank.trainer.servers import LiverankServer  # noqa: E402

PRODUCER = "bench-d10k"
SHARES = {"item_id": 0.7, "author_id": 0.2, "tags": 0.1}
CARDINALITY = {"item_id": 1_000_000, "author_id": 100_000, "tags": 20_000}


def d10k_delta(schema_hash: str, seq: int, rows: int, dim: int, rng: np.random.Generator) -> bytes:
    slots = {}
    for slot, share in SHARES.items():
        n = int(rows * share)
        popular = (rng.zipf(1.1, n * 2) - 1) % CARDINALITY[slot]
        fresh = CARDINALITY[slot] + seq * rows + np.arange(int(n * 0.05))
        ids = np.unique(np.concatenate([popular, fresh]).astype(np.uint64))[:n]
        values = rng.standard_normal((len(ids), dim)).astype(np.float32)
        slots[slot] = SlotDelta(ids, values, np.full(len(ids), seq, dtype=np.int64))
    return encode_delta(SparseDelta(PRODUCER, seq, schema_hash, seq, slots))


def rank_body(rng: np.random.Generator, n: int = 200) -> dict[str, Any]:
    return {
        "user": {"user_id": int(rng.integers(0, 1000)), "hist_item_ids": [int(x) for x in rng.integers(0, 1000, 10)]},
        "candidates": {
            "item_id": [int(x) for x in rng.integers(0, 100_000, n)],
            "author_id": [int(x) for x in rng.integers(0, 10_000, n)],
            "tags": [[int(x)] for x in rng.integers(0, 2_000, n)],
        },
        "k": 20,
    }


class EpochPoller(threading.Thread):
    """Records when a replica first serves each seq of the producer."""

    def __init__(self, server: LiverankServer, interval_s: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.interval_s, self.stop = server, interval_s, stop
        self.first_seen: dict[int, float] = {}

    def run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            last = 0
            while not self.stop.is_set():
                try:
                    seq = client.get("/v1/model").json()["epoch"]["sparse_seq"].get(PRODUCER, 0)
                except (httpx.HTTPError, KeyError, ValueError):
                    seq = last
                now = time.monotonic()
                for k in range(last + 1, seq + 1):
                    self.first_seen[k] = now
                last = max(last, seq)
                time.sleep(self.interval_s)


def rank_load(servers: list[LiverankServer], stop: threading.Event, counts: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
    i = 0
    while not stop.is_set():
        clients[i % len(clients)].post("/v1/rank", json=rank_body(rng))
        counts[0] += 1
        i += 1
    for client in clients:
        client.close()


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deltas", type=int, default=30)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--rank-threads", type=int, default=2)
    p.add_argument("--poll-ms", type=float, default=5.0)
    p.add_argument("--max-payload-bytes", type=int, default=8 * 1024**2, help="NATS max message (0: its 1 MiB default)")
    p.add_argument(
        "--standalone", action="store_true", help="the peer: one server without --log (visible on itself), same load"
    )
    p.add_argument("--out", type=Path, default=Path("replication-bench.json"))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="replication-bench-") as tmp:
        root = Path(tmp)
        bundle = root / "bundle"
        build_synthetic_bundle(bundle, preset="tiny", dim=args.dim, version="1")
        token = "bench-token"
        max_payload = args.max_payload_bytes or None
        with NatsCluster(root / "nats", size=1 if args.standalone else 3, max_payload_bytes=max_payload) as nats:
            servers = []
            try:
                for i in range(1 if args.standalone else 3):
                    env = {"LIVERANK_ADMIN_TOKEN": token}
                    if not args.standalone:
                        env.update({"LIVERANK_LOG": nats.urls, "LIVERANK_STREAM_REPLICAS": "3"})
                    server = LiverankServer(f"r{i + 1}", root / f"r{i + 1}", bundle, root, extra_env=env)
                    server.token = token
                    server.start()
                    servers.append(server)
                    print(f"replica {server.name} ready at {server.url}", flush=True)
                result = run(servers, token, args, rng)
            finally:
                for server in servers:
                    server.stop()
    result["machine"] = machine_info(REPO_ROOT)
    result["load_average"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "per_delta_ms")}, indent=2))
    return 0


def run(
    servers: list[LiverankServer], token: str, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=servers[0].url, timeout=30) as client:
        schema = client.get("/v1/model").json()["manifest"]["schema_hash"]
    stop = threading.Event()
    pollers = [EpochPoller(s, args.poll_ms / 1000, stop) for s in servers]
    ranked = [0]
    loaders = [
        threading.Thread(target=rank_load, args=(servers, stop, ranked, seed), daemon=True)
        for seed in range(args.rank_threads)
    ]
    for thread in [*pollers, *loaders]:
        thread.start()
    deltas = [d10k_delta(schema, seq, args.rows, args.dim, rng) for seq in range(1, args.deltas + 1)]
    sent: dict[int, float] = {}
    acked_ms: list[float] = []
    clients = [httpx.Client(base_url=s.url, timeout=60, headers=headers) for s in servers]
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    for seq, body in enumerate(deltas, start=1):
        next_at = started + (seq - 1)  # one delta a second
        time.sleep(max(0.0, next_at - time.monotonic()))
        sent[seq] = time.monotonic()
        answer = clients[seq % len(clients)].post("/admin/deltas", content=body)
        acked_ms.append((time.monotonic() - sent[seq]) * 1000)
        if answer.status_code != 202:
            raise RuntimeError(f"push {seq}: {answer.status_code} {answer.text}")
        print(f"delta {seq}: acknowledged in {acked_ms[-1]:.0f} ms", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(len(p.first_seen) >= args.deltas for p in pollers):
        time.sleep(0.1)
    stop.set()
    elapsed = time.monotonic() - started
    per_delta = [(max(p.first_seen.get(seq, float("inf")) for p in pollers) - sent[seq]) * 1000 for seq in sent]
    for c in clients:
        c.close()
    return {
        "mode": "standalone (no log, one server)" if args.standalone else "replicated (3 NATS nodes R3, 3 replicas)",
        "deltas": args.deltas,
        "rows_per_delta": args.rows,
        "dim": args.dim,
        "delta_bytes": len(deltas[0]),
        "nats_max_payload_bytes": args.max_payload_bytes or 1024**2,
        "poll_ms": args.poll_ms,
        "push_to_visible_on_all_ms": {
            "p50": quantile(per_delta, 0.5),
            "p99": quantile(per_delta, 0.99),
            "max": max(per_delta),
        },
        "push_acknowledged_ms": {"p50": quantile(acked_ms, 0.5), "p99": quantile(acked_ms, 0.99)},
        "rank_requests_per_s": ranked[0] / elapsed,
        "load_average_at_start": load_start,
        "per_delta_ms": per_delta,
    }


if __name__ == "__main__":
    raise SystemExit(main())
