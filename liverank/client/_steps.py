"""The client's logic without I/O: retries, backoff and gap recovery, written once for the sync and async clients.

Each operation is a generator. It yields a ``Send`` (and is sent back the ``httpx.Response``, or has the
``httpx.TransportError`` thrown in) or a ``Sleep`` (and is resumed once the driver has slept), and returns its
result. ``Client`` drives the generators with blocking calls, ``AsyncClient`` with awaits.

Resends are safe: a delta is idempotent by producer and sequence, so a retry after a lost answer is answered
"duplicate". Transient failures (connection errors, 5xx, 429 with Retry-After) are retried with exponential
backoff. A gap answer (409 ``sequence_gap``: the server expects an earlier sequence) makes the client resend from
the expected sequence out of its window of recent deltas; if they are no longer there, ``GapUnrecoverable`` tells
the caller to send a full snapshot starting at that sequence.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from liverank.client.errors import (
    BundleRejected,
    DeltaRejected,
    GapUnrecoverable,
    ServerRejected,
    ServerUnavailable,
)
from liverank.client.results import PushResult

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class Send:
    method: str
    path: str
    content: bytes | None = None
    content_type: str | None = None
    admin: bool = False  # carries the admin token


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Send | Sleep
Steps = Generator[Step, Any, Any]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_s: float = 0.1


def request(send: Send, policy: RetryPolicy) -> Generator[Step, Any, httpx.Response]:
    """``send`` until it gets an answer that is not transient (below 500, not 429), with exponential backoff."""
    delay_s = policy.backoff_s
    last_problem = ""
    for attempt in range(1, policy.max_attempts + 1):
        try:
            answer: httpx.Response = yield send
        except httpx.TransportError as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        else:
            # 507 (store full) will not pass by itself: the caller hears it at once.
            if (answer.status_code < 500 and answer.status_code != 429) or answer.status_code == 507:
                return answer
            last_problem = f"{answer.status_code} {answer.text[:200]}"
            retry_after = answer.headers.get("retry-after")
            if retry_after and retry_after.isdigit():
                delay_s = max(delay_s, float(retry_after))
        if attempt < policy.max_attempts:
            log.info("%s %s failed (%s); retry %d in %.2f s", send.method, send.path, last_problem, attempt, delay_s)
            yield Sleep(delay_s)
            delay_s = min(delay_s * 2, _MAX_BACKOFF_S)
    raise ServerUnavailable(f"{send.method} {send.path} failed after {policy.max_attempts} attempts: {last_problem}")


def json_body(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {"detail": answer.text[:500], "code": "not_json"}
    return body if isinstance(body, dict) else {"detail": str(body), "code": "not_an_object"}


def get_json(send: Send, policy: RetryPolicy) -> Generator[Step, Any, dict[str, Any]]:
    """An answer's JSON object; a ``ServerRejected`` with the server's code for anything but 2xx."""
    answer = yield from request(send, policy)
    body = json_body(answer)
    if not 200 <= answer.status_code < 300:
        raise ServerRejected(answer.status_code, str(body.get("code")), str(body.get("detail")))
    return body


class DeltaWindow:
    """The last ``size`` deltas sent, by (producer, seq), to close a gap the server reports. Not thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._payloads: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()

    def remember(self, producer: str, seq: int, payload: bytes) -> None:
        self._payloads[(producer, seq)] = payload
        while len(self._payloads) > self._size:
            self._payloads.popitem(last=False)

    def get(self, producer: str, seq: int) -> bytes | None:
        return self._payloads.get((producer, seq))


def push_delta(
    window: DeltaWindow, policy: RetryPolicy, producer: str, seq: int, payload: bytes, wait_visible: bool
) -> Generator[Step, Any, PushResult]:
    window.remember(producer, seq, payload)
    return (yield from _push_payload(window, policy, producer, seq, payload, wait_visible, 0))


def _push_payload(
    window: DeltaWindow,
    policy: RetryPolicy,
    producer: str,
    seq: int,
    payload: bytes,
    wait_visible: bool,
    resent: int,
) -> Generator[Step, Any, PushResult]:
    path = "/admin/deltas" + ("?wait=visible" if wait_visible else "")
    answer = yield from request(Send("POST", path, payload, "application/octet-stream", admin=True), policy)
    body = json_body(answer)
    if answer.status_code in (200, 202):
        return PushResult(str(body.get("status")), producer, seq, body.get("epoch"), resent)
    if answer.status_code == 409 and body.get("code") == "sequence_gap":
        expected = int(body["expected_seq"])
        missing = range(expected, seq)
        payloads = [window.get(producer, s) for s in missing]
        if not missing or any(p is None for p in payloads):
            raise GapUnrecoverable(producer, expected)
        log.warning("server expects %s/%d; resending %d deltas before %d", producer, expected, len(missing), seq)
        for s, earlier in zip(missing, payloads, strict=True):
            assert earlier is not None
            yield from _push_payload(window, policy, producer, s, earlier, False, resent)
        return (yield from _push_payload(window, policy, producer, seq, payload, wait_visible, resent + len(missing)))
    raise DeltaRejected(answer.status_code, str(body.get("code")), str(body.get("detail")))


def push_bundle(policy: RetryPolicy, archive: bytes) -> Generator[Step, Any, dict[str, Any]]:
    answer = yield from request(Send("POST", "/admin/bundles", archive, "application/gzip", admin=True), policy)
    body = json_body(answer)
    if answer.status_code != 200:
        raise BundleRejected(answer.status_code, str(body.get("code")), str(body.get("detail")))
    return body
