"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the load generator.

The machine has two cores and the client shares them with the server, so the client should burn as little CPU per
request as it can: requests are pre-encoded bytes, responses are read by Content-Length (or chunked) and dropped.
It speaks just enough HTTP/1.1 for uvicorn: no redirects, no TLS, no compression.
"""

from __future__ import annotations

import asyncio
import contextlib


class HttpError(Exception):
    """The server's answer could not be read as HTTP/1.1."""


def encode_post(host: str, port: int, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    """A complete POST request, ready to write on a keep-alive connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("ascii") + body


class HttpConnection:
    """One keep-alive connection; ``send`` writes a pre-encoded request and reads the whole answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def send(self, request: bytes) -> tuple[int, int]:
        """(status, body bytes) of the answer to ``request``; reconnects first if the connection was closed."""
        if self._writer is None or self._reader is None:
            await self.connect()
        assert self._writer is not None
        assert self._reader is not None
        self._writer.write(request)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status, headers = _parse_head(head)
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            size = await _read_chunked(self._reader)
        else:
            size = int(headers.get(b"content-length", b"0"))
            await self._reader.readexactly(size)
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        return status, size


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                pass
            return total
        await reader.readexactly(size + 2)
        total += size
