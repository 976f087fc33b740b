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

from liverank.serving.errors import ConfigInvalid
from liverank.serving.server import listening_socket, own_listener

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


def test_workers_add_listeners_of_their_own_on_the_shared_port() -> None:
    """SO_REUSEPORT: a worker's own listener binds the port the master's socket holds (both listening at once)."""
    config = uvicorn.Config("liverank.serving.api.app:create_worker_app", host="127.0.0.1", port=0)
    shared = listening_socket(config)
    shared.listen(8)
    own = own_listener(shared, 8)
    try:
        assert own.getsockname() == shared.getsockname()
        assert own.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert own.proto == socket.IPPROTO_TCP
    finally:
        own.close()
        shared.close()


def test_a_port_another_program_holds_is_one_clear_error() -> None:
    with socket.socket() as squatter:  # no SO_REUSEPORT: the port is not shared with it
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        config = uvicorn.Config("liverank.serving.api.app:create_worker_app", host="127.0.0.1", port=port)
        with pytest.raises(ConfigInvalid, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket(config)


def test_a_second_server_on_the_same_port_is_refused_not_merged() -> None:
    """SO_REUSEPORT would let a second server join the first's port and split its traffic: it must refuse."""
    first = listening_socket(uvicorn.Config("liverank.serving.api.app:create_worker_app", host="127.0.0.1", port=0))
    first.listen(8)
    try:
        port = first.getsockname()[1]
        config = uvicorn.Config("liverank.serving.api.app:create_worker_app", host="127.0.0.1", port=port)
        with pytest.raises(ConfigInvalid, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket(config)
    finally:
        first.close()
