"""The echo server: newline-delimited lines in, the same bytes out, with a graceful drain.

Each connection is one coroutine reading lines with ``StreamReader.readuntil``. Limits keep
one client from hurting the others: a line longer than ``max_line_bytes`` is refused without
being buffered, a client that stays silent or stops reading our replies is dropped after
``idle_timeout``, and connections past ``max_connections`` are turned away politely.

The drain at shutdown works the same on Python 3.11-3.13 because it does not depend on
``Server.wait_closed()`` (which waits for clients only since 3.12.1) nor on
``Server.close_clients()`` (3.13): the server tracks its own connections. It

1. stops accepting (closes the listening socket) and stops reading from clients;
2. lets each connection answer the complete lines it has already received, then close;
3. aborts whatever is still open when the drain's time is up.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import cast

from app.journal import Journal

logger = logging.getLogger(__name__)

TOO_MANY = b"error: too many connections\n"
SHUTTING_DOWN = b"error: shutting down\n"
BACKLOG = 1024
"""Connections the kernel may queue before they are accepted: enough for a reconnect storm."""
LINGER_SECONDS = 2.0
"""How long a closing connection may take to deliver its last bytes before it is reset."""


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None]

    @property
    def transport(self) -> asyncio.Transport:
        """The socket transport, which reads too (the stream API types it write-only)."""
        return cast(asyncio.Transport, self.writer.transport)

    reading: asyncio.Timeout | None = field(default=None)
    """The deadline of the read in progress, if the handler is waiting for a line."""


class EchoServer:
    """Accepts connections, echoes lines, journals them, and drains on request."""

    def __init__(
        self,
        journal: Journal,
        *,
        max_connections: int,
        max_line_bytes: int,
        idle_timeout: float,
    ) -> None:
        self._journal = journal
        self._max_connections = max_connections
        self._max_line_bytes = max_line_bytes
        self._idle_timeout = idle_timeout
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._draining = False

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Bind and start accepting; return the bound address (the real port if 0).

        ``reuse_port`` lets the workers of ``APP_WORKERS`` bind the same port (SO_REUSEPORT).
        """
        self._server = await asyncio.start_server(
            self._handle,
            host,
            port,
            limit=self._max_line_bytes,
            backlog=BACKLOG,
            reuse_port=reuse_port or None,
        )
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def drain(self, grace: float) -> None:
        """Stop accepting, answer what was received, close; abort what is left after ``grace``."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        logger.info("stopped accepting connections")
        logger.info("draining %d connection(s)", len(self._connections))
        loop = asyncio.get_running_loop()
        for connection in self._connections:
            connection.transport.pause_reading()
            if connection.reading is not None and not connection.reading.expired():
                # Waiting in readuntil() means no complete line is buffered: stop now.
                connection.reading.reschedule(loop.time())
        tasks = {connection.task for connection in self._connections}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for connection in list(self._connections):
                connection.writer.transport.abort()
            if late:
                logger.warning("aborted %d connection(s) still busy after %.1fs", len(late), grace)
                await asyncio.wait(late, timeout=LINGER_SECONDS)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._draining or len(self._connections) >= self._max_connections:
            # Accepted in the same instant the drain began, or one too many: say why, close.
            writer.write(SHUTTING_DOWN if self._draining else TOO_MANY)
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(writer, task)
        self._connections.add(connection)
        try:
            await self._echo_lines(reader, connection)
        except (ConnectionError, TimeoutError):
            writer.transport.abort()  # reset by the client, or it stopped reading our replies
        finally:
            self._connections.discard(connection)
            await _close(writer)

    async def _echo_lines(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        writer = connection.writer
        while True:
            # While draining, a line must already be buffered: readuntil() then returns
            # without waiting, before a zero deadline can fire.
            deadline = 0.0 if self._draining else self._idle_timeout
            try:
                async with asyncio.timeout(deadline) as connection.reading:
                    line = await reader.readuntil(b"\n")
            except TimeoutError:
                return  # idle for too long, or draining with nothing left to answer
            except asyncio.IncompleteReadError:
                return  # the client closed; a trailing partial line is not a line
            except asyncio.LimitOverrunError:
                await self._refuse_long_line(reader, writer)
                return
            finally:
                connection.reading = None
            writer.write(line)
            if line != b"\n":
                self._journal.append(line)  # empty lines are health-check pings
            async with asyncio.timeout(self._idle_timeout):
                await writer.drain()

    async def _refuse_long_line(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Say why, then discard the rest of the input until the client closes.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the error line before the client reads it; reading to EOF (within a short, bounded
        time) lets the line arrive. Nothing read here is kept.
        """
        writer.write(b"error: line longer than %d bytes\n" % self._max_line_bytes)
        writer.write_eof()
        async with asyncio.timeout(min(self._idle_timeout, LINGER_SECONDS)):
            while await reader.read(self._max_line_bytes):
                pass


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close after the replies are sent; abort a peer that will not take them in time."""
    writer.close()
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # the peer already vanished: nothing left to deliver
