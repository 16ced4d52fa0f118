"""The service's life: what happens at start, and in which order things stop.

``open()`` runs on the loop before the runtime's ``run()`` takes it over; ``serve()`` is the
coroutine handed to ``run()``, and ``stop()`` is its ``shutdown_callback``, which the runtime
calls after the loop stopped and before it cancels anything. Doing the drain there, rather
than in a cancelled task, is what makes the order deterministic:

    signal -> stop accepting -> drain connections -> close the lifespan
           -> journal flush (protected) -> runtime cancels what is left, waits for
              protected work -> executor -> exit

Before it listens, ``open()`` replays the journal through ``protocol.recover``, so a stateful
protocol has rebuilt its state before the first client arrives. A ``recover`` whose body is
empty is recognised (``does_nothing``) and the journal is not read at all.

The user's lifespan (``app/lifespan.py``, see ``Lifespan``) is entered in ``serve()``, after
the replay and before the first client is accepted, and exited in ``stop()`` once the drain
is over (no ``handle`` runs any more) and before the journal closes.

A failure at start (port taken, no permission, journal unwritable) raises StartupError with
its exit status: nothing is running yet, so there is nothing to shut down, and the user sees
one line. A failure later (the journal cannot be written) records its exit status and stops
the loop, so the normal shutdown runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, ClassVar, Protocol

from servicekit import notify
from servicekit.config import ConfigError, Settings
from servicekit.exitcodes import ExitCode, StartupError, bind_exit_code, os_reason
from servicekit.journal import Journal, JournalInUse, SnapshotFailed, adopt_orphans
from servicekit.server import Server

if TYPE_CHECKING:
    from servicekit.metrics import Endpoint

logger = logging.getLogger(__name__)

_REPLAYING = "replaying the journal"
"""The start's step that says which journal line it is at, when a signal interrupts it."""

DRAIN_SHARE = 0.5
"""Part of APP_SHUTDOWN_TIMEOUT given to draining connections; the runtime gets the rest."""


class ServiceProtocol(Protocol):
    """What the user's protocol module provides (``app/protocol.py`` is one).

    A module satisfies it by having these two functions: the service is handed the module, so
    this package never imports the user's.
    """

    async def handle(self, request: bytes) -> bytes: ...

    def recover(self, request: bytes) -> None: ...


Lifespan = Callable[["Service"], AbstractAsyncContextManager[object]]
"""What opens your resources before the first client and closes them after the last reply.

A function that takes the service and returns an async context manager, such as one written
with ``contextlib.asynccontextmanager``; ``app/__main__.py`` passes it to
``main(protocol, lifespan=...)``. What runs before its ``yield`` runs once the journal is
replayed and before the first client is accepted: open a database pool, a client session,
start background tasks. What runs after it runs once the drain is over, so no ``handle``
runs any more, and before the journal is flushed and closed, within what is left of the
drain's half of ``APP_SHUTDOWN_TIMEOUT`` (past that it is cancelled, and the exit status
is 75). The order your background tasks stop in:

1. Your lifespan's exit: stop your tasks there, before you close what they use. Cancel a
   plain task (``asyncio.create_task``); ask work that must finish, started with
   ``shutdown_waits_for()``, to finish (an ``asyncio.Event``) and await it.
2. The journal is flushed and closed.
3. The runtime cancels every task still running, except work started with
   ``shutdown_waits_for()``, which it waits for within the other half of the budget.

If the lifespan raises on the way in, the service stops (exit status 1, the traceback in the
log) without accepting anyone; if it raises on the way out, the error is logged and the exit
status is 1, and the journal is still flushed. With ``APP_WORKERS`` above 1 each worker runs
its own lifespan. Example (``app/lifespan.py``)::

    @contextlib.asynccontextmanager
    async def lifespan(service: Service) -> AsyncIterator[None]:
        pool = await open_pool(app_settings(Settings).database_url)
        protocol.pool = pool                       # what handle() uses
        done = asyncio.Event()
        flusher = shutdown_waits_for(flush_until(done))  # finishes, never cancelled
        yield
        done.set()
        await flusher                              # its last flush, then
        await pool.close()
"""


class StartInterrupts(Protocol):
    """How a stop signal heard during the start reaches ``open()`` (``servicekit.main`` has
    the one in use).

    A signal is not raised wherever the main thread happens to be: in the middle of an
    import, a lock or an event-loop callback, an exception left a lock held (a hang) or was
    logged and swallowed. It is noted, and ``check()`` raises it between the start's steps
    and between two replayed records; only while the user's ``recover()`` runs
    (``interruptible``), which may never return, does it raise at once.
    """

    interruptible: bool

    def check(self) -> None:
        """Raise if a stop signal was heard; nothing otherwise."""


