"""The workers' listening socket is declared as TCP, so asyncio turns Nagle off on every accepted connection.

Without TCP_NODELAY a response written in two segments waited for the client's delayed ACK (about 40 ms per
keep-alive request). The test checks the mechanism itself, not a latency: a connection accepted by an asyncio server
on the socket the master hands to the workers has TCP_NODELAY set.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
import uvloop

from liverank.serving.server import listening_socket

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])  # the workers run uvloop
def test_connections_accepted_on_the_workers_socket_have_nagle_off(run: Runner) -> None:
    config = uvicorn.Config("liverank.serving.api.app:create_worker_app", host="127.0.0.1", port=0)
    sock = listening_socket(config)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    except AssertionError:
        sock.close()
        raise
    sock.listen(8)
    port = sock.getsockname()[1]
    accepted: list[int] = []

    async def main() -> None:
        got = asyncio.Event()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
            got.set()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, client = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(got.wait(), 60)
            client.close()

    run(main())
    assert accepted
    assert accepted[0] != 0
