"""``python -m app``: read the settings, run the service, exit with a meaningful status.

The exit statuses are listed in ``servicekit/exitcodes.py`` and in the README; ``--help`` prints
them with every setting. Settings come from ``APP_*`` variables only, so there are no other
arguments to take.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from servicekit import logs
from servicekit.aiorun import _new_loop, _signal_name, _this_platform, run
from servicekit.config import (
    ConfigError,
    Settings,
    load_settings,
    load_settings_and_app_settings,
    shown_value,
)
from servicekit.exitcodes import SIGNAL_BASE, ExitCode, StartupError
from servicekit.service import (
    DRAIN_SHARE,
    Lifespan,
    Service,
    ServiceProtocol,
    check_workers_and_state,
)

logger = logging.getLogger(__name__)


HELP = """\
usage: python -m app [--help]

Run the service until SIGTERM or Ctrl-C, then stop gracefully. Settings come from the
environment or a .env file in the working folder (the environment wins).

settings (variable, default, what it does):
{settings}

exit statuses:
{statuses}
"""


def main(
    protocol: ServiceProtocol,
    argv: Sequence[str] | None = None,
    *,
    lifespan: Lifespan | None = None,
    settings: type | None = None,
) -> int:
    """Run the service with this protocol until it is stopped; return the exit status.

    ``lifespan`` (``app/lifespan.py``) opens your resources before the first client and
    closes them after the drain; ``settings`` (``app/settings.py``) is your settings class,
    read and checked here, before anything starts, like the service's own.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        return _arguments(argv, settings)
    signals = _StartSignals()
    signals.install()
    try:
        return _start_and_run(protocol, signals, lifespan, settings)
    except _Interrupted as stop:
        logger.warning(
            "%s received while %s: stopped before serving anything",
            _signal_name(stop.signum),
            stop.doing,
        )
        return ExitCode.STARTUP_INTERRUPTED
    finally:
        signals.restore()


def _start_and_run(
    protocol: ServiceProtocol,
    signals: _StartSignals,
    lifespan: Lifespan | None,
    app_settings_class: type | None,
) -> int:
    try:
        settings, warnings = _read_settings(app_settings_class)
        check_workers_and_state(settings, protocol)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    logs.configure(settings.log_level, settings.log_format)
    for warning in warnings:
        logger.warning("%s", warning)
    if (problem := protocol_problem(protocol)) is not None:
        logger.error("cannot start: %s", problem)
        return ExitCode.CONFIG
    signals.check()
    if settings.workers > 1:
        from servicekit import supervisor  # only a supervisor pays for importing it

        signals.before_run()  # SIGHUP as the user left it: the supervisor applies the same rule
        return supervisor.main(settings, on_signals_taken=signals.hand_over)

    loop = _new_loop(settings.use_uvloop, _this_platform())  # the one run() would make
    executor = ThreadPoolExecutor(thread_name_prefix="aiorun")
    loop.set_default_executor(executor)  # the one run() gets: no second pool for the start
    on_ready = None
    if settings.worker_index:
        from servicekit import supervisor

        on_ready = supervisor.beat_to_supervisor(loop, settings.heartbeat_timeout / 4)
    service = Service(settings, protocol, on_ready=on_ready, lifespan=lifespan, interrupts=signals)
    serving = _serve(service, signals)
    try:
        _start_threads(executor)
        # Start before run() takes the loop over: a port in use or an unwritable journal is
        # then one line and an exit status, with nothing running that would need a shutdown.
        loop.run_until_complete(service.open())
        signals.check()
        signals.before_run()
        report = run(
            serving,
            loop=loop,
            executor=executor,
            shutdown_callback=service.stop,
            stop_on_unhandled_errors=settings.stop_on_error,
            timeout_task_shutdown=settings.shutdown_timeout * (1 - DRAIN_SHARE),
            force_exit_on_second_signal=True,
            force_exit_after=settings.shutdown_timeout + HARD_STOP_GRACE,
        )
    except StartupError as exc:
        logger.error("%s", exc, exc_info=exc.__cause__)
        return exc.exit_code
    except _Interrupted as stop:
        stop.doing = service.step
        service.abandon()
        _cancel_everything(loop)
        raise
    except Exception as exc:  # the runtime has logged it with its traceback
        logger.error("stopped by an unhandled error: %s", exc)
        return ExitCode.ERROR
    except KeyboardInterrupt as exc:
        # Raised by code (handle calling a library that raises it), not by a signal: the
        # runtime handles SIGINT itself, and has logged it with its traceback. An error like
        # any other, not "a second SIGINT" (130).
        logger.error("stopped by a KeyboardInterrupt raised in the service: %r", exc)
        return ExitCode.ERROR
    finally:
        serving.close()  # a no-op once run() has run it; else no "never awaited" warning
        executor.shutdown(wait=False)  # run() did, unless the start failed before it
        # run() closed the async generators within its budget: a no-op then, needed only
        # when the start failed before run(). The loop is ours to close: we made it, so
        # that service.open() could run on it before run() took over.
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if report.busy_threads:
        # Python would wait for these executor threads at exit, past the shutdown budget.
        logging.shutdown()
        os._exit(service.exit_code or ExitCode.SHUTDOWN_TIMEOUT)
    if service.exit_code != ExitCode.OK:
        return service.exit_code
    if report.unfinished:
        return ExitCode.SHUTDOWN_TIMEOUT
    return ExitCode.OK


