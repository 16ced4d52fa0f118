"""The connection layer: lines in, ``protocol.handle`` replies out, journal first, drain last.

Each connection is an ``asyncio.BufferedProtocol``, not a task: an idle connection holds no
coroutine, no read buffer, no task and no timer, only its transport and an entry in the
server's heap of deadlines. The loop reads into a buffer shared by all connections (on
Windows, whose loop reads ahead, each connection has its own); what one read brought is
handled as a batch:

1. every complete line in it (at most TURN_LINES) is split off; an empty line is a health
   ping, answered here and never journaled;
2. the other lines are queued in the journal as one unit (``Journal.append``), then handed to
   ``protocol.handle`` one at a time, in order. A ``handle`` that returns without suspending
   costs no task: the server's inline runner (``_inline_runner``), a generator that stays
   alive between requests, awaits it and yields its reply. One that suspends is finished in
   a task (``_finish_in_task``), which takes the runner with it;
3. once the journal has written the batch, all its replies go out in one ``write``. A reply
   is never sent before its request is in the journal (write-ahead), so every reply a client
   received survives a ``kill -9``.

Limits keep one client from hurting the others or the memory:

- while a batch is in progress, or the client does not read our replies (the transport's
  write buffer is above WRITE_HIGH_WATER), the connection stops reading, and TCP pushes back
  on the client; so the journal queue holds at most one batch per connection;
- after TURN_LINES lines a connection yields to the others before it goes on (fairness);
- a line longer than ``max_line_bytes`` is refused without being buffered; a line must be
  completed within ``line_timeout`` (slow-loris), counted only while the server reads: a
  client whose half line waits because the server stopped reading it (a batch in progress,
  replies the client has not taken yet) is not late, only slow to read, and a slow reader
  is served at its own pace. A connection that stays silent, or does not read our replies,
  is closed after ``idle_timeout``. One entry per connection in the server's heap of
  deadlines (``Server.watch_at``, one timer for them all) watches both, re-armed lazily
  when they move;
- connections past ``max_connections`` are turned away politely with TOO_MANY.

Lines pushed to a client outside any reply (``servicekit.connection``: ``push()``) follow the
same rules as replies: held until the journal has what caused them (``Server.hold_push``),
written after the replies of a batch in progress, never moving a connection's state under
its batch; a client that lets more than PUSH_LIMIT bytes wait is ended with UNREAD_PUSHES.
``handle`` finds its connection through a context variable set once per batch, and the
public view of it is made only when asked for.

Accepting is the server's own loop (``sock_accept``), so running out of file descriptors
pauses accepting briefly and is logged once per ACCEPT_LOG_INTERVAL with a count, instead of
going to the loop's exception handler (which stops the service).

Every connection ends the same way, whoever ends it: the last reply is followed by a
half-close (FIN), then input is read and thrown away until the client closes or goes quiet
for QUIET_SECONDS, within a bounded time. Closing a socket that still holds unread input
makes the kernel reset the connection, which destroys replies still on their way; this order
lets every reply arrive. The drain at shutdown

1. stops accepting (closes the listening sockets) and stops reading from clients;
2. lets each connection answer the complete lines it had already received, then end as
   above, with SHUTTING_DOWN as its last line, after the last reply and before the FIN;
3. aborts what is still open when the drain's time is up, and reports how many.

Why the last line: a client may send a request at any moment, also while the drain closes
its connection; such a request is read and thrown away after the FIN. Without a word the
client sees a clean end of stream and cannot tell a request that was lost from one that was
never handled. With it the rule is simple: a request that got no reply before SHUTTING_DOWN
was refused, is in no journal, and may be sent again. A connection that ends during the
drain for a reason of its own (a line too long or too slow) ends with that refusal
instead, and a request whose batch the journal could not write gets SHUTTING_DOWN too (the
service is stopping). A connection already ending when the drain began (the client closed,
or went idle) has sent its FIN and gets no extra line: nothing it sent is owed an answer.

A refusal must never be mistaken for a reply, whatever ``handle`` answers: a reply that
reads ``error: shutting down`` was handled and journaled, and sending it again would do it
twice. So every refusal starts with REFUSAL (ASCII NAK, "negative acknowledgement"), a byte
no reply may start with: ``_reply`` answers FAILED instead of a reply that does, and logs
why. A client tells them apart by the first byte of the line alone, and a reply cut short
(by a reset, a ``kill -9``) can never look like a refusal.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import heapq
import itertools
import logging
import math
import os
import socket
import sys
import time
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, cast

from servicekit.connection import CURRENT, PUSH_LIMIT, Connection
from servicekit.journal import Journal
from servicekit.tally import Histogram

logger = logging.getLogger(__name__)

REFUSAL = b"\x15"
"""The first byte of every line the server sends instead of a reply (ASCII NAK), and of no
reply: the request it answers, and every later one on the connection, was not handled and
is in no journal. The line goes on with ``error: <why>`` for people, then the FIN."""
TOO_MANY = REFUSAL + b"error: too many connections\n"
SHUTTING_DOWN = REFUSAL + b"error: shutting down\n"
LINE_TOO_LONG = REFUSAL + b"error: line longer than %d bytes\n"
LINE_TOO_SLOW = REFUSAL + b"error: line not completed within %gs\n"
UNREAD_PUSHES = REFUSAL + b"error: too many unread pushes\n"
FAILED = b"error: internal error"
"""The reply to a request whose ``handle`` raised; the log has the traceback. A reply, not a
refusal: the request was journaled and handled."""
NEWLINE = ord("\n")
"""Looked for as an int: ``NEWLINE in data`` is a plain memchr, while ``b"\\n" in data`` first
fails to read its needle as an int (an exception raised and cleared inside CPython) and then
runs the general substring search, several times the work, on every reply."""
BACKLOG = 1024
"""Connections the kernel may queue before they are accepted: enough for a reconnect storm."""
READ_CHUNK = 65536
"""Most bytes one read takes from a socket."""
TURN_LINES = 256
"""Most lines a connection handles before it lets the other connections have a turn."""
WRITE_HIGH_WATER = 65536
"""Replies a connection may have queued for a client that does not read before it stops
reading that client's requests."""
LINGER_SECONDS = 2.0
"""How long an ending connection may take to deliver its last replies outside a drain."""
QUIET_SECONDS = 0.2
"""Silence after our FIN that shows no more input is on its way, so closing cannot reset."""
ABORT_WAIT = 1.0
"""Seconds the drain waits for aborted connections to be reported lost."""
ACCEPT_PAUSE = 0.25
"""Seconds accepting pauses after the OS refused a new connection for lack of resources."""
ACCEPT_LOG_INTERVAL = 10.0
"""Accept failures are logged at most once per this many seconds, with a count."""
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_CLIENT_GAVE_UP = {
    getattr(errno, name, None)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "EINTR",
        "ENETDOWN",
        "ENETUNREACH",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENONET",
        "ENOPROTOOPT",
        "EOPNOTSUPP",
    )
} - {None}
"""Errors of accept() that concern one pending client (Linux's accept(2) lists them), not us."""

