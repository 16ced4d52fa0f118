"""The echo server: newline-delimited lines in, the same bytes out, with a graceful drain.

Each connection is one coroutine reading lines with ``StreamReader.readuntil``. Limits keep
one client from hurting the others: a line longer than ``max_line_bytes`` is refused without
being buffered, a client that stays silent or stops reading our replies is dropped after
``idle_timeout``, and connections past ``max_connections`` are turned away politely.

Every connection ends the same way, whoever ends it: the last reply is followed by a
half-close (FIN), then input is read and thrown away until the client closes or goes quiet
for QUIET_SECONDS, within a bounded time. Closing a socket that still holds unread input
makes the kernel reset the connection, which destroys replies still on their way; this order
lets every reply arrive, and an idle client costs the shutdown only the quiet period.

The drain at shutdown works the same on Python 3.11-3.13 because it does not depend on
``Server.wait_closed()`` (which waits for clients only since 3.12.1) nor on
``Server.close_clients()`` (3.13): the server tracks its own connections. It

1. stops accepting (closes the listening socket) and stops reading from clients;
2. lets each connection answer the complete lines it had already received, then end as above;
3. aborts what is still open when the drain's time is up, and reports how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import cast

from app.journal import Journal

logger = logging.getLogger(__name__)

TOO_MANY = b"error: too many connections\n"
SHUTTING_DOWN = b"error: shutting down\n"
BACKLOG = 1024
"""Connections the kernel may queue before they are accepted: enough for a reconnect storm."""
LINGER_SECONDS = 2.0
"""How long an ending connection may take to deliver its last replies outside a drain."""
QUIET_SECONDS = 0.2
"""Silence after our FIN that shows no more input is on its way, so closing cannot reset."""


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    reading: asyncio.Timeout | None = None
    """The deadline of the read in progress, while the handler waits for a line."""

    @property
    def transport(self) -> asyncio.Transport:
        """The socket transport, which reads too (the stream API types it write-only)."""
        return cast(asyncio.Transport, self.writer.transport)


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
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        """Every connection whose handler runs, refused ones included, until it is closed."""
        self._serving = 0
        self._server: asyncio.Server | None = None
        self._drain_deadline: float | None = None
        """Event-loop time by which the drain must be over; None until it starts."""

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Bind and start accepting; return the bound address (the real port if 0).

        ``reuse_port`` lets the workers of ``APP_WORKERS`` bind the same port (SO_REUSEPORT).
        """
        self._server = await asyncio.start_server(
            self._handle,
            host,
            port,
            # readuntil() refuses a line once more than `limit` bytes precede the newline.
            limit=self._max_line_bytes - 1,
            backlog=BACKLOG,
            reuse_port=reuse_port or None,
        )
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def drain(self, grace: float) -> int:
        """Stop accepting, answer what was received, close; return how many were aborted.

        Connections still open after ``grace`` seconds are aborted.
        """
        loop = asyncio.get_running_loop()
        self._drain_deadline = loop.time() + grace
        if self._server is not None:
            self._server.close()
        logger.info("stopped accepting connections")
        logger.info("draining %d connection(s)", len(self._connections))
        for connection in self._connections.values():
            connection.transport.pause_reading()
            if connection.reading is not None and not connection.reading.expired():
                # Waiting in readuntil() means no complete line is buffered: stop now.
                connection.reading.reschedule(loop.time())
        late: set[asyncio.Task[None]] = set()
        if self._connections:
            _, late = await asyncio.wait(set(self._connections), timeout=grace)
        for task in late:
            self._connections[task].transport.abort()
        if late:
            logger.warning("aborted %d connection(s) still open after %.1fs", len(late), grace)
            await asyncio.wait(late)  # an aborted transport ends every await of its handler
        if self._server is not None:
            await self._server.wait_closed()
        return len(late)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(writer)
        self._connections[task] = connection
        try:
            if self._drain_deadline is not None:  # accepted in the instant the drain began
                writer.write(SHUTTING_DOWN)
            elif self._serving >= self._max_connections:
                writer.write(TOO_MANY)
            else:
                self._serving += 1
                try:
                    await self._echo_lines(reader, connection)
                finally:
                    self._serving -= 1
            await self._end(reader, writer)
        except (OSError, TimeoutError):
            # Reset by the client, a network error, or it would not take our replies in time.
            writer.transport.abort()
        finally:
            del self._connections[task]

    async def _echo_lines(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        writer = connection.writer
        while True:
            # While draining, a line must already be buffered: readuntil() then returns
            # without waiting, before a zero deadline can fire.
            deadline = 0.0 if self._drain_deadline is not None else self._idle_timeout
            try:
                async with asyncio.timeout(deadline) as connection.reading:
                    line = await reader.readuntil(b"\n")
            except TimeoutError:
                return  # idle for too long, or draining with nothing left to answer
            except asyncio.IncompleteReadError:
                return  # the client closed; a trailing partial line is not a line
            except asyncio.LimitOverrunError:
                writer.write(b"error: line longer than %d bytes\n" % self._max_line_bytes)
                return
            finally:
                connection.reading = None
            if self._drain_deadline is not None:
                # The reader resumes the socket when its buffer empties; keep it paused.
                connection.transport.pause_reading()
            if writer.transport.is_closing():
                return  # aborted at the end of the drain: this reply could not be delivered
            writer.write(line)
            if line != b"\n":
                self._journal.append(line)  # empty lines are health-check pings
            async with asyncio.timeout(self._idle_timeout):
                await writer.drain()

    async def _end(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close after the last reply, read until the client closes or goes quiet, close.

        Bounded by the drain's deadline during a shutdown, by LINGER_SECONDS otherwise; a
        client that does not close in time is aborted by the caller (TimeoutError).
        """
        deadline = self._drain_deadline
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
        async with asyncio.timeout_at(deadline):
            if writer.can_write_eof():
                writer.write_eof()
            cast(asyncio.Transport, writer.transport).resume_reading()
            with contextlib.suppress(TimeoutError):  # quiet: nothing left to cause a reset
                while True:
                    async with asyncio.timeout(QUIET_SECONDS):
                        if not await reader.read(self._max_line_bytes):
                            break  # the client closed too; what it sent is thrown away
            writer.close()
            await writer.wait_closed()
