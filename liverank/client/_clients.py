"""``Client`` (blocking) and ``AsyncClient`` (asyncio/trio via httpx): the same operations, driven two ways.

The operations themselves (requests, retries, gap recovery) are the generators of ``_steps``; this module only
builds request bodies, parses answers into typed results and runs the generators with blocking or awaited I/O.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import orjson

from liverank.client import _steps
from liverank.client._steps import DeltaWindow, RetryPolicy, Send, Sleep, Step
from liverank.client.results import ModelInfo, PushResult, Ranking, Status
from liverank.exporter.archive import archive_bundle
from liverank.store.format import SparseDelta, encode_delta

T = TypeVar("T")
Ops = Generator[Step, Any, T]
DEFAULT_URL = "http://127.0.0.1:8000"


class _Operations:
    """What both clients do, as step generators; the configuration they share."""

    def __init__(self, token: str | None, max_attempts: int, backoff_s: float, window: int) -> None:
        self._admin_headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._policy = RetryPolicy(max_attempts, backoff_s)
        self._window = DeltaWindow(window)

    def _headers(self, send: Send) -> dict[str, str]:
        headers = dict(self._admin_headers) if send.admin else {}
        if send.content_type:
            headers["Content-Type"] = send.content_type
        return headers

    def _rank(
        self, user: Mapping[str, Any], candidates: Mapping[str, Any], k: int, blend: Mapping[str, float] | None
    ) -> Ops[Ranking]:
        doc: dict[str, Any] = {"user": dict(user), "candidates": dict(candidates), "k": k}
        if blend is not None:
            doc["blend"] = dict(blend)
        body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)  # numpy columns go as they are
        answer = yield from _steps.get_json(Send("POST", "/v1/rank", body, "application/json"), self._policy)
        return Ranking.from_json(answer)

    def _model(self) -> Ops[ModelInfo]:
        return ModelInfo.from_json((yield from _steps.get_json(Send("GET", "/v1/model"), self._policy)))

    def _status(self) -> Ops[Status]:
        return Status.from_json((yield from _steps.get_json(Send("GET", "/admin/status", admin=True), self._policy)))

    def _push_delta(self, delta: SparseDelta, wait_visible: bool) -> Ops[PushResult]:
        payload = encode_delta(delta)
        return (
            yield from _steps.push_delta(self._window, self._policy, delta.producer, delta.seq, payload, wait_visible)
        )

    def _push_bundle(self, bundle: Path | bytes) -> Ops[dict[str, Any]]:
        if isinstance(bundle, Path):
            bundle = archive_bundle(bundle)
        return (yield from _steps.push_bundle(self._policy, bundle))


class Client(_Operations):
    """A blocking client for one liverank server. Not thread-safe: one client per thread (or per producer).

    ``token`` is the admin token, needed by ``push_delta``, ``push_bundle`` and ``status``. Transient failures are
    retried ``max_attempts`` times with exponential backoff from ``backoff_s``; ``window`` deltas are kept to close
    a sequence gap the server reports. ``transport``: an httpx transport (tests inject faults there).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float = 60.0,
        max_attempts: int = 6,
        backoff_s: float = 0.1,
        window: int = 512,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(token, max_attempts, backoff_s, window)
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, ops: Ops[T]) -> T:
        try:
            step = next(ops)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = ops.send(None)
                    continue
                try:
                    answer = self._http.request(
                        step.method, step.path, content=step.content, headers=self._headers(step)
                    )
                except httpx.TransportError as exc:
                    step = ops.throw(exc)
                else:
                    step = ops.send(answer)
        except StopIteration as done:
            result: T = done.value
            return result

    def rank(
        self,
        user: Mapping[str, Any],
        candidates: Mapping[str, Any],
        k: int = 50,
        blend: Mapping[str, float] | None = None,
    ) -> Ranking:
        """The top ``k`` of ``candidates`` (feature -> column) for ``user`` (feature -> value), best first."""
        return self._run(self._rank(user, candidates, k, blend))

    def model(self) -> ModelInfo:
        """The live bundle: its manifest says which features ``rank`` takes."""
        return self._run(self._model())

    def status(self) -> Status:
        return self._run(self._status())

    def push_delta(self, delta: SparseDelta, *, wait_visible: bool = False) -> PushResult:
        """Queue a delta (``wait_visible``: answer once ranking sees it); closes gaps from the resend window."""
        return self._run(self._push_delta(delta, wait_visible))

    def push_bundle(self, bundle: Path | bytes) -> dict[str, Any]:
        """Upload a bundle directory (archived here) or archive bytes; the server's answer once it is live."""
        return self._run(self._push_bundle(bundle))


class AsyncClient(_Operations):
    """The ``Client`` API with ``async`` methods. One client per task that pushes deltas (the window is not shared
    safely between tasks that push the same producer)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float = 60.0,
        max_attempts: int = 6,
        backoff_s: float = 0.1,
        window: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(token, max_attempts, backoff_s, window)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, ops: Ops[T]) -> T:
        try:
            step = next(ops)
            while True:
                if isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                    step = ops.send(None)
                    continue
                try:
                    answer = await self._http.request(
                        step.method, step.path, content=step.content, headers=self._headers(step)
                    )
                except httpx.TransportError as exc:
                    step = ops.throw(exc)
                else:
                    step = ops.send(answer)
        except StopIteration as done:
            result: T = done.value
            return result

    async def rank(
        self,
        user: Mapping[str, Any],
        candidates: Mapping[str, Any],
        k: int = 50,
        blend: Mapping[str, float] | None = None,
    ) -> Ranking:
        return await self._run(self._rank(user, candidates, k, blend))

    async def model(self) -> ModelInfo:
        return await self._run(self._model())

    async def status(self) -> Status:
        return await self._run(self._status())

    async def push_delta(self, delta: SparseDelta, *, wait_visible: bool = False) -> PushResult:
        return await self._run(self._push_delta(delta, wait_visible))

    async def push_bundle(self, bundle: Path | bytes) -> dict[str, Any]:
        return await self._run(self._push_bundle(bundle))
