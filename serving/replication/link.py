"""A NATS connection with its own asyncio loop on a thread, callable from plain (blocking) threads.

The serving core is threaded, nats-py is asyncio: each process that talks to the log (the HTTP process publishes,
the writer process consumes) keeps one ``NatsLink`` and hands it coroutines with ``run``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from liverank.serving.errors import ConfigInvalid, LogUnavailable
from liverank.serving.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Record headers (a record's body is a delta's binary form, or empty when the delta went to the object store).
HDR_KIND = "Liverank-Kind"  # "delta" (more kinds later: bundle records)
HDR_PRODUCER = "Liverank-Producer"
HDR_SEQ = "Liverank-Seq"
HDR_RECEIVED_MS = "Liverank-Received-Ms"
HDR_OBJECT = "Liverank-Object"  # the object-store name holding a delta too large for one message
HDR_SHA256 = "Liverank-Sha256"
# The store's app record where the writer leaves the last bundle record it retired (bundle_log.py carries it out).
LOG_BUNDLE_RECORD = "log_bundle"
# ... and where the serving process notes the position of the last one it carried out. The writer reads no record
# after a bundle record until then: a replica's deltas and bundles change in log order.
LOG_BUNDLE_DONE_RECORD = "log_bundle_done"
# The stream's de-duplication window: a producer's retry of a push the log already holds is dropped by its msg id.
DUPLICATE_WINDOW_S = 120.0
# JetStream's "no suitable peers for placement": a replicated stream needs that many peers online, which a cluster
# whose nodes are still finding each other (they and the replicas were just started together) does not have yet.
ERR_NO_PLACEMENT = 10005
# How long start-up waits for such a cluster to place the stream before it gives up with a clear error.
PLACEMENT_WAIT_S = 30.0
_PLACEMENT_RETRY_S = 0.25


@dataclass(frozen=True)
class LogConfig:
    """Where the log is and how to reach it (plain values: it crosses into the writer process). ``password`` and
    ``token`` are secrets: never logged, and left out of ``repr``."""

    servers: tuple[str, ...]
    stream: str
    replicas: int
    max_age_s: float
    max_bytes: int | None
    timeout_s: float
    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"LogConfig(servers={self.servers}, stream={self.stream!r}, replicas={self.replicas})"

    @property
    def subjects(self) -> str:
        return f"{self.stream}.>"

    @property
    def deltas_bucket(self) -> str:
        """Deltas too large for one message: needed only as long as their record is in the stream."""
        return f"{self.stream}-deltas"

    @property
    def state_bucket(self) -> str:
        """Bundles and snapshots: kept until replaced (bootstrapping replicas need them after the records age out)."""
        return f"{self.stream}-state"

    def delta_subject(self, producer: str) -> str:
        """One subject per producer (hex of its UTF-8 name: any name is a valid subject token), so the last record
        on it gives the producer's last sequence, and a publish can be made conditional on it."""
        return f"{self.stream}.delta.{producer.encode('utf-8').hex() or '-'}"

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[self.subjects],
            num_replicas=self.replicas,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes if self.max_bytes is not None else -1,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=min(DUPLICATE_WINDOW_S, self.max_age_s),
            allow_direct=True,
        )


class NatsLink:
    """One connection (reconnecting forever once made) and its loop thread."""

    def __init__(self, config: LogConfig, name: str) -> None:
        self.config = config
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"liverank-nats-{name}", daemon=True)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._last_error: Exception | None = None  # the client's last complaint (e.g. an authorization violation)

    def start(self, connect_timeout_s: float = 10.0) -> NatsLink:
        self._thread.start()
        try:
            self.run(self._connect(), connect_timeout_s)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            self.close()
            reason = self._last_error if self._last_error is not None else exc
            raise ConfigInvalid(f"cannot reach the log at {','.join(self.config.servers)}: {reason}") from exc
        return self

    async def _connect(self) -> None:
        cfg = self.config
        self._nc = await nats.connect(
            servers=list(cfg.servers),
            name=f"liverank-{self._name}",
            user=cfg.user,
            password=cfg.password,
            token=cfg.token,
            connect_timeout=2,
            reconnect_time_wait=0.25,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
        )
        self._js = self._nc.jetstream(timeout=cfg.timeout_s)

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        log.warning("nats (%s): %s", self._name, exc)

    async def _on_disconnect(self) -> None:
        log.warning("nats (%s): disconnected", self._name)

    async def _on_reconnect(self) -> None:
        log.info("nats (%s): reconnected", self._name)

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "NatsLink.start() first"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "NatsLink.start() first"
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the link's loop and wait for its result (from any thread but the loop's own)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def ensure_stream(self, placement_wait_s: float = PLACEMENT_WAIT_S) -> None:
        """Create the stream if it is not there (every replica tries; the first wins, the others find it). A cluster
        that cannot place it yet (peers still joining) is waited for up to ``placement_wait_s``, then
        ``LogUnavailable`` says so."""
        wait_s = max(placement_wait_s, self.config.timeout_s)
        self.run(self._ensure_stream(wait_s), wait_s + self.config.timeout_s * 2)

    async def _ensure_stream(self, placement_wait_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + placement_wait_s
        while True:
            try:
                await self._find_or_add_stream()
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code != ERR_NO_PLACEMENT:
                    raise
                if asyncio.get_running_loop().time() >= deadline:
                    raise LogUnavailable(
                        f"the NATS cluster could not place the log stream {self.config.stream!r} with "
                        f"{self.config.replicas} replicas within {placement_wait_s:.0f} s ({exc.description}): "
                        f"are that many JetStream nodes up and routed to each other?"
                    ) from exc
                log.info("the NATS cluster cannot place the log stream yet (%s); trying again", exc.description)
                await asyncio.sleep(_PLACEMENT_RETRY_S)

    async def _find_or_add_stream(self) -> None:
        try:
            await self.js.stream_info(self.config.stream)
            return
        except NotFoundError:
            pass
        try:
            await self.js.add_stream(self.config.stream_config())
            log.info("created the log stream %s (replicas %d)", self.config.stream, self.config.replicas)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == ERR_NO_PLACEMENT:
                raise
            await self.js.stream_info(self.config.stream)  # another replica created it meanwhile

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self.run(self._shutdown(), 10.0)
            except Exception:  # closing a broken connection: nothing more to do
                log.debug("closing the nats connection failed", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Close the connection, then end every task still on the loop (readers, the client's own timers)."""
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def log_config_from(settings: Settings) -> LogConfig:
    """The log settings of a server started with ``--log``."""
    assert settings.log is not None
    password, token = settings.nats_password, settings.nats_token
    return LogConfig(
        servers=tuple(settings.log.split(",")),
        stream=settings.stream,
        replicas=settings.stream_replicas,
        max_age_s=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        timeout_s=settings.log_timeout_s,
        user=settings.nats_user,
        password=None if password is None else password.get_secret_value(),
        token=None if token is None else token.get_secret_value(),
    )
