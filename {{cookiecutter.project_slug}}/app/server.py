"""The echo server: newline-delimited lines in, the same bytes out, with a graceful drain.

Each connection is one coroutine reading lines with ``StreamReader.readuntil``. Limits keep
one client from hurting the others: a line longer than ``max_line_bytes`` is refused without
being buffered, a client that stays silent or stops reading our replies is dropped after
``idle_timeout``, and connections past ``max_connections`` are turned away politely.

The idle limit costs nothing per line: each line only moves the connection's deadline, and one
timer per connection checks it lazily, re-arming itself for the new deadline when it fires
early. A timer per line (``asyncio.timeout()`` around each read and write) measured 1.6x
slower on uvloop. To end a connection, or to interrupt a read when the drain begins, the
server cancels the handler task and marks why; the handler takes that cancellation back.

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
    task: asyncio.Task[None]
    deadline: float = 0.0
    """Event-loop time after which the connection counts as idle."""
    reading: bool = False
    """True while the handler waits in readuntil() for a line."""
    interrupted: bool = False
    """True when the server cancelled the handler (idle, or the drain began), not the runtime."""
    watchdog: asyncio.TimerHandle | None = None

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
            if connection.watchdog is not None:
                connection.watchdog.cancel()  # the drain's own deadline bounds it from now on
            if connection.reading:
                _interrupt(connection)  # it may have a line to answer: it checks, then ends
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
        connection = _Connection(writer, task)
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
            await self._end(reader, connection)
        except (OSError, TimeoutError):
            # Reset by the client, a network error, or it would not take our replies in time.
            writer.transport.abort()
        finally:
            del self._connections[task]

    async def _echo_lines(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        writer = connection.writer
        loop = asyncio.get_running_loop()
        connection.deadline = loop.time() + self._idle_timeout
        self._watch(connection)
        try:
            while True:
                try:
                    line = await self._next_line(reader, connection)
                except asyncio.LimitOverrunError:
                    writer.write(b"error: line longer than %d bytes\n" % self._max_line_bytes)
                    return
                if line is None:
                    return  # the client closed, went idle, or the drain left nothing to answer
                if writer.transport.is_closing():
                    return  # aborted at the end of the drain: this reply could not be delivered
                if line != b"\n":  # empty lines are health-check pings, never journaled
                    await self._journal.append([line[:-1]])  # write-ahead: journaled, then answered
                writer.write(line)
                connection.deadline = loop.time() + self._idle_timeout
                await writer.drain()  # a client that does not read goes idle: the watchdog ends it
        except asyncio.CancelledError:
            if not _taken_back(connection):
                raise  # the runtime's cancellation, not ours
        finally:
            if connection.watchdog is not None:
                connection.watchdog.cancel()

    async def _next_line(
        self, reader: asyncio.StreamReader, connection: _Connection
    ) -> bytes | None:
        """The next line; None at EOF, when idle, or when draining with no line buffered."""
        if self._drain_deadline is None:
            connection.reading = True
            try:
                return await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return None  # the client closed; a trailing partial line is not a line
            except asyncio.CancelledError:
                if not _taken_back(connection):
                    raise
                if self._drain_deadline is None:
                    return None  # idle for too long
                # The drain began while we waited; a line may have arrived just before it.
            finally:
                connection.reading = False
        try:
            # Only a line already buffered is answered: readuntil() then returns without
            # waiting, before a zero deadline can fire.
            async with asyncio.timeout(0):
                line = await reader.readuntil(b"\n")
        except (TimeoutError, asyncio.IncompleteReadError):
            return None
        # The reader resumes the socket when its buffer empties; keep it paused.
        connection.transport.pause_reading()
        return line

    def _watch(self, connection: _Connection) -> None:
        """End the connection once its deadline has passed; else look again at the deadline."""
        loop = asyncio.get_running_loop()
        if loop.time() < connection.deadline:
            connection.watchdog = loop.call_at(connection.deadline, self._watch, connection)
        else:
            connection.watchdog = None
            _interrupt(connection)

    async def _end(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        """Half-close after the last reply, read until the client closes or goes quiet, close.

        Bounded by the drain's deadline during a shutdown, by LINGER_SECONDS otherwise; a
        client that does not close in time is aborted by the caller (TimeoutError).
        """
        deadline = self._drain_deadline
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
        writer = connection.writer
        async with asyncio.timeout_at(deadline):
            if writer.can_write_eof():
                writer.write_eof()
            connection.transport.resume_reading()
            with contextlib.suppress(TimeoutError):  # quiet: nothing left to cause a reset
                while True:
                    async with asyncio.timeout(QUIET_SECONDS):
                        if not await reader.read(self._max_line_bytes):
                            break  # the client closed too; what it sent is thrown away
            writer.close()
            await writer.wait_closed()


def _interrupt(connection: _Connection) -> None:
    """Cancel the handler on the server's behalf (marked, so it can tell the runtime's apart)."""
    if not connection.interrupted:
        connection.interrupted = True
        connection.task.cancel()


def _taken_back(connection: _Connection) -> bool:
    """Take back a cancellation the server made; False if the runtime made it."""
    if not connection.interrupted:
        return False
    connection.interrupted = False
    connection.task.uncancel()
    return True