class _NoInterrupts:
    """For a service opened outside ``python -m app`` (a test): nothing stops the start."""

    interruptible = False

    def check(self) -> None:
        pass


class Service:
    """Wires the user's protocol, the journal, the server and systemd notification together."""

    running: ClassVar[Service | None] = None
    """The service open in this process, from ``open()`` until ``stop()`` or ``abandon()``
    ends: what a forked child lets go of (``_forget_in_forked_child``)."""

    def __init__(
        self,
        settings: Settings,
        protocol: ServiceProtocol,
        *,
        on_ready: Callable[[], None] | None = None,
        lifespan: Lifespan | None = None,
        interrupts: StartInterrupts | None = None,
    ) -> None:
        self.settings = settings
        self.interrupts: StartInterrupts = interrupts or _NoInterrupts()
        self.protocol = protocol
        self._lifespan = lifespan
        self._lifespan_open: AbstractAsyncContextManager[object] | None = None
        """The lifespan's context while it is entered: set in serve(), cleared in stop()."""
        self.exit_code = ExitCode.OK
        self.journal = Journal(
            settings.journal_path,
            fsync_policy=settings.journal_fsync,
            on_failure=self._journal_failed,
            max_line_bytes=settings.max_line_bytes,
            stateful=not does_nothing(getattr(protocol, "recover", _empty)),
            max_bytes=settings.journal_max_bytes,
            snapshot=getattr(protocol, "snapshot", None),
        )
        self.server = Server(
            self.journal,
            max_connections=settings.max_connections,
            max_line_bytes=settings.max_line_bytes,
            idle_timeout=settings.idle_timeout,
            line_timeout=settings.line_timeout,
            handle=protocol.handle,
            needs_journal=getattr(protocol, "needs_journal", None),
        )
        self._on_ready = on_ready
        self._stopping = False
        self.addresses: list[tuple[str, int]] = []
        self._step = "starting"
        """What ``open()`` is doing (see ``step``)."""
        self._replaying = 0
        """The journal line being replayed, while ``_step`` says the journal is."""
        self.metrics: Endpoint | None = None
        """The HTTP metrics and probes endpoint, if APP_METRICS_PORT (or the supervisor) asks."""
        # The shutdown as the metrics show it, on the monotonic clock.
        self.drain_began: float | None = None
        self.drain_seconds: float | None = None
        self.drained = 0
        """Connections open when the drain began."""
        self.drain_aborted = 0
        self.flush_seconds: float | None = None

    async def open(self) -> None:
        """Open the journal, bind, replay the journal; raise StartupError if any of it fails.

        Nothing is accepted yet: that starts in ``serve()``, after ``recover`` has seen every
        journaled request. Binding comes before the replay, so a port in use is reported at
        once, however long the journal. Whatever stops it midway (a StartupError, a signal
        during a long replay) leaves nothing open.
        """
        try:
            await self._open()
        except BaseException:
            self.abandon()
            raise

    def _begin(self, step: str) -> None:
        """The start goes on to ``step``, unless a stop signal was heard (it raises then)."""
        self.interrupts.check()
        self._step = step

    async def _open(self) -> None:
        Service.running = self
        self._begin("opening the journal")
        try:
            if self.settings.worker_index == 0:  # workers: their supervisor did it
                adopt_orphans(self.journal.path, 1, self.settings.max_line_bytes)
            self.journal.open()
        except JournalInUse as exc:
            raise StartupError(ExitCode.ADDRESS_IN_USE, f"cannot start: {exc}") from None
        except OSError as exc:
            raise StartupError(
                ExitCode.JOURNAL_UNWRITABLE, f"cannot write journal: {exc}"
            ) from None
        self._begin("binding its port")
        try:
            self.addresses = await self.server.listen(
                self.settings.host,
                self.settings.port,
                reuse_port=self.settings.reuse_port or self.settings.worker_index > 0,
            )
        except OSError as exc:
            where = f"{self.settings.host}:{self.settings.port}"
            raise StartupError(
                bind_exit_code(exc), f"cannot listen on {where}: {os_reason(exc)}"
            ) from None
        await self._open_metrics()
        if does_nothing(self.protocol.recover):
            return
        self._begin(_REPLAYING)
        try:
            replayed = self._replay()
            old = self.journal.report.old_format
            logger.info(
                "recovered %d request(s) from %s%s",
                replayed,
                self.journal.path,
                f" ({old} from before checksums)" if old else "",
            )
            self._begin("compacting the journal")
            self._compact_at_start()
        except OSError as exc:
            raise StartupError(ExitCode.JOURNAL_UNWRITABLE, f"cannot read journal: {exc}") from None

    def _replay(self) -> int:
        """Hand every journaled request to ``recover``; return how many there were.

        A ``recover`` that raises stops the start with the record's line and byte offset and
        the traceback: every restart would fail on the same record, so the user must see which
        one. Its line number is also ``sed -n Np`` on the file, the way to look at it.
        """
        recover = self.protocol.recover
        interrupts = self.interrupts
        replayed = 0
        for request in self.journal.replay():
            replayed += 1
            # Where the record is in the file (its header, checksums and skipped lines count).
            offset, line = self.journal.position
            self._replaying = line  # an int: a replay of millions of lines pays nothing more
            interrupts.check()
            interrupts.interruptible = True  # recover() may never return: a signal raises
            try:
                recover(request)
            except Exception as exc:
                raise StartupError(
                    ExitCode.RECOVER_FAILED,
                    f"cannot start: recover() raised on journal line {line} (byte offset"
                    f" {offset}) of {self.journal.path}, a {len(request)}-byte request; every"
                    " start replays it: make recover() accept it, or take that line out of the"
                    f" journal (keep a copy); sed -n {line}p {self.journal.path} shows it",
                ) from exc
            finally:
                interrupts.interruptible = False
        return replayed

    def _compact_at_start(self) -> None:
        """Compact the replayed journal; a ``snapshot()`` that fails stops the start like a
        ``recover`` that raises: its traceback (or the bad record) and the journal kept."""
        try:
            self.journal.compact_now()
        except SnapshotFailed as exc:
            raise StartupError(
                ExitCode.RECOVER_FAILED,
                f"cannot start: {exc}; at the start's compaction of {self.journal.path}, which"
                " is kept as it was: fix snapshot(), or set APP_JOURNAL_MAX_BYTES=0 to start"
                " without compacting",
            ) from exc.__cause__

    @property
    def step(self) -> str:
        """What the start is doing, for a start that a signal interrupts to say so."""
        if self._step == _REPLAYING:
            return f"{_REPLAYING} (line {self._replaying} of {self.journal.path})"
        return self._step

    def abandon(self) -> None:
        """Close what ``open()`` opened, when the service does not start after all."""
        if self.metrics is not None:
            self.metrics.close()
        self.server.close_listeners()
        self.journal.abandon()
        if Service.running is self:
            Service.running = None

    async def _open_metrics(self) -> None:
        """Bind the metrics port, if it is on: a taken port fails the start like APP_PORT."""
        if not (self.settings.metrics_port or os.environ.get("SUPERVISOR_METRICS_SOCKET")):
            return  # prometheus_client is not even imported
        from servicekit import metrics

        try:
            self.metrics = await metrics.open_for(self)
        except OSError as exc:
            where = f"{self.settings.host}:{self.settings.metrics_port}"
            raise StartupError(
                bind_exit_code(exc), f"cannot listen on {where} for metrics: {os_reason(exc)}"
            ) from None

    async def serve(self) -> None:
        """Start the background work and say the service is ready; then return.

        ``run()`` runs this once its signal handlers and error handling are in place, so
        whoever acts on the readiness (a supervisor, a test, a readiness probe) may stop the
        service at once and get the graceful shutdown. Start your own background tasks here
        too, for the same reason. A supervised worker tells its supervisor (``on_ready``),
        which announces the whole service once; anyone else logs ``listening on``.
        """
        self.journal.start()
        await self._enter_lifespan()
        self.server.start()
        if self.metrics is not None:
            await self.metrics.start()
            for address in self.metrics.addresses:
                logger.info("metrics and probes on http://%s:%d/metrics", *address)
        if self._on_ready is not None:
            self._on_ready()
        else:
            for address in self.addresses:
                logger.info("listening on %s:%d", *address)
        notify.send("READY=1")
        notify.start_watchdog()

    async def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Shutdown callback: drain connections, then flush the journal."""
        self._stopping = True
        notify.send("STOPPING=1")
        notify.status("draining connections")
        budget = self.settings.shutdown_timeout * DRAIN_SHARE
        self.drain_began = began = time.monotonic()
        deadline = began + budget
        self.drained = len(self.server.connections)
        self.drain_aborted = await self.server.drain(grace=budget)
        if self.drain_aborted:
            self._set_exit_code(ExitCode.SHUTDOWN_TIMEOUT)
        self.drain_seconds = time.monotonic() - began
        await self._exit_lifespan(deadline)
        flush_began = time.monotonic()
        notify.status("flushing the journal")
        # A flush that takes longer stays protected; the runtime waits for it in its own half
        # of the budget and names it if even that is not enough.
        await self.journal.close(grace=max(deadline - time.monotonic(), 0.0))
        self.flush_seconds = time.monotonic() - flush_began
        if self.metrics is not None:  # served through the drain and the flush, for a last scrape
            self.metrics.close()
        if Service.running is self:
            Service.running = None

    async def _enter_lifespan(self) -> None:
        """Open the user's resources; an error stops the service before anyone is accepted."""
        if self._lifespan is None:
            return
        context = self._lifespan(self)
        await context.__aenter__()
        self._lifespan_open = context

    async def _exit_lifespan(self, deadline: float) -> None:
        """Close the user's resources, within what is left of the drain's half of the budget.

        The journal is flushed after this whatever happens here: an error is logged (exit
        status 1), a lifespan still closing at the deadline is cancelled (exit status 75).
        """
        context, self._lifespan_open = self._lifespan_open, None
        if context is None:
            return
        notify.status("closing the lifespan")
        left = max(deadline - time.monotonic(), 0.0)
        try:
            async with asyncio.timeout(left):
                await context.__aexit__(None, None, None)
        except TimeoutError:
            logger.error("the lifespan did not close within %.1fs: cancelled", left)
            self._set_exit_code(ExitCode.SHUTDOWN_TIMEOUT)
        except Exception:
            logger.exception("the lifespan failed while closing")
            self._set_exit_code(ExitCode.ERROR)

    def _journal_failed(self, error: OSError) -> None:
        self._fail(ExitCode.JOURNAL_UNWRITABLE, f"cannot write journal: {error}")

    def _fail(self, code: ExitCode, message: str) -> None:
        """Log why, record the exit status, and start the shutdown unless it has begun."""
        logger.error("%s", message)
        self._set_exit_code(code)
        if not self._stopping:
            asyncio.get_running_loop().stop()

    def _set_exit_code(self, code: ExitCode) -> None:
        if self.exit_code == ExitCode.OK:  # the first problem is the one to report
            self.exit_code = code


