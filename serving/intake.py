"""``DeltaIntake``: a pushed delta's way into the durable inbox. Decoded, validated against the live slots and
schema, queued (one LMDB write transaction), and the updater woken. Anything wrong raises before anything is
written."""

from __future__ import annotations

from serving.metrics import Metrics
from serving.updater import Updater
from store import EmbeddingStore, EnqueueResult, Inbox, StoreError, decode_any, encode_delta
from store.format import is_binary_delta


class DeltaIntake:
    """Accepts deltas in the binary or the JSON form."""

    def __init__(self, store: EmbeddingStore, inbox: Inbox, updater: Updater, metrics: Metrics) -> None:
        self._store = store
        self._inbox = inbox
        self._updater = updater
        self._metrics = metrics

    def submit(self, payload: bytes, received_at_ms: int) -> EnqueueResult:
        try:
            delta = decode_any(payload)
            self._store.validate(delta)
            binary = payload if is_binary_delta(payload) else encode_delta(delta)
            result = self._inbox.enqueue(delta, received_at_ms, payload=binary)
        except StoreError as exc:
            self._metrics.deltas_received.labels(outcome=exc.code).inc()
            raise
        self._metrics.deltas_received.labels(outcome=result.status).inc()
        if result.status == "queued":
            self._updater.wake()
        return result
