"""`accepting` tells a process whose event loop watches a listening socket from one that
merely holds it, as an API process does between forking and the end of its startup."""

from __future__ import annotations

import asyncio
import os
import socket

from devtools.connections import accepting


def test_accepting_when_the_socket_is_only_held_then_false_and_once_the_loop_serves_then_true() -> (
    None
):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    loop = asyncio.new_event_loop()
    try:
        assert not accepting(os.getpid(), port)
        server = loop.run_until_complete(
            asyncio.start_server(lambda reader, writer: None, sock=listener)
        )
        assert accepting(os.getpid(), port)
        server.close()
        loop.run_until_complete(server.wait_closed())
        assert not accepting(os.getpid(), port)
    finally:
        loop.close()
        listener.close()
