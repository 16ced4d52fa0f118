"""Hold N idle client connections open against a server, each confirmed by one echo.

Why confirm with an echo: a completed TCP handshake only means the kernel queued the connection;
the load the shutdown must deal with is a *handler task* per connection. An echoed line proves
the server accepted the connection and its handler is running (and now parked in readline()).
Connections are opened in batches below the listen backlog so none waits for a SYN retry.
"""

from __future__ import annotations

import socket

BATCH = 100


def open_idle(port: int, count: int, host: str = "127.0.0.1") -> list[socket.socket]:
    """Open `count` connections, each echoing b'hi\\n' once; return them still open."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            batch = [
                socket.create_connection((host, port), timeout=10)
                for _ in range(min(BATCH, count - len(held)))
            ]
            held.extend(batch)
            for sock in batch:
                sock.sendall(b"hi\n")
            for sock in batch:
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise RuntimeError("server closed a connection before echoing")
                    reply += chunk
                if reply != b"hi\n":
                    raise RuntimeError(f"unexpected echo {reply!r}")
    except BaseException:
        close_all(held)
        raise
    return held


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