def protocol_problem(protocol: object) -> str | None:
    """What is wrong with the protocol module's functions, in words that say what to write;
    None if nothing is.

    Checked before anything binds: a ``handle`` without ``async`` would otherwise start, pass
    the health probe and fail every request ("Task got bad yield"), and an ``async def
    recover`` would be called, its coroutine dropped, and the start would say "recovered"
    with the state empty. Both are a slip of one word, so the start names the function.
    """
    name = getattr(protocol, "__name__", "the protocol module")
    handle = getattr(protocol, "handle", None)
    if handle is None:
        return f"{name} has no handle(): define async def handle(request: bytes) -> bytes"
    if not _is_async(handle):
        return (
            f"{name}.handle is not async: write it as async def handle(request: bytes) ->"
            " bytes (the server awaits it)"
        )
    for function in ("recover", "snapshot", "needs_journal"):
        value = getattr(protocol, function, None)
        if value is None:
            continue
        if not callable(value):
            return f"{name}.{function} is not a function: define def {function}(...) or drop it"
        if _is_async(value) or inspect.isasyncgenfunction(value):
            return (
                f"{name}.{function} is async: write it as a plain def {function}(...) without"
                " async (it is called, not awaited, and must not await)"
            )
    return None


def _is_async(function: object) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    call = type(function).__call__ if callable(function) else None  # a class's async __call__
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


async def _serve(service: Service, signals: _StartSignals) -> None:
    """The coroutine run() runs: from its first step run() hears the signals, not we."""
    signals.hand_over()
    await service.serve()


