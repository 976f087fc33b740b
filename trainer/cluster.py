"""``liverank cluster up``: replicated mode on one machine, to try it. A 3-node NATS JetStream cluster and 3
``liverank serve --log`` replicas on loopback ports, with a synthetic bundle; prints their URLs and the admin token,
and stops everything on Ctrl-C. README ("Replicas") shows the same across machines."""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import tempfile
import threading
from pathlib import Path

from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.replication.local_nats import NatsCluster
from liverank.trainer.servers import LiverankServer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liverank cluster", description="Replicated mode on loopback, to try it.")
    p.add_argument("action", choices=["up"], help="up: start, print URLs, stop on Ctrl-C")
    p.add_argument("--dir", type=Path, help="working directory (NATS stores, replica data, logs); default: a temp dir")
    p.add_argument("--nats-nodes", type=int, default=3, choices=[1, 3, 5], help="NATS JetStream nodes (default 3)")
    p.add_argument("--replicas", type=int, default=3, help="liverank replicas (default 3)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.replicas < 1:
        print("liverank cluster: --replicas must be at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="liverank-cluster-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            return _up(root, args.nats_nodes, args.replicas)
        except KeyboardInterrupt:  # before anything was serving: what had started is stopped on the way out
            print("\ninterrupted while starting; stopped.", file=sys.stderr)
            return 130


def _up(root: Path, nats_nodes: int, count: int) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    token = secrets.token_urlsafe(16)
    print(f"building a synthetic bundle in {root / 'bundle'} ...", flush=True)
    bundle = root / "bundle"
    if not (bundle / "manifest.json").is_file():
        build_synthetic_bundle(bundle, preset="tiny", dim=16, version="1")
    print(f"starting {nats_nodes} NATS JetStream node(s) ...", flush=True)
    replicas: list[LiverankServer] = []
    with NatsCluster(root / "nats", size=nats_nodes) as nats:
        try:
            for i in range(count):
                env = {
                    "LIVERANK_LOG": nats.urls,
                    "LIVERANK_STREAM": "liverank",
                    "LIVERANK_STREAM_REPLICAS": str(min(3, nats_nodes)),
                    "LIVERANK_ADMIN_TOKEN": token,
                    "LIVERANK_SNAPSHOT_INTERVAL_S": "60",
                }
                server = LiverankServer(f"r{i + 1}", root / f"r{i + 1}", bundle, root, extra_env=env)
                server.token = token
                print(f"starting replica r{i + 1} ...", flush=True)
                server.start()
                replicas.append(server)
            print()
            print(f"NATS (--log):  {nats.urls}")
            for server in replicas:
                print(f"replica {server.name}:    {server.url}   (log: {server.log_path})")
            print(f"admin token:   {token}")
            print(f"try:           curl -H 'Authorization: Bearer {token}' {replicas[0].url}/admin/status")
            print("Ctrl-C stops everything.", flush=True)
            stop.wait()
        except KeyboardInterrupt:
            pass  # Ctrl-C, at any moment: stop what was started
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            print("\nstopping replicas and NATS ...", flush=True)
            for server in replicas:
                server.stop()
    print("stopped.")
    return 0