Handler = Callable[[bytes], Coroutine[Any, Any, bytes]]


class _Phase(enum.Enum):
    """The server's phase, which every connection reads."""

    SERVING = "serving"
    """Connections are accepted, read and answered."""
    DRAINING = "draining"
    """``drain()`` began: nothing is accepted or read any more; each connection answers the
    complete lines it has, then ends with SHUTTING_DOWN, by ``drain_deadline``."""


SERVING, DRAINING = _Phase
"""The phases as module names: Python 3.11 looks up an enum's member on its class several
times slower than a global, and connections test the phase on every batch."""


class Server:
    """Accepts connections, answers lines through ``handle``, and drains on request."""

    def __init__(
        self,
        journal: Journal,
        *,
        max_connections: int,
        max_line_bytes: int,
        idle_timeout: float,
        line_timeout: float,
        handle: Handler,
        needs_journal: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.journal = journal
        self.handle = handle
        self.needs_journal = needs_journal
        """The protocol's ``needs_journal(request)``, if it has one: False for a request that
        changes nothing, which is then not journaled. None: every request is."""
        self.last_appended = 0
        """The sequence number of the journal's latest append from this server: once the
        journal has written it, every request appended so far is written (it writes them in
        order). 0 until the first."""
        self.runner: Generator[Any, bytes, None]
        """Runs ``handle`` for one request per ``send``, outside any task, and yields its
        reply (see ``_inline_runner``)."""
        self.run_inline: Callable[[bytes], Any]
        """``self.runner.send``, looked up once."""
        self.new_runner()
        self.max_connections = max_connections
        self.max_line_bytes = max_line_bytes
        self.idle_timeout = idle_timeout
        self.line_timeout = line_timeout
        self.connections: set[_Connection] = set()
        """Every open connection, refused ones included, until it is closed."""
        self.serving = 0
        """Connections being served: not counting those refused at once."""
        self.phase = SERVING
        self.drain_deadline = math.inf
        """Event-loop time by which the drain must be over: set when the phase is DRAINING."""
        self.read_buffer = memoryview(bytearray(READ_CHUNK))
        """Shared by all connections: a read is handled, and copied if kept, before the next."""
        self.own_buffers = sys.platform == "win32"
        """The proactor loop keeps a read in flight per connection: no sharing there."""
        self.loop: asyncio.AbstractEventLoop
        """The loop the server listens on, set by ``listen()``; looked up once, not per line."""
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._wrapping: set[asyncio.Task[Any]] = set()
        self._all_closed: asyncio.Future[None] | None = None
        self._accept_failures = 0
        self._accept_logged_at: float | None = None
        # Counted for servicekit.metrics, which reads them when scraped (servicekit/tally.py).
        self.accepted = 0
        """Connections served (counted against max_connections), refused ones not included."""
        self.requests = 0
        self.pings = 0
        self.ended = dict.fromkeys(END_REASONS, 0)
        """Closed connections by why they ended (``_end_reason``), refused ones included."""
        self.handling: Histogram | None = None
        """Seconds from a batch's read to its replies' write; timed only while metrics are on."""
        self.deadlines: list[tuple[float, int, _Connection]] = []
        """A heap of ``(when, sequence, connection)``: when each connection wants its
        ``watch()`` called (``watch_at``). One timer for the server, at the earliest, instead
        of one per connection, which cost more memory than the rest of an idle connection.
        An entry is stale once its connection armed again or closed (its ``armed_at`` is no
        longer ``when``): dropped when popped, or all at once when they pile up."""
        self._sequence = itertools.count()
        """Breaks ties between equal times in ``deadlines``: connections do not compare."""
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        """When ``_sweep_timer`` fires; -inf while a sweep runs (it schedules the next)."""
        self.held: list[tuple[_Connection, bytes]] = []
        """Pushes made in this step of the loop, held until the journal has what caused them
        (``hold_push``); a release is scheduled whenever it is not empty."""
        self.ready: list[tuple[_Connection, _Batch, bytes]] = []
        """Replies that wait for no write of the journal (health pings, requests it does not
        take), written together at the end of this step of the loop (``_send_ready``), as
        the journal's write sends the others. Written one read at a time instead, they cost
        more than journaled ones: the client got them one at a time, and so did we its next
        requests (bench/NOTES.md). A send is scheduled whenever it is not empty."""

    def watch_at(self, connection: _Connection, when: float) -> None:
        """Call ``connection.watch()`` at event-loop time ``when`` (unless it arms again)."""
        deadlines = self.deadlines
        heapq.heappush(deadlines, (when, next(self._sequence), connection))
        if len(deadlines) > 2 * len(self.connections) + 64:
            self.deadlines = [entry for entry in deadlines if entry[2].armed_at == entry[0]]
            heapq.heapify(self.deadlines)
        if when < self._sweep_at:
            self._schedule_sweep(when)

    def _schedule_sweep(self, when: float) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_at = when
        self._sweep_timer = self.loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Watch every connection whose time has come; the timer then goes to the next."""
        self._sweep_timer = None
        self._sweep_at = -math.inf  # what they arm now is in the heap, looked at below
        now = self.loop.time()
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            when, _, connection = heapq.heappop(deadlines)
            if connection.armed_at == when:
                connection.armed_at = math.inf  # fired: nothing is armed until it arms again
                connection.watch()
            deadlines = self.deadlines  # watch_at may have dropped the stale entries
        self._sweep_at = math.inf
        if deadlines:
            self._schedule_sweep(deadlines[0][0])

    def hold_push(self, connection: _Connection, line: bytes) -> None:
        """Send ``line`` to ``connection`` once the journal's writes under way at the end of
        this step of the loop are done: the request that made the push (journaled when its
        ``handle`` returns, in this step) is then in the journal, as for a reply."""
        held = self.held
        held.append((connection, line))
        if len(held) == 1:
            self.loop.call_soon(self._release_held)

    def _release_held(self) -> None:
        held, self.held = self.held, []
        journal = self.journal
        if self.last_appended <= journal.written:
            _deliver(held, None)
        else:
            journal.when_written(self.last_appended, functools.partial(_deliver, held))

    def send_soon(self, connection: _Connection, batch: _Batch, data: bytes) -> None:
        """Have ``connection`` write ``data``, the replies of ``batch``, at the end of this
        step of the loop (``ready``)."""
        ready = self.ready
        ready.append((connection, batch, data))
        if len(ready) == 1:
            self.loop.call_soon(self._send_ready)

    def _send_ready(self) -> None:
        ready, self.ready = self.ready, []
        for connection, batch, data in ready:
            try:
                connection.send(batch, data, None)
            except Exception as exc:  # a bug: report it, and still answer the others
                self.loop.call_exception_handler(
                    {"message": "sending replies failed", "exception": exc}
                )

    def to_journal(self, lines: Sequence[bytes]) -> list[bytes]:
        """The requests among ``lines`` that the journal takes: not the health pings (empty
        lines), nor what ``needs_journal`` says changes nothing."""
        needs = self.needs_journal
        if needs is None:
            return [line for line in lines if line]
        try:
            return [line for line in lines if line and needs(line)]
        except (Exception, asyncio.CancelledError):
            # Judged again one by one, to journal what it cannot judge (a pure function, as
            # docs/protocol.md asks, gives the same answers the second time).
            return [line for line in lines if line and _judged(needs, line)]

    def new_runner(self) -> None:
        """A fresh inline runner: the current one left with a request that suspended, or died."""
        self.runner = _inline_runner(self.handle)
        self.run_inline = self.runner.send
        next(self.runner)  # runs it to its first yield, where it waits for a request

    async def listen(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> list[tuple[str, int]]:
        """Bind every address ``host`` resolves to; return them. ``start()`` accepts.

        With port 0, the first address gets an ephemeral port and the others are bound to the
        same one, so ``localhost`` is one port on both 127.0.0.1 and ::1. ``reuse_port`` lets
        the workers of ``APP_WORKERS`` bind the same port (SO_REUSEPORT).
        """
        self.loop = loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        addresses: list[tuple[str, int]] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                _configure(sock, reuse_port)
                if addresses:  # the port the first one got, even if it was 0
                    address = (address[0], addresses[0][1], *address[2:])
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
                bound = sock.getsockname()
                addresses.append((str(bound[0]), int(bound[1])))
        except OSError:
            self.close_listeners()
            raise
        return addresses

    def start(self) -> None:
        """Start accepting on every bound address."""
        loop = asyncio.get_running_loop()
        self._acceptors = [loop.create_task(self._accept(sock)) for sock in self._sockets]
        for acceptor in self._acceptors:
            acceptor.add_done_callback(_report_failure)

    def close_listeners(self) -> None:
        """Close the listening sockets: the kernel refuses new connections from now on.

        Call it once nothing accepts on them any more (``stop_accepting()``), so that no
        event loop still watches a closed descriptor.
        """
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def stop_accepting(self) -> None:
        """Cancel the accept loops and wait until they have let go of the sockets."""
        for acceptor in self._acceptors:
            acceptor.cancel()
        if self._acceptors:
            await asyncio.wait(self._acceptors)
        self._acceptors.clear()

    async def drain(self, grace: float) -> int:
        """Stop accepting, answer what was received, close; return how many were aborted.

        Connections still open after ``grace`` seconds are aborted.
        """
        loop = asyncio.get_running_loop()
        self.phase = DRAINING
        self.drain_deadline = loop.time() + grace
        await self.stop_accepting()
        self.close_listeners()
        if self._wrapping:  # accepted just now: they are refused with SHUTTING_DOWN
            await asyncio.wait(self._wrapping)
        logger.info("stopped accepting connections")
        logger.info("draining %d connection(s)", len(self.connections))
        for connection in list(self.connections):
            connection.drain()
        late = await self._wait_closed(grace)
        if late:
            for connection in list(self.connections):
                connection.transport.abort()
            logger.warning("aborted %d connection(s) still open after %.1fs", late, grace)
            await self._wait_closed(ABORT_WAIT)  # an aborted transport is lost at the next turn
        return late

    async def _wait_closed(self, seconds: float) -> int:
        """Wait until every connection is closed; return how many are still open."""
        if self.connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._all_closed}, timeout=seconds)
        return len(self.connections)

    def forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        closed = self._all_closed
        if not self.connections and closed is not None and not closed.done():
            closed.set_result(None)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _CLIENT_GAVE_UP:
                    continue
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise  # the listening socket itself is broken: a bug to report
                self._accept_failed(exc)
                await asyncio.sleep(ACCEPT_PAUSE)  # connections close meanwhile, freeing fds
                continue
            # Wrapped in a task of its own, which stop_accepting() does not cancel: a socket
            # half-wrapped in a transport would be neither served nor closed.
            wrapping = loop.create_task(
                loop.connect_accepted_socket(lambda: _Connection(self), client)
            )
            self._wrapping.add(wrapping)
            wrapping.add_done_callback(functools.partial(self._wrapped, client))

    def _wrapped(self, client: socket.socket, task: asyncio.Task[Any]) -> None:
        self._wrapping.discard(task)
        if not task.cancelled() and isinstance(task.exception(), OSError):
            client.close()  # reset before we could even wrap it
        elif not task.cancelled():
            task.result()  # anything else is a bug: raise it to the loop's handler

    def _accept_failed(self, error: OSError) -> None:
        """Count the failure; log the count at most once per ACCEPT_LOG_INTERVAL."""
        self._accept_failures += 1
        now = asyncio.get_running_loop().time()
        if self._accept_logged_at is None or now - self._accept_logged_at >= ACCEPT_LOG_INTERVAL:
            logger.warning(
                "cannot accept connections (%s): %d failure(s) since the last report; "
                "pausing accepting for %.2fs at a time, serving the open connections",
                os.strerror(error.errno or 0),
                self._accept_failures,
                ACCEPT_PAUSE,
            )
            self._accept_failures = 0
            self._accept_logged_at = now


def _deliver(held: list[tuple[_Connection, bytes]], failure: OSError | None) -> None:
    """Hand held pushes to their connections, unless the journal failed to write what made
    them (the service is stopping, and has said why): then they are dropped, as replies are."""
    if failure is not None:
        for connection, line in held:
            connection.pushed -= len(line) + 1
        return
    for connection, line in held:
        connection.deliver(line)


def _report_failure(acceptor: asyncio.Task[None]) -> None:
    """An accept loop that ended by an error: raise it to the loop's handler (which stops the
    service under APP_STOP_ON_ERROR) instead of accepting nothing, silently, from now on."""
    if not acceptor.cancelled():
        acceptor.result()


def _configure(sock: socket.socket, reuse_port: bool) -> None:
    if os.name == "posix" and sys.platform != "cygwin":  # on Windows it allows port theft
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sys.platform != "win32" and reuse_port:  # APP_WORKERS refuses Windows earlier
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:  # ::1 and 127.0.0.1 are two sockets, not one dual
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


class _State(enum.Enum):
    """Where a connection is in its life. Which callbacks may move it where is said beside
    each method of ``_Connection``; every state but ENDING and CLOSED can go to ENDING."""

    READING = "reading"
    """Waiting for the client. ``pending`` holds no complete line, at most part of one,
    whose line clock runs. No batch is in progress and no turn is queued."""
    QUEUED = "queued"
    """``pending`` holds complete lines; their turn (``_turn``) is queued with ``call_soon``,
    after the other connections' turns (fairness). The next read pauses reading."""
    HANDLING = "handling"
    """A batch is in progress: a request is in ``handle`` (in ``task`` once one suspended),
    or the journal has not written the batch yet, or its replies, which wait for no write,
    wait for the end of the turn (``Server.ready``). Nothing more is handled until it is sent;
    reading pauses at the next read, and the line clock is stopped."""
    BLOCKED = "blocked"
    """The client has not taken our replies (the transport's buffer passed WRITE_HIGH_WATER):
    reading is paused and the line clock stopped until ``resume_writing``."""
    ENDING = "ending"
    """Our last line and FIN are on their way (``_end``): input is read and thrown away until
    the client closes or goes quiet for QUIET_SECONDS, or ``end_deadline`` passes."""
    CLOSED = "closed"
    """The transport is gone (``connection_lost``)."""


