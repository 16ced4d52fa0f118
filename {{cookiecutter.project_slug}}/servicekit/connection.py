"""The connection a request came on: who it is, a place for its state, lines pushed to it.

Inside ``handle``, ``current()`` is the connection whose request is being handled, also
after an ``await`` and in tasks that ``handle`` starts (a context variable carries it). Keep
what belongs to one client in ``connection.data`` (a login, its subscriptions), and send it
lines it did not ask for with ``connection.push()``: a chat or a pub/sub server keeps the
connections of a topic, and pushes each message to them::

    from servicekit.connection import Connection, current

    topics: dict[bytes, set[Connection]] = {}


    async def handle(request: bytes) -> bytes:
        command, _, rest = request.partition(b" ")
        if command == b"SUB":
            connection = current()
            if "topics" not in connection.data:  # its first: forget it when it closes
                connection.data["topics"] = set()
                connection.on_close(unsubscribe)
            connection.data["topics"].add(rest)
            topics.setdefault(rest, set()).add(connection)
            return b"OK"
        topic, _, text = rest.partition(b" ")  # PUB topic text
        for member in topics.get(topic, ()):
            member.push(b"MSG " + topic + b" " + text)
        return b"OK"


    def unsubscribe(connection: Connection) -> None:
        for topic in connection.data["topics"]:
            topics[topic].discard(connection)

``docs/examples/chat/`` is a whole chat written this way.

What the server promises about pushes (``servicekit/server.py`` does it):

- a push is one line, not empty, sent as it is, with a newline added; it is not journaled
  (the request that caused it is) and it is nobody's reply, so the protocol must make pushes
  and replies tell apart (above, pushes start with ``MSG``). It never starts with the
  refusal byte;
- a push waits for the journal's writes under way at the end of the step of the event loop
  that made it, like a reply: a push made by a ``handle`` after its last ``await`` goes out
  only once that request is in the journal, so nothing a client was told is lost by a
  ``kill -9``;
- a push to a connection whose batch is in progress goes out right after that batch's
  replies; pushes to one connection keep their order;
- a client that does not read what it is pushed is bounded: once more than PUSH_LIMIT bytes
  wait for it, the connection ends with the refusal ``error: too many unread pushes`` (every
  request without a reply before it was not handled) and ``push`` returns False, as it does
  for a connection that is ending or closed. Forget a connection in ``on_close``;
- a push written to a client counts as activity: a client that only listens is not closed
  as idle while pushes reach it (one that hears nothing for ``APP_IDLE_TIMEOUT`` is, unless
  it sends a health ping, an empty line, now and then).

Everything here runs on the event loop's thread: call ``push`` from ``handle`` or from a
task of the loop, not from another thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

PUSH_LIMIT = 262144
"""Bytes of pushes and replies that may wait for a client before its connection is ended."""


class _Link(Protocol):
    """What the server's side of a connection gives its public view."""

    def view(self) -> Connection: ...

    def push_line(self, line: bytes) -> bool: ...

    def is_open(self) -> bool: ...


CURRENT: contextvars.ContextVar[_Link] = contextvars.ContextVar("servicekit.connection")
"""The connection of the request being handled: set by the server for each batch while it
runs ``handle``, and reset after; what ``handle`` starts meanwhile (a task, a callback) copies
the context, and keeps it. An idle connection's context holds nothing."""
_numbers = itertools.count(1)


class Connection:
    """One client's connection, as the protocol sees it (``current()``).

    Made on first use: a connection that ``handle`` never looks at costs nothing here.
    """

    __slots__ = ("_link", "_on_close", "data", "id", "peer")

    def __init__(self, link: _Link, peer: str) -> None:
        self._link = link
        self._on_close: list[Callable[[Connection], object]] = []
        self.id = next(_numbers)
        """A number no other connection of this process has (given on first use)."""
        self.peer = peer
        """The client's address, ``host:port`` (``[host]:port`` for IPv6)."""
        self.data: dict[str, Any] = {}
        """Yours: what belongs to this client (who it is, what it subscribed to)."""

    @property
    def closed(self) -> bool:
        """The connection is ending or gone: pushes are dropped."""
        return not self._link.is_open()

    def push(self, line: bytes) -> bool:
        """Send ``line`` (without its newline) to this client outside any reply.

        Returns False, and sends nothing, if the connection is ending or closed, or is
        ended now because more than PUSH_LIMIT bytes already wait for the client. Raises
        ValueError for a line that is not bytes, is empty (the reply to a health ping),
        holds a newline or starts with the refusal byte (0x15).
        """
        return self._link.push_line(line)

    def on_close(self, callback: Callable[[Connection], object]) -> None:
        """Call ``callback(connection)`` once the connection is closed (at once if it is).

        An error in it (a ``CancelledError`` too) is logged with its traceback; the other
        callbacks still run. Inside it, ``current()`` is this connection.
        """
        if self.closed:
            _call(callback, self)
        else:
            self._on_close.append(callback)

    def closing(self) -> None:
        """Called by the server when the connection is lost: run the ``on_close`` callbacks,
        with ``current()`` this connection (the server may lose it in any context)."""
        callbacks, self._on_close = self._on_close, []
        token = CURRENT.set(self._link)
        try:
            for callback in callbacks:
                _call(callback, self)
        finally:
            CURRENT.reset(token)

    def __repr__(self) -> str:
        return f"<Connection {self.id} from {self.peer}{' closed' if self.closed else ''}>"


def current() -> Connection:
    """The connection whose request is being handled.

    Raises LookupError outside ``handle`` (and the tasks it starts): in ``recover``, in the
    lifespan, in a background task of your own.
    """
    try:
        link = CURRENT.get()
    except LookupError:
        raise LookupError("current() is called outside handle(): no connection") from None
    return link.view()


def _call(callback: Callable[[Connection], object], connection: Connection) -> None:
    """Run one ``on_close`` callback: whatever it raises concerns that connection, not the
    service (a ``CancelledError`` read from a cancelled task's result would otherwise reach
    the loop's handler and stop it)."""
    try:
        callback(connection)
    except (Exception, asyncio.CancelledError):
        logger.exception("an on_close callback of %r failed", connection)
