"""``python -m api.serve``: uvicorn's command line, with TCP_NODELAY on the connections that a
multi-worker supervisor's socket accepts (``--workers 2`` in docker-compose.yml)."""

from __future__ import annotations

import asyncio
import socket

from uvicorn.config import Config

from api.serve import bind_socket


async def _accepted_nodelay(sock: socket.socket) -> int:
    """TCP_NODELAY of a connection asyncio accepts on ``sock`` (as a uvicorn worker does)."""
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        _reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await asyncio.wait_for(seen, timeout=10)
        writer.close()
        return value
    finally:
        server.close()
        await server.wait_closed()


def test_the_supervisor_socket_gives_nodelay_connections():
    sock = bind_socket(Config("api.main:app", host="127.0.0.1", port=0, workers=2))
    assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable()
    assert sock.getsockname()[0] == "127.0.0.1"  # the same bound descriptor
    assert asyncio.run(_accepted_nodelay(sock)) != 0
