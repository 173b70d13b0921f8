"""``python -m api.serve [uvicorn's options]``: uvicorn's own command line, with TCP_NODELAY
on every connection also when ``--workers`` is more than 1 (docker-compose.yml starts the API
this way).

With ``--workers N`` uvicorn's supervisor binds the listening socket itself and leaves its
``proto`` at 0; accepted sockets inherit it, and asyncio turns TCP_NODELAY on only for sockets
whose ``proto`` is ``IPPROTO_TCP``. Nagle's algorithm then holds the last segment of every
keep-alive response longer than one segment (a job document is ~45 KB) until the client's
delayed ACK: about 40 ms per request on Linux (uvicorn issue #3149, open in 0.54). With one
worker asyncio binds the socket from ``getaddrinfo`` and the flag is set. Here the supervisor's
socket is re-made on the same descriptor with ``IPPROTO_TCP``; nothing else changes.
"""

from __future__ import annotations

import socket

from uvicorn.config import Config
from uvicorn.main import main as uvicorn_main

_uvicorn_bind_socket = Config.bind_socket


def bind_socket(config: Config) -> socket.socket:
    """``Config.bind_socket``, with a TCP listener marked ``IPPROTO_TCP``."""
    sock = _uvicorn_bind_socket(config)
    tcp = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
    if not tcp or sock.proto == socket.IPPROTO_TCP:
        return sock
    fixed = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    fixed.set_inheritable(True)
    return fixed


def main() -> None:
    Config.bind_socket = bind_socket
    uvicorn_main(prog_name="uvicorn")


if __name__ == "__main__":
    main()
