"""``LogSource``: the writer's input in replicated mode, the shared JetStream log read in order.

Every replica, the one that took a push included, applies the log's records in stream order. The position of the
last record applied is written in the same LMDB transaction as its rows (``log_position``), so a restarted replica
resumes exactly after it: nothing skipped, nothing applied twice. The store's per-producer sequences refuse
replays on top of that.

Reading: an ordered push consumer (ephemeral, flow-controlled, recreated by the client on any gap) started at the
next position; records are decoded into ``InboxEntry``s (``key`` None, ``log_position`` set) on the link's loop and
buffered for the updater thread. A watchdog recreates the consumer when the stream holds records this replica has
not received for a while (the node that served the consumer died). If the stream no longer holds the next position
(retention dropped it), the source stops and says so: the replica must bootstrap from a snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
import time
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from liverank.serving.replication.link import (
    HDR_KIND,
    HDR_OBJECT,
    HDR_PRODUCER,
    HDR_RECEIVED_MS,
    HDR_SEQ,
    HDR_SHA256,
    LOG_BUNDLE_DONE_RECORD,
    LOG_BUNDLE_RECORD,
    LogConfig,
    NatsLink,
)
from liverank.serving.replication.objects import get_object
from liverank.store import EmbeddingStore, InboxEntry

log = logging.getLogger(__name__)

_MAX_BUFFERED = 512  # records decoded ahead of the updater
_STALL_S = 3.0  # the stream has records we have not received for this long: recreate the consumer
_STREAM_INFO_EVERY_S = 0.5


class LogTruncated(Exception):
    """The stream no longer holds the next record this replica needs (retention passed it)."""


class LogSource:
    """A ``DeltaSource`` over the shared log (strict stream order across producers)."""

    in_order = True

    def __init__(self, store: EmbeddingStore, config: LogConfig) -> None:
        self._store = store
        self._config = config
        self._link = NatsLink(config, "writer")
        self._lock = threading.Lock()
        self._buffer: collections.deque[InboxEntry] = collections.deque()
        self._controls: dict[int, dict[str, Any]] = {}  # bundle records in the buffer, by position
        self._next_position = store.log_position() + 1  # the next record to receive
        self._stream_last = 0
        self._stream_first = 0
        self._state = "connecting"
        self._error: str | None = None
        self._stopping = False
        self._task: concurrent.futures.Future[None] | None = None

    # --- lifecycle (the writer process) -------------------------------------------------------------------------

    def start(self) -> None:
        self._link.start()
        self._link.ensure_stream()
        self._task = asyncio.run_coroutine_threadsafe(self._follow(), self._link._loop)

    def stop(self) -> None:
        self._stopping = True
        self._link.close()  # ends the reading task too

    # --- DeltaSource --------------------------------------------------------------------------------------------

    def pending(self, limit: int = 64) -> list[InboxEntry]:
        """The buffered deltas from the head up to the next bundle record. A bundle record at the head (everything
        before it applied) is retired here: its position recorded with the store's ``log_bundle`` record, which
        the serving process carries out (bundle_log.py)."""
        applied = self._store.log_position()
        if not self._bundle_record_done():
            return []  # the serving process is still installing the last bundle record: the log waits for it
        with self._lock:
            while self._buffer:
                position = self._buffer[0].log_position or 0
                if position <= applied:
                    self._buffer.popleft()  # applied (the updater recorded it)
                    self._controls.pop(position, None)
                elif position in self._controls:
                    self._store.lmdb.advance_log_position(position, {LOG_BUNDLE_RECORD: self._controls.pop(position)})
                    self._buffer.popleft()
                    return []  # nothing after it until the serving process has carried it out
                else:
                    break
            out: list[InboxEntry] = []
            for entry in self._buffer:
                if entry.log_position in self._controls or len(out) >= limit:
                    break
                out.append(entry)
            return out

    def _bundle_record_done(self) -> bool:
        record = self._store.lmdb.get_app_record(LOG_BUNDLE_RECORD)
        done = self._store.lmdb.get_app_record(LOG_BUNDLE_DONE_RECORD) or 0
        return not record or int(record["position"]) <= int(done)

    def depth(self) -> int:
        return max(0, self._stream_last - self._store.log_position())

    def discard(self, entry: InboxEntry) -> None:
        assert entry.log_position is not None
        self._store.lmdb.advance_log_position(entry.log_position)

    def status(self) -> dict[str, Any]:
        applied = self._store.log_position()
        return {
            "kind": "log",
            "stream": self._config.stream,
            "state": self._state,
            "error": self._error,
            "connected": self._link.connected,
            "applied_position": applied,
            "stream_last_position": self._stream_last,
            "stream_first_position": self._stream_first,
            "lag_records": max(0, self._stream_last - applied),
            "buffered": len(self._buffer),
        }

    # --- reading the log (on the link's loop) -------------------------------------------------------------------

    async def _follow(self) -> None:
        while not self._stopping:
            try:
                await self._subscribe_and_read()
            except asyncio.CancelledError:
                raise
            except LogTruncated as exc:
                self._state, self._error = "truncated", str(exc)
                log.error("%s", exc)
                await asyncio.sleep(5.0)
                await self._refresh_stream_info()
                if self._stream_first <= self._next_position:
                    self._state, self._error = "connecting", None
            except Exception as exc:  # the connection, the consumer or the cluster: try again shortly
                self._state, self._error = "reconnecting", repr(exc)
                log.warning("reading the log failed (%r); reading again from position %d", exc, self._next_position)
                await asyncio.sleep(0.5)

    async def _subscribe_and_read(self) -> None:
        await self._refresh_stream_info()
        if self._stream_first > self._next_position:
            raise LogTruncated(
                f"the log starts at position {self._stream_first}, this replica needs {self._next_position}: "
                "bootstrap it from a snapshot"
            )
        sub = await self._link.js.subscribe(
            self._config.subjects,
            stream=self._config.stream,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._next_position),
        )
        self._state, self._error = "following", None
        last_received = time.monotonic()
        next_info = 0.0
        try:
            while not self._stopping:
                while len(self._buffer) >= _MAX_BUFFERED:
                    await asyncio.sleep(0.005)  # the updater is behind; the consumer's flow control waits too
                try:
                    msg = await sub.next_msg(timeout=0.25)
                except nats.errors.TimeoutError:
                    now = time.monotonic()
                    if now >= next_info:
                        await self._refresh_stream_info()
                        next_info = now + _STREAM_INFO_EVERY_S
                    if self._stream_last >= self._next_position and now - last_received > _STALL_S:
                        raise RuntimeError("the consumer stalled while the stream has newer records") from None
                    continue
                last_received = time.monotonic()
                await self._take(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _take(self, msg: Msg) -> None:
        position = msg.metadata.sequence.stream
        if position < self._next_position:
            return  # delivered again after a consumer reset
        if position > self._next_position:
            await self._refresh_stream_info()
            if self._stream_first > self._next_position:
                raise LogTruncated(
                    f"the log dropped positions {self._next_position}..{self._stream_first - 1} before this replica "
                    "read them: bootstrap it from a snapshot"
                )
            raise RuntimeError(f"the log skipped from {self._next_position} to {position}")
        entry = await self._decode(msg, position)
        with self._lock:
            self._buffer.append(entry)
        self._next_position = position + 1
        self._stream_last = max(self._stream_last, position + (msg.metadata.num_pending or 0))

    async def _decode(self, msg: Msg, position: int) -> InboxEntry:
        headers = msg.headers or {}
        kind = headers.get(HDR_KIND)
        if kind in ("bundle", "rollback"):
            self._controls[position] = {
                "position": position,
                "kind": kind,
                "object": headers.get(HDR_OBJECT),
                "sha256": headers.get(HDR_SHA256),
            }
            return InboxEntry(key=None, producer="", seq=0, received_at_ms=0, payload=b"", log_position=position)
        if kind != "delta":
            # A kind this version does not know: it goes to the updater all the same, fails to decode as a delta
            # and is quarantined (logged, counted, its position retired), so the records after it go on.
            log.warning("log record %d is of an unknown kind %r", position, headers.get(HDR_KIND))
        payload = msg.data
        name = headers.get(HDR_OBJECT)
        if name:
            payload = await get_object(self._link, self._config.deltas_bucket, name)
            if hashlib.sha256(payload).hexdigest() != headers.get(HDR_SHA256):
                raise RuntimeError(f"log record {position}: object {name!r} does not match its checksum")
        return InboxEntry(
            key=None,
            producer=headers.get(HDR_PRODUCER, ""),
            seq=int(headers.get(HDR_SEQ, 0)),
            received_at_ms=int(headers.get(HDR_RECEIVED_MS, 0)),
            payload=payload,
            log_position=position,
        )

    async def _refresh_stream_info(self) -> None:
        info = await self._link.js.stream_info(self._config.stream)
        self._stream_first = int(info.state.first_seq)
        self._stream_last = int(info.state.last_seq)
