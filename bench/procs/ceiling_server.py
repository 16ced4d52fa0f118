"""The throughput ceilings: the smallest echo servers asyncio can run, uvloop Protocols.

Why two: the bare echo (no options) shows how fast a line echo can go on this machine with
this client; it journals nothing, so no write-ahead server can reach it. With ``--wal PATH``
the same echo first appends each read's complete lines to PATH, opened O_APPEND, with one
``os.write`` before it replies, and never fsyncs on the way (the service's default
``APP_JOURNAL_FSYNC=interval`` also keeps fsync off the reply path): the fastest server in
Python on uvloop that keeps the write-ahead promise, so the service's honest ceiling.
No streams, no tasks, no limits: split at the last newline, write, reply.
Prints `ready PORT` on stdout.

    python ceiling_server.py [--wal PATH]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import cast


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        if cut:
            self.transport.write(data[:cut])


class JournalledEcho(Echo):
    """The same echo, with the complete lines of each read appended to the WAL first."""

    fd = -1

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        if cut:
            lines = data[:cut]
            os.write(self.fd, lines)  # a regular file: the whole buffer, or an error
            self.transport.write(lines)


async def main(wal: str | None) -> None:
    loop = asyncio.get_running_loop()
    protocol: type[Echo] = Echo
    if wal is not None:
        JournalledEcho.fd = os.open(wal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        protocol = JournalledEcho
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    args = sys.argv[1:]
    if not (args == [] or (len(args) == 2 and args[0] == "--wal")):
        sys.exit("usage: ceiling_server.py [--wal PATH]")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main(args[1] if args else None))
    sys.exit(0)
