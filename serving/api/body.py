"""Reading a request body with a size limit: refuse early on Content-Length, and count what actually arrives."""

from __future__ import annotations

from fastapi import Request

from liverank.serving.errors import BodyTooLarge


async def read_body(request: Request, limit_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise BodyTooLarge(f"request body of {declared} bytes; this endpoint accepts at most {limit_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(f"request body exceeds {limit_bytes} bytes, the most this endpoint accepts")
        chunks.append(chunk)
    return b"".join(chunks)