READING, QUEUED, HANDLING, BLOCKED, ENDING, CLOSED = _State
"""The states as module names, for the same reason as the phases."""


class _Batch:
    """The complete lines of one turn, on their way to one write of their replies. A
    connection has at most one at a time (HANDLING).

    No ``__init__``: the fields are set where the batch is made, because on Python 3.11 a
    call to an ``__init__`` would cost four times the rest of making it, once per batch, so
    once per request in ping-pong.
    """

    __slots__ = ("pings_only", "replies", "too_long")

    replies: list[bytes]
    """One reply per line handled so far, in order; an empty one for a health ping."""
    pings_only: bool
    """Its lines are all health pings, whose replies reveal nothing: they need not wait."""
    too_long: bool
    """The line after the batch's lines is over the limit: refuse it after the replies."""


class _Connection(asyncio.BufferedProtocol):
    """One client: its unhandled input, its batch in progress, its deadlines."""

    __slots__ = (
        "armed_at",
        "began",
        "buffer",
        "deadline",
        "deferred",
        "end_deadline",
        "eof",
        "last_input",
        "line_deadline",
        "overrun",
        "paused",
        "pending",
        "public",
        "pushed",
        "reason",
        "refused",
        "server",
        "state",
        "task",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport
        self.buffer = server.read_buffer
        self.state = READING
        self.pending = b""
        """Received bytes not handled yet: at most TURN_LINES lines ahead, or part of one."""
        self.paused = False
        """We paused the transport's reading: in every state but READING and ENDING sooner or
        later (lazily: at the next read), never in ENDING, whose input is read to the end."""
        self.eof = False
        """The client half-closed: what is complete in ``pending`` is answered, then we end."""
        self.refused = False
        """Turned away at once (TOO_MANY, or accepted as the drain began): never counted in
        ``server.serving``."""
        self.task: asyncio.Task[None] | None = None
        """The task finishing the batch whose ``handle`` suspended (HANDLING only)."""
        self.deadline = 0.0
        """Event-loop time after which the connection counts as idle."""
        self.line_deadline = 0.0
        """Event-loop time by which the partial line in ``pending`` must be complete; 0: no
        clock runs (no partial line, or we are not reading it)."""
        self.end_deadline = 0.0
        """ENDING only: when the connection is aborted if it has not closed by then."""
        self.last_input = 0.0
        """ENDING only: when input last arrived (thrown away); quiet after QUIET_SECONDS."""
        self.armed_at = math.inf
        """When the server calls ``watch()`` (``Server.watch_at``); inf: nothing is armed."""
        self.reason = "reset"
        """Why it ended, for the metrics: set by ``_end``; "reset" if it was lost before."""
        self.began = 0.0
        """When the batch in progress was read (``_clock``), if metrics time batches."""
        self.public: Connection | None = None
        """What ``servicekit.connection.current()`` gives ``handle``: made on first use."""
        self.pushed = 0
        """Bytes of pushes held or deferred, not yet in the transport (with their newlines)."""
        self.deferred: list[bytes] | None = None
        """Pushes released while a batch was in progress (HANDLING): ``send`` writes them
        after its replies, so that a push's write never moves the state under the batch."""
        self.overrun = False
        """More than PUSH_LIMIT bytes waited for the client during a batch: once its replies
        are sent, the connection ends with UNREAD_PUSHES."""

    # --- the transport's callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        server = self.server
        server.connections.add(self)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if server.own_buffers:
            self.buffer = memoryview(bytearray(READ_CHUNK))
        if server.phase is DRAINING:  # accepted in the instant the drain began
            self._refuse(SHUTTING_DOWN)
        elif server.serving >= server.max_connections:
            self._refuse(TOO_MANY)
        else:
            server.serving += 1
            server.accepted += 1
            self.deadline = self._now() + server.idle_timeout
            self._arm(self.deadline)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        state = self.state
        if state is ENDING:
            self.last_input = self._now()  # thrown away: we have said all we will say
            return
        data = self.buffer[:nbytes].tobytes()
        if self.pending:
            data = self.pending + data
        self.pending = data
        if state is READING:
            self._batch()
        else:
            self._pause_reading()  # handled after what is in progress; until then, no more

    def eof_received(self) -> bool:
        self.eof = True
        if self.state is ENDING:
            self._close_when_flushed()
        elif self.state is READING or self.state is BLOCKED:
            self._next()  # answers what is complete (once the client reads), then ends
        return True  # keep our half open: replies may still be on their way

    def pause_writing(self) -> None:
        if self.state is not ENDING and self.state is not CLOSED:
            self.state = BLOCKED
            self.line_deadline = 0.0
            self._pause_reading()

    def resume_writing(self) -> None:
        if self.state is BLOCKED:
            self.state = READING  # provisional: _next() decides from what is pending
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.armed_at = math.inf  # its entry in the server's deadlines is stale
        if self.task is not None:
            self.task.cancel()  # nobody is left to read its reply
        if not self.refused:
            self.server.serving -= 1
        self.server.ended[self.reason] += 1
        self.server.forget(self)
        if self.public is not None:
            self.public.closing()

    # --- what the protocol sees: servicekit.connection ------------------------------------

    def view(self) -> Connection:
        if self.public is None:
            peer = self.transport.get_extra_info("peername")
            if isinstance(peer, tuple):
                host, port = str(peer[0]), peer[1]
                peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self.public = Connection(self, str(peer))
        return self.public

    def is_open(self) -> bool:
        return self.state is not ENDING and self.state is not CLOSED

    def push_line(self, line: bytes) -> bool:
        """Hold ``line`` for the client (``Server.hold_push``), or end the connection if more
        than PUSH_LIMIT bytes already wait for it; see ``servicekit.connection``."""
        if type(line) is not bytes or not line or NEWLINE in line or line[0] == _NAK:
            raise ValueError(
                f"a push must be one non-empty line of bytes not starting with 0x15: {line!r:.40}"
            )
        if not self.is_open() or self.overrun:
            return False
        size = len(line) + 1
        if self.transport.get_write_buffer_size() + self.pushed + size > PUSH_LIMIT:
            if self.state is HANDLING:
                self.overrun = True  # its replies go out first: they answer handled requests
            else:
                self._end(UNREAD_PUSHES)
            return False
        self.pushed += size
        self.server.hold_push(self, line)
        return True

    def deliver(self, line: bytes) -> None:
        """Write a released push now, or after the batch in progress (``deferred``)."""
        state = self.state
        if state is HANDLING:
            if self.deferred is None:
                self.deferred = []
            self.deferred.append(line)
            return
        self.pushed -= len(line) + 1
        if state is not ENDING and state is not CLOSED:
            self.transport.write(line + b"\n")  # may call pause_writing(): BLOCKED
            self.deadline = self._now() + self.server.idle_timeout  # it listens: not idle

    # --- batches ------------------------------------------------------------------------

    def _batch(self) -> None:
        """Handle the complete lines in ``pending`` (at most TURN_LINES) and journal them.

        Each request is journaled once its ``handle`` has returned, in the same step of the
        loop, so the journal's order is the order requests took effect, whatever each
        ``handle`` awaited (replay then rebuilds what clients read), and a request whose
        ``handle`` never finished is never replayed. The replies wait for the journal.
        Called in READING (a read) or QUEUED (its turn); leaves HANDLING for ``_next()``.
        """
        server = self.server
        self.state = HANDLING
        parts = self.pending.split(b"\n", TURN_LINES)
        rest = parts.pop()
        too_long = len(rest) >= server.max_line_bytes and len(parts) < TURN_LINES
        for n, line in enumerate(parts):
            if len(line) >= server.max_line_bytes:  # the limit counts the newline
                del parts[n:]
                too_long = True
                break
        if too_long:
            rest = b""
        elif rest and (parts or not self.line_deadline):
            self._start_line_clock()  # a new partial line: it may take line_timeout
        elif not rest:
            self.line_deadline = 0.0
        self.pending = rest
        self.deadline = server.loop.time() + server.idle_timeout
        if not parts:
            self._after(too_long)
            return
        token = _set_current(self)  # servicekit.connection.current(), for handle
        try:
            requests = parts if all(parts) else [line for line in parts if line]
            if requests is not parts:  # health pings are rare: not counted on the common path
                server.pings += len(parts) - len(requests)
            server.requests += len(requests)
            if server.handling is not None:
                self.began = _clock()
            replies: list[bytes] = []
            batch = _Batch()
            batch.replies = replies
            batch.pings_only = not requests
            batch.too_long = too_long
            if requests and server.needs_journal is not None:
                try:
                    requests = server.to_journal(requests)
                except BaseException as exc:  # it let through what is not an Exception
                    self._stop_with(batch, (), exc)  # judged first: nothing of it is handled
                    return
            reply = replies.append
            run_inline = server.run_inline
            for n, line in enumerate(parts):
                if not line:
                    reply(b"")  # a health ping: an empty reply
                    continue
                try:
                    step = run_inline(line)
                except BaseException as exc:
                    server.new_runner()  # it let through what is not an Exception, and ended
                    self._stop_with(batch, parts[:n], exc)
                    return
                if type(step) is bytes:  # the reply: anything else comes from inside handle
                    reply(step)
                    continue
                # It suspended: what took effect before it is journaled now, before any other
                # connection's request can; the rest of the batch is finished in a task, which
                # takes the runner along.
                if done := server.to_journal(parts[:n]):
                    server.last_appended = server.journal.append(done)
                self.line_deadline = 0.0
                self._pause_reading()
                self.task = server.loop.create_task(
                    self._finish(batch, server.runner, step, parts[n], parts[n + 1 :])
                )
                server.new_runner()
                return
            if requests:
                server.last_appended = server.journal.append(requests)
            self._reply(batch)
        finally:
            # Not left in the context the read ran in (the connection's own, uvloop's
            # copy): an idle connection would keep the value, and a batch run from
            # another connection's callback would leave its own in that one's. What
            # handle started meanwhile (a task, a callback) copied the context already.
            _reset_current(token)

    async def _finish(
        self,
        batch: _Batch,
        runner: Generator[Any, bytes, None],
        step: Any,
        suspended: bytes,
        lines: list[bytes],
    ) -> None:
        """The rest of a batch whose ``handle`` suspended, now inside a task: each request is
        journaled as soon as its ``handle`` has returned, with no await in between."""
        server = self.server
        replies = batch.replies
        try:
            try:
                replies.append(await _finish_in_task(runner, step))
            finally:
                runner.close()  # it served its last request
            if server.to_journal((suspended,)):
                server.last_appended = server.journal.append((suspended,))
            for line in lines:
                if not line:
                    replies.append(b"")
                    continue
                try:
                    answer: object = await server.handle(line)
                except (Exception, asyncio.CancelledError) as exc:
                    answer = _failed_unless_cancelled(exc)
                if server.to_journal((line,)):
                    server.last_appended = server.journal.append((line,))
                replies.append(_checked(answer))
        except asyncio.CancelledError:
            raise  # the connection was lost, or the service is stopping: nobody to answer
        except BaseException as exc:  # each request handled so far is journaled already
            self.task = None
            self._stop_with(batch, (), exc)
            return
        self.task = None
        self._reply(batch)

    def _stop_with(self, batch: _Batch, handled: Sequence[bytes], error: BaseException) -> None:
        """``handle`` raised what is not an Exception (SystemExit, KeyboardInterrupt), which
        stops the service: answer the requests of the batch handled before it, once they are
        journaled, and leave the rest to the drain's last line (SHUTTING_DOWN: not handled).

        ``error`` is raised again from a loop callback of its own, not from the read's or the
        task's: raised out of a read, it made uvloop close the transport at once (the replies
        lost, the client given EOF and no reason) and asyncio leave the connection in its
        batch, so that the drain waited for it until its deadline.
        """
        server = self.server
        if done := server.to_journal(handled):
            server.last_appended = server.journal.append(done)
        self.pending = b""
        batch.too_long = False
        self._reply(batch)
        server.loop.call_soon(_raise, error)

    def _reply(self, batch: _Batch) -> None:
        """Send the batch's replies in one write, once the journal has every request handled
        so far: the batch's own, and any other whose effect a reply may show (a request that
        needs no journal may read what another connection's request, not yet written, just
        changed). The journal writes in order, so its latest append is the one to wait for.
        """
        replies = batch.replies
        replies.append(b"")  # the join then ends the last reply with a newline too
        data = b"\n".join(replies)
        if _NAK in data and (data[0] == _NAK or _REFUSAL_INSIDE in data):  # memchr first
            data = b"\n".join(map(_unmarked, replies))
        server = self.server
        journal = server.journal
        if batch.pings_only or server.last_appended <= journal.written:
            server.send_soon(self, batch, data)
            return
        self.line_deadline = 0.0  # we wait for the journal, not for the client
        journal.when_written(server.last_appended, functools.partial(self.send, batch, data))

    def send(self, batch: _Batch, data: bytes, failure: OSError | None) -> None:
        """Write the batch's replies, called once the journal has written what they wait
        for, or with the journal's failure, or at the end of the step for replies that wait
        for nothing (``Server.send_soon``)."""
        if failure is not None:
            # Not journaled: these replies would promise what a restart cannot keep. The
            # journal has reported why, and the service is stopping: refuse, do not answer.
            self._end(SHUTTING_DOWN)
            return
        if self.state is not HANDLING:  # closed meanwhile
            return
        if self.deferred is not None:  # pushes released during the batch: after its replies
            pushes, self.deferred = self.deferred, None
            pushes.append(b"")
            data += b"\n".join(pushes)
            self.pushed -= len(pushes) - 1 + sum(map(len, pushes))
        self.transport.write(data)  # may call pause_writing(): BLOCKED
        if self.server.handling is not None:
            self.server.handling.observe(_clock() - self.began)
        self._after(batch.too_long)

    def _after(self, too_long: bool) -> None:
        """A batch is over: refuse the line too long that followed it, else go on."""
        if too_long:
            self._end(LINE_TOO_LONG % self.server.max_line_bytes)
        elif self.overrun:
            self._end(UNREAD_PUSHES)
        else:
            self._next()

    def _next(self) -> None:
        """Decide what comes next: the next lines on the next turn, else read, else end.

        Called once nothing is in progress: after a batch (HANDLING, or BLOCKED if its write
        filled the transport's buffer), when the client takes our replies (from BLOCKED),
        or on EOF or the drain (READING or BLOCKED).
        """
        if NEWLINE in self.pending:
            if self.state is not BLOCKED:  # else resume_writing() comes back here
                self.state = QUEUED
                self.server.loop.call_soon(self._turn)
        elif self.eof or self.server.phase is DRAINING:
            self._end()
        elif self.state is not BLOCKED:
            self.state = READING
            if self.paused:
                self._resume_reading()
            if self.pending and not self.line_deadline:  # half a line, and we read again
                self._start_line_clock()

    def _turn(self) -> None:
        if self.state is QUEUED:  # else it ended meanwhile
            self._batch()

    def drain(self) -> None:
        """The shutdown began: answer the complete lines already received, then end."""
        if self.state is ENDING:
            # Already saying goodbye: keep reading, to see the client close or go quiet, and
            # keep the quiet timer; only the drain's deadline may come sooner than ours.
            self.end_deadline = min(self.end_deadline, self.server.drain_deadline)
            if self.end_deadline < self.armed_at:
                self._arm(self.end_deadline)
            return
        self._pause_reading()
        if self.state is READING or self.state is BLOCKED:
            self._next()

    # --- deadlines and the end ----------------------------------------------------------

    def _now(self) -> float:
        return self.server.loop.time()

    def _start_line_clock(self) -> None:
        self.line_deadline = self._now() + self.server.line_timeout
        if self.line_deadline < self.armed_at:
            self._arm(self.line_deadline)

    def _arm(self, when: float) -> None:
        """Be watched at ``when`` instead of at any time armed before."""
        self.armed_at = when
        self.server.watch_at(self, when)

    def watch(self) -> None:
        """Called at ``armed_at``: end the connection if a deadline passed, else re-arm."""
        now = self._now()
        if self.state is ENDING:
            if now >= self.end_deadline:
                self.transport.abort()  # it would not take our last replies in time
            elif now - self.last_input >= QUIET_SECONDS:
                self._close_when_flushed()
            else:
                self._arm(min(self.last_input + QUIET_SECONDS, self.end_deadline))
            return
        if self.state is HANDLING:
            self.deadline = now + self.server.idle_timeout  # waiting on us, not on the client
        due = self.deadline
        if self.line_deadline and self.line_deadline < due:
            due = self.line_deadline
        if now < due:
            self._arm(due)
        elif due == self.line_deadline:  # slow-loris: say why before hanging up
            self._end(LINE_TOO_SLOW % self.server.line_timeout)
        else:
            self._end()  # idle

    def _refuse(self, message: bytes) -> None:
        self.refused = True
        self._end(message)

    def _end(self, last_line: bytes | None = None) -> None:
        """Write ``last_line``, half-close, read until the client closes or goes quiet, close.

        During the drain the last line is SHUTTING_DOWN unless another refusal says
        why: requests the client sent that got no reply before it were refused, not lost.
        Bounded by the drain's deadline during a shutdown, by LINGER_SECONDS otherwise; a
        client that does not take its replies and close in time is aborted.
        """
        if self.state is ENDING or self.state is CLOSED:
            return
        if last_line is None and self.server.phase is DRAINING:
            last_line = SHUTTING_DOWN
        if last_line is not None:
            self.transport.write(last_line)
        self.reason = _end_reason(self, last_line)
        self.state = ENDING
        self.pending = b""
        self.line_deadline = 0.0
        now = self._now()
        self.last_input = now
        self.end_deadline = min(now + LINGER_SECONDS, self.server.drain_deadline)
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()  # after what is still buffered
        except OSError:  # the client has reset the connection already
            self.transport.abort()
            return
        if self.eof:
            self._close_when_flushed()
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._arm(min(now + QUIET_SECONDS, self.end_deadline))

    def _close_when_flushed(self) -> None:
        if self.transport.get_write_buffer_size() == 0:
            self.transport.close()
        else:
            self._arm(min(self._now() + QUIET_SECONDS, self.end_deadline))

    def _pause_reading(self) -> None:
        if not self.paused and self.state is not CLOSED:
            self.paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        """Read again, unless the drain began (it reads nothing new)."""
        if self.server.phase is SERVING:
            self.paused = False
            self.transport.resume_reading()


def _checked(reply: object) -> bytes:
    """The reply of ``handle`` if it is one line of bytes; else FAILED, and the log says why."""
    if type(reply) is bytes and NEWLINE not in reply:
        return reply
    logger.error("handle() must return bytes without a newline, not %.60r", reply)
    Replies.invalid += 1
    return FAILED


def _unmarked(reply: bytes) -> bytes:
    """The reply, unless it starts like a refusal: then FAILED, and the log says why."""
    if not reply.startswith(REFUSAL):
        return reply
    logger.error(
        "handle() returned a reply starting with %r, which only refusals do: %.60r", REFUSAL, reply
    )
    return FAILED


def _failed(error: BaseException) -> bytes:
    logger.error("handle() failed; the client gets %r", FAILED.decode(), exc_info=error)
    Replies.failed += 1
    return FAILED


class Replies:
    """Requests whose reply was FAILED, counted for servicekit.metrics (for the process).

    Class attributes, not the server's: the runner that meets them belongs to no connection.
    """

    failed = 0
    """``handle`` raised."""
    invalid = 0
    """``handle`` returned something other than one line of bytes."""


END_REASONS = (
    "client", "idle", "line_timeout", "too_long", "unread_pushes", "drain", "journal", "full",
    "draining", "reset",
)  # fmt: skip
"""Why a connection ended: the metrics' ``reason`` label, a fixed set (see ``_end_reason``)."""
_clock = time.perf_counter
"""Times batches: the loop's own clock has 1 ms steps under uvloop."""
_set_current = CURRENT.set
"""Makes a connection ``servicekit.connection.current()``, looked up once."""
_reset_current = CURRENT.reset


def _end_reason(connection: _Connection, last_line: bytes | None) -> str:
    """Why ``connection`` ends, from ``_end``'s last line and its state; one of END_REASONS."""
    if connection.refused:
        return "full" if last_line == TOO_MANY else "draining"
    if last_line is None:
        return "client" if connection.eof else "idle"
    if last_line == SHUTTING_DOWN:  # the drain, or a journal that could not write the batch
        return "drain" if connection.server.phase is DRAINING else "journal"
    if last_line == UNREAD_PUSHES:
        return "unread_pushes"
    return "too_long" if last_line.startswith(LINE_TOO_LONG[:25]) else "line_timeout"


def _raise(error: BaseException) -> None:
    """Raise ``error`` in a step of the loop of its own (``_Connection._stop_with``)."""
    raise error


def _judged(needs_journal: Callable[[bytes], bool], request: bytes) -> bool:
    """``needs_journal(request)``, or True if it raises: a request it cannot judge may change
    state, so it is journaled; the error is the protocol's, logged, and stops nothing."""
    try:
        return bool(needs_journal(request))
    except (Exception, asyncio.CancelledError):
        logger.exception("needs_journal() failed; the request is journaled")
        return True


def _failed_unless_cancelled(error: Exception | asyncio.CancelledError) -> bytes:
    """FAILED for an error ``handle`` raised, or re-raise a cancellation of its task.

    Someone cancelled the task running ``handle`` (its connection was lost, or the service is
    stopping): the CancelledError is that cancellation, to pass on. One that ``handle`` raised
    itself, or let out of something it awaited, while nobody cancelled it (or outside any
    task) is an error in that request like any other.
    """
    if isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling() > 0:
            raise error
    return _failed(error)


_NAK = REFUSAL[0]
_REFUSAL_INSIDE = b"\n" + REFUSAL
"""Where a reply starting like a refusal shows in a batch's joined replies (or at 0)."""


@types.coroutine
def _inline_runner(handle: Handler) -> Generator[Any, bytes, None]:
    """Run ``handle`` for each request sent in; yield its checked reply.

    Why a generator that stays alive: running each request's coroutine by hand ends every
    request with a StopIteration raised and caught, which costs more than the rest of the
    call. Here ``yield from`` awaits ``handle`` as a task would, its return needs no
    exception, and the server's callback gets the reply from a plain ``send``: bytes, which
    nothing inside ``handle`` may yield to the loop (a task refuses them), so anything else
    yielded means the request suspended. It then takes this runner into its task
    (``_finish_in_task``); the server starts another.
    """
    reply = b""
    while True:
        request = yield reply
        try:
            reply = yield from handle(request)
        except (Exception, asyncio.CancelledError) as exc:
            reply = _failed_unless_cancelled(exc)
        else:
            if type(reply) is not bytes or NEWLINE in reply:
                reply = _checked(reply)


@types.coroutine
def _finish_in_task(runner: Generator[Any, bytes, None], step: Any) -> Generator[Any, Any, bytes]:
    """Finish, inside a task, a request whose ``handle`` suspended outside one; return its reply.

    ``step`` is what the runner yielded (the future ``handle`` waits for): the task waits on
    it, then resumes the runner, until the runner yields the reply; anything thrown into the
    task (its cancellation) is passed on to ``handle``.
    """
    while type(step) is not bytes:
        try:
            sent = yield step
        except BaseException as exc:
            step = runner.throw(exc)
        else:
            step = runner.send(sent)
    return step
