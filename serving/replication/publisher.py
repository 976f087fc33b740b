"""``LogIntake``: a pushed delta's way into the shared log (replicated mode's ``DeltaIntake``).

Same validation and answers as the embedded inbox: decoded and checked against the live slots and schema, a
producer's replay answers "duplicate", a gap raises ``SequenceGap`` with the expected sequence. Accepted means
appended: the answer goes out only after the stream's quorum acknowledged the record.

Order per producer is kept by the log itself, whichever replica takes the push: each producer has its own subject,
the last record on it gives the producer's last sequence, and the append is conditional on that record still being
the last (``Nats-Expected-Last-Subject-Sequence``); two replicas racing on one producer cannot both append.
``Nats-Msg-Id`` (producer + seq) lets the stream drop a retry of an append whose acknowledgement was lost.
"""

from __future__ import annotations

import hashlib
import logging

import nats
from nats.js.errors import APIError, BadRequestError, NotFoundError

from liverank.serving.errors import LogUnavailable
from liverank.serving.metrics import Metrics
from liverank.serving.replication.link import (
    HDR_KIND,
    HDR_OBJECT,
    HDR_PRODUCER,
    HDR_RECEIVED_MS,
    HDR_SEQ,
    HDR_SHA256,
    NatsLink,
)
from liverank.serving.replication.objects import put_object
from liverank.store import EmbeddingStore, EnqueueResult, SequenceGap, StoreError, decode_any, encode_delta
from liverank.store.format import SparseDelta, is_binary_delta

log = logging.getLogger(__name__)

_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code: the conditional append lost a race
_HEADERS_ROOM_BYTES = 4096  # a message carries headers besides its body


class LogIntake:
    """Appends validated deltas to the log; the writer process applies them from there like every replica."""

    def __init__(self, store: EmbeddingStore, link: NatsLink, metrics: Metrics) -> None:
        self._store = store
        self._link = link
        self._metrics = metrics
        self._timeout_s = link.config.timeout_s

    def submit(self, payload: bytes, received_at_ms: int) -> EnqueueResult:
        try:
            delta = decode_any(payload)
            self._store.validate(delta)
            binary = payload if is_binary_delta(payload) else encode_delta(delta)
            result = self._append(delta, binary, received_at_ms)
        except StoreError as exc:
            self._metrics.deltas_received.labels(outcome=exc.code).inc()
            raise
        except LogUnavailable as exc:
            self._metrics.deltas_received.labels(outcome=exc.code).inc()
            raise
        self._metrics.deltas_received.labels(outcome=result.status).inc()
        return result

    def _append(self, delta: SparseDelta, binary: bytes, received_at_ms: int) -> EnqueueResult:
        try:
            return self._link.run(self._append_async(delta, binary, received_at_ms), self._timeout_s * 3)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            # No acknowledgement: the record may or may not be in the log. Either way the producer retries the same
            # seq; if it did land, the retry answers "duplicate" (by the subject's last record or the msg id).
            log.warning("the log did not acknowledge %s/%s: %r", delta.producer, delta.seq, exc)
            raise LogUnavailable(
                f"the log did not acknowledge delta {delta.producer}/{delta.seq} ({type(exc).__name__}): it was not "
                "accepted; retry the same seq later (no log quorum or no connection to it)"
            ) from exc

    async def _append_async(self, delta: SparseDelta, binary: bytes, received_at_ms: int) -> EnqueueResult:
        cfg = self._link.config
        subject = cfg.delta_subject(delta.producer)
        for _attempt in range(3):
            last_position, last_seq = await self._last_on_subject(subject)
            known = max(last_seq, self._store.applied_seq(delta.producer))
            if delta.seq <= known:
                return EnqueueResult("duplicate", delta.producer, delta.seq, 0)
            if delta.seq != known + 1:
                raise SequenceGap(delta.producer, known + 1, delta.seq)
            headers = {
                "Nats-Msg-Id": f"{subject}:{delta.seq}",
                "Nats-Expected-Last-Subject-Sequence": str(last_position),
                HDR_KIND: "delta",
                HDR_PRODUCER: delta.producer,
                HDR_SEQ: str(delta.seq),
                HDR_RECEIVED_MS: str(received_at_ms),
            }
            body = binary
            if len(binary) + _HEADERS_ROOM_BYTES > self._link.nc.max_payload:
                body = b""
                headers[HDR_OBJECT] = f"{subject}/{delta.seq}"
                await put_object(self._link, self._link.config.deltas_bucket, headers[HDR_OBJECT], binary)
                headers[HDR_SHA256] = hashlib.sha256(binary).hexdigest()
            try:
                ack = await self._link.js.publish(subject, body, timeout=self._timeout_s, headers=headers)
            except BadRequestError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    continue  # another replica appended for this producer meanwhile: look again
                raise
            if ack.duplicate:
                return EnqueueResult("duplicate", delta.producer, delta.seq, 0)
            behind = max(0, ack.seq - self._store.log_position())
            return EnqueueResult("queued", delta.producer, delta.seq, behind)
        raise LogUnavailable(f"delta {delta.producer}/{delta.seq}: the log's last record kept changing; retry")

    async def _last_on_subject(self, subject: str) -> tuple[int, int]:
        """(stream position, producer seq) of the subject's last record; (0, 0) if it holds none (any more)."""
        try:
            msg = await self._link.js.get_last_msg(self._link.config.stream, subject, direct=True)
        except NotFoundError:
            return 0, 0
        except APIError as exc:
            if exc.code == 404:
                return 0, 0
            raise
        return int(msg.seq or 0), int((msg.headers or {}).get(HDR_SEQ, 0))
