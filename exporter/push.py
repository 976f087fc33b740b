"""``PushClient``: sends deltas and bundles to a liverank server over HTTP (httpx).

Resends are safe: a delta is idempotent by producer and sequence, so a retry after a lost answer is answered
"duplicate". Transient failures (connection errors, 5xx, 429 with Retry-After) are retried with exponential
backoff. A gap answer (409, the server expects an earlier sequence) makes the client resend from the expected
sequence out of its window of recent deltas; if they are no longer there, ``GapUnrecoverable`` tells the caller to
send a full snapshot starting at that sequence.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from liverank.errors import LiverankError
from liverank.exporter.archive import archive_bundle
from liverank.store.format import SparseDelta, encode_delta

log = logging.getLogger(__name__)


class PushError(LiverankError):
    """Base of the push client's errors."""

    code = "push_failed"


class DeltaRejected(PushError):
    """The server refused a delta for good (invalid, wrong schema): resending it cannot help."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"delta rejected ({status} {code}): {detail}")
        self.status, self.code, self.detail = status, code, detail


class BundleRejected(PushError):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"bundle rejected ({status} {code}): {detail}")
        self.status, self.code, self.detail = status, code, detail


class GapUnrecoverable(PushError):
    """The server expects a sequence this client no longer holds; send a full snapshot from ``expected``."""

    code = "gap_unrecoverable"

    def __init__(self, producer: str, expected: int) -> None:
        super().__init__(f"server expects {producer!r} sequence {expected}, which is no longer in the resend window")
        self.producer, self.expected = producer, expected


class ServerUnavailable(PushError):
    """Retries ran out."""

    code = "server_unavailable"


@dataclass(frozen=True)
class PushResult:
    status: str  # queued, duplicate or visible
    producer: str
    seq: int
    epoch: dict[str, Any] | None
    resent: int = 0  # earlier deltas resent to close a gap


class PushClient:
    """Pushes to one server. Not thread-safe: use one client per producer thread."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = 60.0,
        max_attempts: int = 6,
        backoff_s: float = 0.1,
        window: int = 512,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._window: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._window_size = window

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PushClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- deltas -------------------------------------------------------------------------------------------------

    def push_delta(self, delta: SparseDelta, *, wait_visible: bool = False) -> PushResult:
        payload = encode_delta(delta)
        self._remember(delta.producer, delta.seq, payload)
        return self._push_payload(delta.producer, delta.seq, payload, wait_visible, resent=0)

    def _push_payload(self, producer: str, seq: int, payload: bytes, wait_visible: bool, resent: int) -> PushResult:
        path = "/admin/deltas" + ("?wait=visible" if wait_visible else "")
        answer = self._post(path, payload, "application/octet-stream")
        body = _json(answer)
        if answer.status_code in (200, 202):
            return PushResult(str(body.get("status")), producer, seq, body.get("epoch"), resent)
        if answer.status_code == 409 and body.get("code") == "sequence_gap":
            expected = int(body["expected_seq"])
            return self._close_gap(producer, expected, seq, payload, wait_visible, resent)
        raise DeltaRejected(answer.status_code, str(body.get("code")), str(body.get("detail")))

    def _close_gap(
        self, producer: str, expected: int, seq: int, payload: bytes, wait_visible: bool, resent: int
    ) -> PushResult:
        missing = range(expected, seq)
        if any((producer, s) not in self._window for s in missing):
            raise GapUnrecoverable(producer, expected)
        log.warning("server expects %s/%d; resending %d deltas before %d", producer, expected, len(missing), seq)
        for s in missing:
            self._push_payload(producer, s, self._window[(producer, s)], False, resent)
        return self._push_payload(producer, seq, payload, wait_visible, resent + len(missing))

    def _remember(self, producer: str, seq: int, payload: bytes) -> None:
        self._window[(producer, seq)] = payload
        while len(self._window) > self._window_size:
            self._window.popitem(last=False)

    # --- bundles ------------------------------------------------------------------------------------------------

    def push_bundle(self, bundle: Path | bytes) -> dict[str, Any]:
        """Upload a bundle directory (archived here) or archive bytes; the answer once it is live."""
        payload = bundle if isinstance(bundle, bytes) else archive_bundle(bundle)
        answer = self._post("/admin/bundles", payload, "application/gzip")
        body = _json(answer)
        if answer.status_code != 200:
            raise BundleRejected(answer.status_code, str(body.get("code")), str(body.get("detail")))
        return body

    def status(self) -> dict[str, Any]:
        answer = self._request("GET", "/admin/status", None, None)
        return _json(answer)

    # --- transport ----------------------------------------------------------------------------------------------

    def _post(self, path: str, payload: bytes, content_type: str) -> httpx.Response:
        return self._request("POST", path, payload, content_type)

    def _request(self, method: str, path: str, payload: bytes | None, content_type: str | None) -> httpx.Response:
        delay_s = self._backoff_s
        last_problem = ""
        for attempt in range(1, self._max_attempts + 1):
            try:
                headers = {"Content-Type": content_type} if content_type else None
                answer = self._http.request(method, path, content=payload, headers=headers)
            except httpx.TransportError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
            else:
                if answer.status_code < 500 and answer.status_code != 429:
                    return answer
                last_problem = f"{answer.status_code} {answer.text[:200]}"
                retry_after = answer.headers.get("retry-after")
                if retry_after and retry_after.isdigit():
                    delay_s = max(delay_s, float(retry_after))
            if attempt < self._max_attempts:
                log.info("%s %s failed (%s); retry %d in %.2f s", method, path, last_problem, attempt, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
        raise ServerUnavailable(f"{method} {path} failed after {self._max_attempts} attempts: {last_problem}")


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {"detail": answer.text[:500], "code": "not_json"}
    return body if isinstance(body, dict) else {"detail": str(body), "code": "not_an_object"}