def _forget_in_forked_child() -> None:
    """In a child forked while the service runs (a fork ``ProcessPoolExecutor`` in
    ``handle``): let go of the service's files, which the child inherited and never uses.

    Such children can outlive the service (after a ``kill -9``, or a worker's crash). Holding
    the journal and its lock, the listening sockets, or the clients' connections, they made
    the restart refuse to start (status 69) and kept connections that nobody answers. The
    objects the child does not own (connections' transports, the loop's) keep their fd
    numbers, pointed at ``/dev/null``: a number left free could be reused by the child and
    closed by them. Nothing here touches the loop, whose epoll set the parent shares.
    """
    service, Service.running = Service.running, None
    if service is None:
        return
    service.journal.abandon()  # closes the file, and so lets go of its lock
    service.server.close_listeners()  # the listening sockets: ours to close
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for connection in service.server.connections:
            sock = connection.transport.get_extra_info("socket")
            fd = -1 if sock is None else sock.fileno()
            if fd >= 0:
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_forked_child)


def has_state(protocol: ServiceProtocol) -> bool:
    """True if the protocol keeps state: it has a ``recover`` that does something, or says
    so with ``KEEPS_STATE = True`` (state that lives only in the process, like a chat's
    subscribers, which no journal rebuilds but which workers would split all the same)."""
    declared = getattr(protocol, "KEEPS_STATE", None)
    if isinstance(declared, bool):
        return declared
    recover = getattr(protocol, "recover", None)
    return recover is not None and not does_nothing(recover)