class _Interrupted(BaseException):
    """A stop signal arrived during the start; raised between the start's steps, or in the
    user's ``recover()`` (a BaseException, like KeyboardInterrupt, so ``recover``'s own
    ``except Exception`` cannot swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.doing = "starting"
        """What the start was doing, for the line that says it stopped."""


class _StartSignals:
    """The stop signals from the start of ``main()`` until ``run()`` hears them itself.

    Without these, SIGTERM during a long journal replay killed the process at once (status
    143, which means a second SIGTERM) and Ctrl-C printed a KeyboardInterrupt traceback. The
    first stop signal is noted (``heard``), and the start raises ``_Interrupted`` at its next
    step (``check()``, which ``Service.open()`` calls between its steps and between two
    replayed records), which closes what it opened and exits with STARTUP_INTERRUPTED. Only
    while the user's ``recover()`` runs (``interruptible``), which may never return, does the
    handler raise it at once. Raising it anywhere else broke what was running: in an import,
    the import lock stayed held and the process hung for ever; in an event-loop callback (a
    worker's heartbeat), asyncio logged it with its traceback and swallowed it. A second
    signal exits at once with 128 + N, as during the shutdown.

    Whoever hears the signals next (``run()``, or a supervisor) calls ``hand_over()`` once its
    own handlers are in place: a signal noted and not yet acted on is raised again for them,
    so none is lost between the last step and the hand-over. ``run()`` puts these handlers
    back after it; from then on (``handed_over``) a late signal finds the work done and is
    ignored.
    The signals are the runtime's own, taken by the runtime's rule: SIGINT, SIGTERM and, while
    its handler is the default (not a user's reload handler, not ignored under ``nohup``),
    SIGHUP on POSIX; SIGINT and SIGBREAK on Windows.
    """

    installed: _StartSignals | None = None
    """The handlers in place in this process, for the fork hook below."""

    def __init__(self) -> None:
        self.handed_over = False
        self.heard = 0
        """The first stop signal heard during the start; 0 while none was."""
        self.acted_on = False
        """``heard`` was raised as ``_Interrupted``, or given to the new owner: never twice."""
        self.interruptible = False
        """The user's ``recover()`` is running: a signal raises at once (``Service._replay``)."""
        self._previous: dict[int, Any] = {}
        self._platform = _this_platform()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set there; run() does not install any either
        for signum in self._platform.signals:
            previous = signal.getsignal(signum)
            if signum in self._platform.taken_if_default and previous != signal.SIG_DFL:
                continue
            self._previous[signum] = signal.signal(signum, self._heard)
        _StartSignals.installed = self

    def before_run(self) -> None:
        """Give back the signals ``run()`` takes only from their default handler (SIGHUP).

        Seeing ours, it would leave SIGHUP to us, and a closed terminal would no longer stop
        the service. Until ``run()`` has taken it, a microsecond later, SIGHUP has its default
        action again; SIGINT and SIGTERM stay ours throughout.
        """
        for signum in self._platform.taken_if_default:
            previous = self._previous.pop(signum, None)
            if previous is not None:
                signal.signal(signum, previous)

    def _heard(self, signum: int, frame: FrameType | None) -> None:
        if self.handed_over:
            return
        if self.heard:
            os._exit(SIGNAL_BASE + signum)
        self.heard = signum
        if self.interruptible:
            self.check()

    def check(self) -> None:
        """Raise ``_Interrupted`` if a stop signal was heard and not acted on yet."""
        if self.heard and not self.acted_on:
            self.acted_on = True
            raise _Interrupted(self.heard)

    def hand_over(self) -> None:
        """The new owner's handlers are in place: from now on it hears the signals, and a
        signal heard since the last ``check()`` is raised again, for it to act on."""
        self.handed_over = True
        if self.heard and not self.acted_on:
            self.acted_on = True
            signal.raise_signal(self.heard)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        if _StartSignals.installed is self:
            _StartSignals.installed = None

    @staticmethod
    def _after_fork_in_child() -> None:
        """In a child forked by the user's code (a fork ``ProcessPoolExecutor``): the handlers
        from before ``main()``, as under ``asyncio.run()``, so SIGTERM and SIGINT end it.

        The runtime's own fork hook puts back the handlers it found, which are ours: this one
        is registered after it (this module imports the runtime first, and hooks run in the
        order they were registered), so it sees ours and replaces them.
        """
        signals, _StartSignals.installed = _StartSignals.installed, None
        if signals is not None:
            for signum, previous in signals._previous.items():
                if signal.getsignal(signum) == signals._heard:
                    signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            signals._previous.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_StartSignals._after_fork_in_child)


HARD_STOP_GRACE = 1.0
"""Seconds past APP_SHUTDOWN_TIMEOUT after which a stop still under way ends the process with
status 75, where the main thread is stuck logged: a ``handle`` that blocks the loop (a sync
call by mistake) would otherwise hold the whole stop, past Docker's grace period. The
grace leaves the phases, each bounded by the budget, their last steps; the supervisor's
STOP_MARGIN (2 s) is longer, so a worker says why it stopped before being killed."""

RUNTIME_THREADS = 2
"""Threads the runtime starts besides its executor's: the one that hears the signals, for
the whole run, and the one that waits for the executor at the stop."""


def _start_threads(executor: ThreadPoolExecutor) -> None:
    """Start the executor's first thread, and check that the runtime's can start beside it.

    The journal's fsync runs in the executor, so that thread starts now and stays. The
    runtime's start later, so one spare thread for each is started and let go. Each thread
    reserves a stack, so under a memory limit (``ulimit -v``) or a process limit the start
    fails here, in one line, instead of after ``listening on`` at the first fsync or the
    stop. (That bounds what the service needs at start; memory the clients use later is
    another matter.)
    """
    release = threading.Event()
    spares: list[threading.Thread] = []
    try:
        executor.submit(release.wait)
        for _ in range(RUNTIME_THREADS):
            spare = threading.Thread(target=release.wait, name="thread-check", daemon=True)
            spare.start()
            spares.append(spare)
    except RuntimeError as exc:
        raise StartupError(
            ExitCode.NO_THREADS,
            f"cannot start: {exc}: the service needs {RUNTIME_THREADS + 1} threads beside the"
            " main one; raise the memory limit (ulimit -v) or the process limit (ulimit -u)",
        ) from None
    finally:
        release.set()
        for spare in spares:
            spare.join()


def _cancel_everything(loop: asyncio.AbstractEventLoop) -> None:
    """After an interrupted start: end the tasks the start left, so none is reported."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _read_settings(app_settings_class: type | None) -> tuple[Settings, list[str]]:
    """The service's settings with their warnings; the user's are read and checked too.

    Raises ConfigError for the first bad value of either. The user's are kept by
    ``app_settings()``, where their code reads them.
    """
    if app_settings_class is None:
        return load_settings()
    return load_settings_and_app_settings(app_settings_class)


def _arguments(argv: Sequence[str], app_settings_class: type | None = None) -> int:
    """``--help``: print the settings and exit statuses. Anything else: one line, status 2."""
    if list(argv) in (["--help"], ["-h"]):
        from servicekit.config import settings_help
        from servicekit.exitcodes import exit_statuses_help

        print(
            HELP.format(settings=settings_help(app_settings_class), statuses=exit_statuses_help()),
            end="",
        )
        return ExitCode.OK
    unknown = next((arg for arg in argv if arg not in ("--help", "-h")), argv[-1])
    option, equals, _ = unknown.partition("=")  # --name=value: the name helps, not the value
    shown = f"{shown_value(option)} (its value not shown)" if equals else shown_value(unknown)
    print(
        f"error: unknown argument {shown}: settings are APP_* variables"
        " (python -m app --help lists them)",
        file=sys.stderr,
    )
    return ExitCode.CONFIG
