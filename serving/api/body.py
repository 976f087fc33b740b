"""Reading a request body with a size limit: refuse early on Content-Length, and count what actually arrives."""

from __future__ import annotations

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from liverank.serving.errors import BodyTooLarge


async def read_body(request: Request, limit_bytes: int) -> bytes:
    return await receive_body(request.receive, request.headers.get("content-length"), limit_bytes)


async def receive_body(receive: Receive, declared: str | None, limit_bytes: int) -> bytes:
    """The body of one request from the ASGI ``receive`` channel; ``BodyTooLarge`` past ``limit_bytes`` (declared
    or counted), ``ClientDisconnect`` if the client goes away first."""
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise BodyTooLarge(f"request body of {declared} bytes; this endpoint accepts at most {limit_bytes}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(f"request body exceeds {limit_bytes} bytes, the most this endpoint accepts")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