def check_workers_and_state(settings: Settings, protocol: ServiceProtocol) -> None:
    """Refuse several workers for a protocol with state, unless that was chosen.

    Each worker journals only the requests it answered and rebuilds its state from those
    alone, so with a counter under two workers each answers with its own share of the count:
    wrong answers, and nothing says so. Nothing can make the workers agree (they share no
    memory, and each writes its own journal), so the service refuses to start (ConfigError,
    exit status 2) unless ``APP_STATE_PER_WORKER`` says that state held by each worker on its
    own is meant, e.g. because clients are routed so that a key always reaches one worker.
    """
    if settings.workers <= 1 or settings.state_per_worker or not has_state(protocol):
        return
    raise ConfigError(
        f"APP_WORKERS={settings.workers} with a protocol that keeps state (its recover() does"
        " something, or KEEPS_STATE is True): each worker would hold and answer from its own"
        " part of the state; use APP_WORKERS=1 and scale out with a shared database or by"
        " routing each key to one instance, or set APP_STATE_PER_WORKER=1 if each worker"
        " holding its own state is what you want"
    )


def does_nothing(function: Callable[[bytes], None]) -> bool:
    """True if the function's body is empty: only a docstring, ``pass`` or ``...``.

    Its bytecode is compared with that of empty functions compiled by this same interpreter,
    so the test holds on every Python version. Equal bytecode can at most return another
    constant, which does nothing either; any other body counts as work.
    """
    code = getattr(function, "__code__", None)
    return code is not None and any(
        code.co_code == empty.__code__.co_code for empty in (_empty, _empty_with_docstring)
    )


def _empty(request: bytes) -> None:
    pass


def _empty_with_docstring(request: bytes) -> None:
    """An empty body."""
