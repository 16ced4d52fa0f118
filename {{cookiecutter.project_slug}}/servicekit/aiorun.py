"""Run an asyncio service until it is told to stop, then stop it gracefully.

A stdlib-only drop-in for the public API of aiorun 2025.1.1: ``run()`` and
``shutdown_waits_for()``; swap ``from aiorun import ...`` for ``from servicekit.aiorun import ...``.
``run()`` keeps the loop running until a signal (SIGINT/SIGTERM/SIGHUP, on Windows Ctrl-C and
Ctrl-Break) or ``loop.stop()``, then shuts down in this order: run the shutdown callback,
cancel every task that is not protected by ``shutdown_waits_for()``, wait for all of them
and then for the executor within one time budget, close the loop it created, put the
previous signal handlers back, and re-raise the error that stopped the loop, if any.
Unlike aiorun it returns a ``ShutdownReport`` saying what, if anything, was left behind.

SPDX-License-Identifier: MIT
Copyright (c) 2026 the aiorun-template authors
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import contextlib
import contextvars
import enum
import functools
import gc
import importlib
import inspect
import io
import logging
import math
import os
import select
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, TypeVar, cast

__all__ = ["ShutdownReport", "run", "shutdown_waits_for"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

ShutdownCallback = Awaitable[object] | Callable[[asyncio.AbstractEventLoop], object] | None
"""A function taking the loop, an async function taking the loop, or a coroutine object."""

_CANCEL_MESSAGE = "cancelled by run() shutdown"
"""Every task the shutdown cancels gets this message, so the reports it causes are known."""

_GRACE = 0.05
"""Seconds a late phase still gets when the budget is spent: idle threads need a moment."""

_GC_PAUSE = 0.1
"""Seconds the cancel phase may run with the collector's threshold raised."""

_GC_THRESHOLD = 100_000
"""Allocations between two collections while the cancelled tasks end (the default is 700
or 2,000): few enough collections to be cheap, and a bound on uncollected garbage."""

_EXIT_BACKSTOP = 1.0
"""Seconds the force exit may spend logging before it exits regardless."""

_DEADLINE_STATUS = 75
"""The status of a shutdown that ``force_exit_after`` ended: EX_TEMPFAIL, as in sysexits.h."""

_DUPLICATE_WINDOW = 0.1
"""Seconds within which the same signal again is the same request, not a second one:
``timeout``, process-group delivery and wrappers that forward Ctrl-C send it twice."""

_DUPLICATE_TAIL = 0.025
"""Seconds after the first signal that a shutdown faster than that still listens, so a
duplicate sent milliseconds later is heard, not met by the default action once the
handlers are back. Short, because every fast shutdown pays it."""

_STACKS_SHOWN = 20
"""How many task stacks one log line shows; the rest are only counted."""


# --- What run() hands back ------------------------------------------------------------------


@dataclass(frozen=True)
class ShutdownReport:
    """What the shutdown left behind. Our extension: aiorun's ``run()`` returns None.

    Callers that ignore the return value see no difference. A service uses it to choose its
    exit status, for instance to say "work was abandoned" when ``unfinished`` is not empty.
    """

    signal: int | None
    """The signal that started the shutdown; None for ``loop.stop()`` or an unhandled error."""
    unfinished: tuple[str, ...]
    """Names of the tasks, protected ones included, still running when the budget ran out."""
    duration: float
    """Seconds from the shutdown request to the end of the last shutdown phase."""
    busy_threads: tuple[str, ...] = field(default=())
    """Names of executor threads still busy when the budget ran out."""

    @property
    def timed_out(self) -> bool:
        """True when the budget ran out with tasks or executor threads still busy."""
        return bool(self.unfinished or self.busy_threads)


# --- Work the shutdown waits for ------------------------------------------------------------

_protected: set[asyncio.Future[Any]] = set()
"""Protected work and its subtasks, held strongly until done so none is collected midway."""

_PROTECTING: contextvars.ContextVar[bool] = contextvars.ContextVar("protecting", default=False)
"""True inside protected work. Tasks copy their creator's context, so every task the work
starts (with ``create_task``, ``gather`` or a ``TaskGroup``) is protected too."""


def _protect(task: asyncio.Future[Any]) -> None:
    _protected.add(task)
    task.add_done_callback(_protected.discard)


# PEP 695 type parameters need Python 3.12 and this module runs on 3.11: keep the TypeVar.
def shutdown_waits_for(  # noqa: RUF100, UP047
    coro: Awaitable[_T], loop: asyncio.AbstractEventLoop | None = None
) -> Coroutine[Any, Any, _T]:
    """Start ``coro`` as work that the shutdown waits for instead of cancelling.

    The work starts at once. Await the returned object for its result, hand it to
    ``create_task()`` or ``ensure_future()``, or drop it to fire and forget: all three work
    and none leaves a "never awaited" warning. Cancelling the caller does not cancel the
    work, as with ``asyncio.shield()``; cancelling the work itself reaches the caller as
    ``CancelledError``. Tasks the work starts are protected as well. A failure goes to the
    loop's exception handler only once nobody can receive it any more: when the returned
    object is dropped without having been awaited.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "shutdown_waits_for() needs a running event loop, or pass loop="
            ) from None
    if asyncio.iscoroutine(coro):
        context = contextvars.copy_context()
        context.run(_PROTECTING.set, True)
        work: asyncio.Future[_T] = loop.create_task(coro, context=context)
    else:
        work = asyncio.ensure_future(coro, loop=loop)
    _protect(work)
    call = _ProtectedCall(work)
    work.add_done_callback(functools.partial(_work_done, weakref.ref(call)))
    return call


class _ProtectedCall(Coroutine[Any, Any, _T]):
    """The handle ``shutdown_waits_for()`` returns: a coroutine that waits for the work.

    It is a ``collections.abc.Coroutine``, so await, ``create_task()`` and
    ``ensure_future()`` accept it, yet no coroutine object exists until someone drives it.
    That is why a bare call leaves no "coroutine was never awaited" warning behind.
    """

    def __init__(self, work: asyncio.Future[_T]) -> None:
        self._work = work
        self._receiver: Coroutine[Any, Any, _T] | None = None
        self._received = False

    async def _receive(self) -> _T:
        try:
            return await asyncio.shield(self._work)
        finally:
            self._received = self._received or self._work.done()

    def _driver(self) -> Coroutine[Any, Any, _T]:
        if self._receiver is None:
            self._receiver = self._receive()
        return self._receiver

    def __await__(self) -> Generator[Any, None, _T]:
        return self._driver().__await__()

    def send(self, value: Any) -> Any:
        return self._driver().send(value)

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
        /,
    ) -> Any:
        # Always pass one exception instance on: the (type, value, tb) form is deprecated.
        if isinstance(typ, BaseException):
            error = typ
        elif isinstance(val, BaseException):
            error = val
        else:
            error = typ() if val is None else typ(val)
        if tb is not None:
            error = error.with_traceback(tb)
        return self._driver().throw(error)

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.close()

    @property
    def cr_frame(self) -> FrameType | None:
        """The frame of the waiting coroutine, so task stacks show where it waits."""
        return getattr(self._receiver, "cr_frame", None)

    @property
    def __name__(self) -> str:
        return "shutdown_waits_for"

    def __del__(self) -> None:
        # The last chance to receive the failure is gone: report it, as asyncio reports a
        # task's exception that was never retrieved.
        if not self._received and self._work.done():
            _report_unreceived(self._work)


def _work_done(handle: weakref.ref[_ProtectedCall[Any]], work: asyncio.Future[Any]) -> None:
    """Mark the outcome seen for asyncio; report a failure at once if the handle is gone."""
    if not work.cancelled() and work.exception() is not None and handle() is None:
        _report_unreceived(work)


def _report_unreceived(work: asyncio.Future[Any]) -> None:
    if work.cancelled() or work.exception() is None:
        return
    work.get_loop().call_exception_handler(
        {
            "message": "shutdown_waits_for() work failed and nobody received its error",
            "exception": work.exception(),
            "future": work,
        }
    )


# --- run(): the whole story -----------------------------------------------------------------


def run(
    coro: Awaitable[object] | None = None,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    shutdown_handler: Callable[[asyncio.AbstractEventLoop], object] | None = None,
    shutdown_callback: ShutdownCallback = None,
    executor_workers: int | None = None,
    executor: Executor | None = None,
    use_uvloop: bool = False,
    stop_on_unhandled_errors: bool = False,
    timeout_task_shutdown: float | None = 60.0,
    force_exit_on_second_signal: bool = False,
    force_exit_after: float | None = None,
) -> ShutdownReport:
    """Run the loop until a signal or ``loop.stop()``, then shut down gracefully.

    The loop keeps running after ``coro`` returns. A signal calls ``shutdown_handler(loop)``
    (default: stop the loop). The same signal again within a moment is the same request (a
    wrapper or a process group delivers it twice); later signals are ignored, or with
    ``force_exit_on_second_signal`` the second one logs the unfinished tasks and exits the
    process at once with status 128 + signal number, even while the loop is blocked (by a
    call that holds the GIL: as soon as it returns). With ``force_exit_after`` (seconds, our
    extension too), a shutdown still under way that long after it was asked for (a signal
    heard, the loop stopped) logs where the main thread is stuck and exits the process with
    status 75 (EX_TEMPFAIL): a stop blocked by a call that never yields is bounded too.
    Once the loop stops:

    1. ``shutdown_callback`` runs, while every task is still alive (it has no time limit:
       bound it yourself, or rely on the second signal);
    2. every task not protected by ``shutdown_waits_for()`` is cancelled;
    3. all tasks get up to ``timeout_task_shutdown`` seconds (None: no limit); the stacks of
       those still running then are logged, and the executor gets what is left of it;
    4. async generators still suspended are closed, within that budget; a loop that ``run()``
       created is closed too (one handed in is the caller's to close);
    5. the signal handlers that were there before are restored, where ours are still in place;
    6. an unhandled error that stopped the loop (``stop_on_unhandled_errors``), or a
       SystemExit or KeyboardInterrupt raised by code, is re-raised.

    Every argument is checked before anything starts. Returns a ``ShutdownReport``; aiorun
    returns None, so existing callers are unaffected.
    """
    platform = _this_platform()
    try:
        _check_arguments(
            coro, loop, shutdown_handler, shutdown_callback, executor_workers, executor,
            use_uvloop, stop_on_unhandled_errors, timeout_task_shutdown, force_exit_after,
        )  # fmt: skip
    except BaseException:
        for unused in (coro, shutdown_callback):  # no "never awaited" warning on top
            if asyncio.iscoroutine(unused):
                unused.close()
        raise
    budget = math.inf if timeout_task_shutdown is None else float(timeout_task_shutdown)
    owns_loop = loop is None
    if loop is None:
        loop = _new_loop(use_uvloop, platform)
        asyncio.set_event_loop(loop)
    handler_before = loop.get_exception_handler()
    factory_before = loop.get_task_factory()
    if executor is None:
        executor = ThreadPoolExecutor(max_workers=executor_workers, thread_name_prefix="aiorun")
    shutdown = _Lifecycle(loop, shutdown_handler, force_exit_on_second_signal, force_exit_after)
    hooks = _SignalHooks(platform, loop, shutdown.on_signal)
    shutdown.on_loop_start = hooks.resume
    unfinished: tuple[str, ...] = ()
    busy_threads: tuple[str, ...] = ()
    duration = 0.0
    try:
        loop.set_default_executor(executor)
        loop.set_task_factory(_protecting_task_factory(factory_before))
        if stop_on_unhandled_errors:
            loop.set_exception_handler(shutdown.stop_on_error)
        loop.call_soon(shutdown.on_loop_start)  # ahead of the first step of anything
        if coro is not None:
            shutdown.start_main(coro)
        hooks.install()

        shutdown.run_until_stopped()

        if shutdown_callback is not None:
            shutdown.run_callback(shutdown_callback)
        deadline = loop.time() + budget
        with _garbage_collector_spaced(loop):
            stuck = shutdown.drive(_cancel_and_wait(budget, deadline))
        shutdown.abandoned.update(id(task) for task in stuck)
        unfinished = tuple(task.get_name() for task in stuck)
        del stuck
        busy_threads = shutdown.drive(_stop_executor(executor, deadline))
        shutdown.drive(_close_async_generators(deadline))
        duration = time.monotonic() - shutdown.requested_at
        shutdown.drive(shutdown.hear_duplicates())
    finally:
        hooks.restore()
        shutdown.hear_late_signals()
        shutdown.cancel_deadline()
        loop.set_task_factory(factory_before)
        if owns_loop:
            _forget_protected_work(loop)
            loop.close()
            asyncio.set_event_loop(None)
        else:
            loop.set_exception_handler(handler_before)

    report = ShutdownReport(
        signal=shutdown.signal,
        unfinished=unfinished,
        duration=duration,
        busy_threads=busy_threads,
    )
    logger.info(
        "shutdown: complete in %.3fs",
        report.duration,
        extra={"phase": "complete", "duration": round(report.duration, 6)},
    )
    if shutdown.pending is not None:
        raise shutdown.pending
    return report


# --- Before the loop runs -------------------------------------------------------------------


def _check_arguments(
    coro: object,
    loop: object,
    shutdown_handler: object,
    shutdown_callback: object,
    executor_workers: object,
    executor: object,
    use_uvloop: bool,
    stop_on_unhandled_errors: bool,
    timeout_task_shutdown: object,
    force_exit_after: object = None,
) -> None:
    """Refuse what cannot work, before anything starts: not at the shutdown, half-way."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "run() cannot be called from a running event loop: await the coroutine instead"
        )
    if coro is not None and not inspect.isawaitable(coro):
        raise TypeError(f"run(): coro must be a coroutine or awaitable, not {_kind(coro)}")
    if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"run(): loop must be an asyncio event loop, not {_kind(loop)}")
    if loop is not None and (loop.is_running() or loop.is_closed()):
        state = "running" if loop.is_running() else "closed"
        raise RuntimeError(f"run(): the loop passed with loop= is already {state}")
    if shutdown_handler is not None and not callable(shutdown_handler):
        raise TypeError(f"run(): shutdown_handler must be callable, not {_kind(shutdown_handler)}")
    if not (
        shutdown_callback is None
        or callable(shutdown_callback)
        or inspect.isawaitable(shutdown_callback)
    ):
        raise TypeError(
            "run(): shutdown_callback must be a function, an async function or a coroutine, "
            f"not {_kind(shutdown_callback)}"
        )
    if executor_workers is not None and (
        isinstance(executor_workers, bool)
        or not isinstance(executor_workers, int)
        or executor_workers < 1
    ):
        raise ValueError(f"run(): executor_workers must be an int >= 1, not {executor_workers!r}")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(
            f"run(): executor must be a concurrent.futures.Executor, not {_kind(executor)}"
        )
    if timeout_task_shutdown is not None and (
        isinstance(timeout_task_shutdown, bool)
        or not isinstance(timeout_task_shutdown, int | float)
    ):
        raise TypeError(
            "run(): timeout_task_shutdown must be a number of seconds or None (no limit), "
            f"not {_kind(timeout_task_shutdown)}"
        )
    if timeout_task_shutdown is not None and not timeout_task_shutdown >= 0:
        raise ValueError(
            "run(): timeout_task_shutdown must be >= 0 seconds or None (no limit), "
            f"not {timeout_task_shutdown!r}"
        )
    if force_exit_after is not None and (
        isinstance(force_exit_after, bool) or not isinstance(force_exit_after, int | float)
    ):
        raise TypeError(
            "run(): force_exit_after must be a number of seconds or None (no limit), "
            f"not {_kind(force_exit_after)}"
        )
    if force_exit_after is not None and not force_exit_after > 0:
        raise ValueError(
            "run(): force_exit_after must be > 0 seconds or None (no limit), "
            f"not {force_exit_after!r}"
        )
    if loop is not None and use_uvloop:
        raise ValueError(
            "run(): loop= and use_uvloop=True are mutually exclusive "
            "(to use uvloop with your own loop, create it with uvloop.new_event_loop())"
        )
    if loop is not None and stop_on_unhandled_errors and loop.get_exception_handler():
        raise ValueError(
            "run(stop_on_unhandled_errors=True) cannot be used with a loop that already has "
            "a custom exception handler: that handler would decide what an error does"
        )


def _kind(value: object) -> str:
    return type(value).__name__


def _new_loop(use_uvloop: bool, platform: _Platform) -> asyncio.AbstractEventLoop:
    """Create the loop directly, without the event-loop-policy API Python 3.14 deprecates."""
    if not use_uvloop:
        return asyncio.new_event_loop()
    name = "winloop" if platform.windows else "uvloop"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        hint = " (uvloop does not support Windows; winloop is its port)" if platform.windows else ""
        raise ImportError(f"run(use_uvloop=True) needs {name}: pip install {name}{hint}") from exc
    return cast(asyncio.AbstractEventLoop, module.new_event_loop())


def _protecting_task_factory(previous: Any) -> Callable[..., asyncio.Future[Any]]:
    """Wrap the loop's task factory: a task created inside protected work is protected.

    A task factory sees every ``create_task()``, in the creator's context or the one it
    passes, on every Python version (``Task.get_context()`` only exists from 3.12).
    """

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        if previous is None:
            task: asyncio.Future[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        else:
            task = previous(loop, coro, **kwargs)
        context = kwargs.get("context")
        if context.get(_PROTECTING) if context is not None else _PROTECTING.get():
            _protect(task)
        return task

    return factory


# --- The shutdown's state: how it is asked for, and how its phases run ----------------------


class _State(enum.Enum):
    """Where one run() is. It only moves forward: RUNNING -> STOPPING -> EXITING."""

    RUNNING = "running"
    """No shutdown asked for yet: the loop runs the service."""
    STOPPING = "stopping"
    """A signal, an unhandled error or ``loop.stop()`` asked; the phases run."""
    EXITING = "exiting"
    """A second signal with force exit: the process is leaving without waiting."""


class _Lifecycle:
    """One run(), from its start to the end of its shutdown: its state, who asked it to stop
    and when, the error to re-raise.

    Read in order: starting the caller's coroutine; the requests to stop (a signal, a
    duplicate or a second signal, an unhandled error, ``loop.stop()``); then the tools the
    phases run with.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Callable[[asyncio.AbstractEventLoop], object] | None,
        force_exit: bool,
        force_exit_after: float | None = None,
    ) -> None:
        self.loop = loop
        self.handler = handler
        self.force_exit = force_exit
        self.force_exit_after = force_exit_after
        self._deadline: threading.Event | None = None
        """Set when run() ends, which ends the wait of ``force_exit_after``; None until the
        shutdown is first asked for and its clock started."""
        self.state = _State.RUNNING
        self.first_heard: tuple[int, float] | None = None
        """The first signal and when it was heard (time.monotonic())."""
        self.requested_at = 0.0
        self.signal: int | None = None
        self.pending: BaseException | None = None
        self.main: asyncio.Future[object] | None = None
        self.phase: asyncio.Future[Any] | None = None
        self.abandoned: set[int] = set()
        self.on_loop_start: Callable[[], None] = _nothing
        """Called first each time the loop starts running (the signal hooks take their
        wake-up fd back from a loop that installs its own): run() schedules it before the
        first run, ``drive()`` before each of its own."""
        self._inbox: collections.deque[functools.partial[object]] = collections.deque()
        """What the signals heard ask of the main thread, in order: run by the loop, or by
        ``hear_late_signals()`` once the loop has run for the last time."""

    def start_main(self, coro: Awaitable[object]) -> None:
        """Start the caller's coroutine; its failure is reported at once, not when collected."""
        if asyncio.iscoroutine(coro):
            self.main = self.loop.create_task(coro, name="main")
        else:
            self.main = asyncio.ensure_future(coro, loop=self.loop)
        self.main.add_done_callback(self._main_done)

    def _main_done(self, main: asyncio.Future[object]) -> None:
        if main.cancelled():
            return
        error = main.exception()
        # KeyboardInterrupt and SystemExit already left run_forever(); report real errors only.
        if isinstance(error, Exception):
            self.loop.call_exception_handler(
                {"message": "the coroutine given to run() failed", "exception": error, "task": main}
            )

    def request(self, signum: int | None = None) -> bool:
        """Move from RUNNING to STOPPING; False if the shutdown had already begun."""
        if self.state is not _State.RUNNING:
            return False
        self.state = _State.STOPPING
        self.requested_at = time.monotonic()
        self.start_deadline(self.requested_at)
        self.signal = signum
        return True

    def on_signal(self, signum: int, now: float) -> None:
        """Count a shutdown signal that arrived at ``now``, once, under the signal hooks'
        lock: from their listening thread or their Python-level handler. Only record, pass
        the rest to the main thread, or start the force exit: a blocked loop cannot delay it.
        """
        if self.state is _State.EXITING:
            os._exit(128 + signum)  # another signal while the second one is being reported
        if self.first_heard is None:
            self.first_heard = (signum, now)
            self.start_deadline(now)  # here: a blocked loop may not hear it for a long time
            self._call_in_loop(self._first_signal, signum)
            return
        first, heard_at = self.first_heard
        if signum == first and now - heard_at < _DUPLICATE_WINDOW:
            self._call_in_loop(self._duplicate, signum, now - heard_at)
        elif self.force_exit:
            self.state = _State.EXITING
            # Not here: a handler that logs can re-enter a stream write it interrupted, and
            # the listening thread must stay free to hear a third signal.
            try:
                _thread.start_new_thread(self._exit_now, (signum,))
            except RuntimeError:  # no thread to be had (a process limit): exit unreported
                os._exit(128 + signum)
        else:
            self._call_in_loop(
                logger.info,
                "shutdown: %s received again; ignored, already shutting down",
                _signal_name(signum),
                extra={"phase": "signal", "signal": _signal_name(signum)},
            )

    def _first_signal(self, signum: int) -> None:
        name = _signal_name(signum)
        if not self.request(signum):
            logger.info(
                "shutdown: %s received; already shutting down",
                name,
                extra={"phase": "signal", "signal": name},
            )
            return
        logger.info("shutdown: %s received", name, extra={"phase": "signal", "signal": name})
        if self.handler is None:
            self.loop.stop()
            return
        try:
            self.handler(self.loop)
        except Exception:
            logger.exception(
                "shutdown: shutdown_handler failed; stopping the loop instead",
                extra={"phase": "signal", "signal": name},
            )
            self.loop.stop()

    def _duplicate(self, signum: int, after: float) -> None:
        name = _signal_name(signum)
        logger.info(
            "shutdown: %s received again after %.0f ms; the same request",
            name,
            after * 1000,
            extra={"phase": "signal", "signal": name, "duplicate": True},
        )

    async def hear_duplicates(self) -> None:
        """Keep hearing signals for a moment after the first, if the shutdown was faster.

        Restoring the default handler before a duplicate arrives would let it kill the
        process that had just stopped cleanly.
        """
        if self.first_heard is not None and self.state is _State.STOPPING:
            left = self.first_heard[1] + _DUPLICATE_TAIL - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)

    def _call_in_loop(self, callback: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        self._inbox.append(functools.partial(callback, *args, **kwargs))
        with contextlib.suppress(RuntimeError):  # the loop is closed: hear_late_signals() will
            self.loop.call_soon_threadsafe(self._empty_inbox)

    def _empty_inbox(self) -> None:
        while self._inbox:
            self._inbox.popleft()()

    def hear_late_signals(self) -> None:
        """After the handlers are back: act on signals heard after the loop last ran."""
        self._empty_inbox()

    def start_deadline(self, asked_at: float) -> None:
        """With ``force_exit_after``: start the shutdown's clock from its first request (a
        signal, heard by any thread, or the loop stopping in the main thread).

        No lock and no ``threading`` call: this may run in a signal handler that interrupted
        the main thread anywhere, even inside ``threading``. Two requests racing may start
        two clocks for the same moment; the first to run out exits, run()'s end stops both.
        """
        if self.force_exit_after is None or self._deadline is not None:
            return
        self._deadline = ended = threading.Event()
        left = max(asked_at + self.force_exit_after - time.monotonic(), 0.0)
        try:
            _thread.start_new_thread(self._wait_for_deadline, (ended, left))
        except RuntimeError as exc:  # no thread to be had (a process limit)
            _warn_once("shutdown: no thread for force_exit_after (%s): not bounded", exc)

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.set()

    def _wait_for_deadline(self, ended: threading.Event, left: float) -> None:
        """In a thread of its own: if run() has not ended in time, say where the main thread
        is stuck, then leave."""
        if ended.wait(left) or self.state is _State.EXITING:
            return  # run() ended, or a second signal's exit is under way
        self.state = _State.EXITING
        frame = sys._current_frames().get(threading.main_thread().ident or 0)
        where = "".join(traceback.format_stack(frame)) if frame is not None else "(unknown)\n"
        _exit_even_if_blocked(_DEADLINE_STATUS)
        asked = "the stop was asked for"
        if self.first_heard is not None:
            asked = f"{_signal_name(self.first_heard[0])} received"
        logger.warning(
            "shutdown: %s %.1fs ago and still not done: exiting now with status %d;"
            " the main thread is at:\n%s",
            asked,
            self.force_exit_after,
            _DEADLINE_STATUS,
            where.rstrip("\n"),
            extra={"phase": "force-exit", "status": _DEADLINE_STATUS},
        )
        _flush_and_exit(_DEADLINE_STATUS)

    def _exit_now(self, signum: int) -> None:
        """The second signal: say what is still running, then leave without waiting.

        Runs in a thread of its own. A backstop timer exits anyway if a log handler blocks, for
        instance on a stderr pipe that nobody reads.
        """
        status = 128 + signum
        _exit_even_if_blocked(status)
        running = [task for task in asyncio.all_tasks(self.loop) if task is not self.phase]
        name = _signal_name(signum)
        logger.warning(
            "shutdown: second %s received; exiting now with status %d; %d task(s) still running%s",
            name,
            status,
            len(running),
            _describe_tasks(running),
            extra={"phase": "force-exit", "signal": name, "status": status, "tasks": len(running)},
        )
        _flush_and_exit(status)

    def stop_on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The stop_on_unhandled_errors handler: the first call stops the loop.

        Every call counts, with or without an exception; an exception is kept to re-raise.
        Once the shutdown has begun it only logs: the cancellations the shutdown causes must
        not stop the loop again halfway through the shutdown.
        """
        if not self.request():
            loop.default_exception_handler(context)
            return
        error = context.get("exception")
        if isinstance(error, BaseException):
            self.pending = error
        logger.error(
            "shutdown: unhandled error stops the loop: %s",
            context.get("message", "(no message)"),
            exc_info=error if isinstance(error, BaseException) else None,
            extra={"phase": "error", "error": repr(error) if error is not None else None},
        )
        loop.stop()

    def run_until_stopped(self) -> None:
        """Run the loop until something stops it; then silence what the shutdown causes."""
        try:
            self.loop.run_forever()
        except (SystemExit, KeyboardInterrupt) as exc:  # raised by code: ours are handled
            self.request()
            self._raised(exc)
        if self.request():
            logger.info("shutdown: loop stopped", extra={"phase": "signal"})
        self._quieten_exception_handler()

    def _raised(self, exc: BaseException) -> None:
        """SystemExit or KeyboardInterrupt out of the loop: re-raised after the shutdown.

        A KeyboardInterrupt here was raised by code, not by Ctrl-C (ours is a signal the
        runtime handles): an error, logged with its traceback. A SystemExit is a request.
        """
        if exc is self.pending:
            return  # stop_on_error has logged it, traceback and all (uvloop reports it there)
        by_code = isinstance(exc, KeyboardInterrupt)
        logger.log(
            logging.ERROR if by_code else logging.INFO,
            "shutdown: %s raised; re-raised after the shutdown",
            type(exc).__name__,
            exc_info=exc if by_code else None,
            extra={"phase": "signal", "error": repr(exc)},
        )
        self.pending = self.pending or exc

    def _quieten_exception_handler(self) -> None:
        """Drop the CancelledError reports the shutdown itself causes; pass on the rest.

        On Python 3.11 and 3.12.0-3.12.x every cancelled ``asyncio.start_server`` handler
        task makes asyncio report "Exception in callback StreamReaderProtocol..." with a
        CancelledError. Those carry our cancel message; real errors go on as before.
        """
        previous = self.loop.get_exception_handler()

        def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            error = context.get("exception")
            if isinstance(error, asyncio.CancelledError) and error.args[:1] == (_CANCEL_MESSAGE,):
                return
            if id(context.get("task")) in self.abandoned and str(
                context.get("message", "")
            ).startswith("Task was destroyed"):
                return  # a task already named in the "still running" warning
            if previous is None:
                loop.default_exception_handler(context)
            else:
                previous(loop, context)

        self.loop.set_exception_handler(quiet)

    def drive(self, awaitable: Awaitable[Any], *, ours: bool = True) -> Any:
        """Run the loop until ``awaitable`` is done, even if something calls loop.stop().

        ``run_until_complete()`` would give up with "Event loop stopped before Future
        completed" when a task's cancellation handler stops the loop. A phase of ours is
        left out of the force exit's list of unfinished tasks; the caller's callback is not.
        """
        loop = self.loop
        loop.call_soon(self.on_loop_start)  # ahead of the phase's first step
        phase = asyncio.ensure_future(awaitable, loop=loop)
        self.phase = phase if ours else None
        phase.add_done_callback(lambda _: loop.stop())
        while True:
            try:
                loop.run_forever()
            except (SystemExit, KeyboardInterrupt) as exc:  # a task's: finish the phases first
                if not (phase.done() and not phase.cancelled() and phase.exception() is exc):
                    self._raised(exc)
            if phase.done():
                return phase.result()
            loop.call_soon(self.on_loop_start)

    def run_callback(self, callback: ShutdownCallback) -> None:
        """Run shutdown_callback with every task alive; its error is re-raised unless one is."""
        logger.info("shutdown: running shutdown callback", extra={"phase": "callback"})
        try:
            if inspect.isawaitable(callback):
                self.drive(callback, ours=False)
            elif callable(callback):
                result = callback(self.loop)
                if inspect.isawaitable(result):
                    self.drive(result, ours=False)
        except BaseException as exc:
            if self.pending is None:
                self.pending = exc
                if isinstance(exc, Exception):  # logged once here, like errors that stop the loop
                    logger.error(
                        "shutdown: shutdown callback failed",
                        exc_info=exc,
                        extra={"phase": "callback", "error": repr(exc)},
                    )
            else:
                logger.exception(
                    "shutdown: shutdown callback failed; the earlier error is re-raised instead",
                    extra={"phase": "callback", "error": repr(exc)},
                )


# --- While it runs: the platform seam and the signal handlers -------------------------------


@dataclass(frozen=True)
class _Platform:
    """Which signals mean "shut down" and how to hear them: the one seam tests drive."""

    windows: bool
    signals: tuple[int, ...]
    taken_if_default: tuple[int, ...] = ()
    """Signals taken only while their handler is the default: a SIGHUP handler of the user's
    (a reload) stays theirs, and under ``nohup`` SIGHUP stays ignored."""
    proactor_types: tuple[type, ...] = ()
    """Loop types whose wake-up fd lets a signal wake them (Windows' ProactorEventLoop)."""
    wakeup_interval: float = 0.1


def _this_platform() -> _Platform:
    """The platform run() is on. Tests replace this function, never ``sys.platform``."""
    if sys.platform == "win32":
        return _Platform(
            windows=True,
            signals=(signal.SIGINT, signal.SIGBREAK),
            proactor_types=(asyncio.ProactorEventLoop,),
        )
    # SIGHUP too: a closed terminal or SSH session should stop the service gracefully.
    return _Platform(
        windows=False,
        signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
        taken_if_default=(signal.SIGHUP,),
    )


class _SignalHooks:
    """Hears the shutdown signals, wakes the loop, and puts back what was there before.

    Our Python-level handler is the reliable path: CPython always runs it, in the main
    thread, sooner or later, and it counts every signal nobody counted before it. On POSIX
    a thread of ours also reads the pipe the C-level handler writes each signal's number to
    on arrival (``signal.set_wakeup_fd``), to time it then and to force the exit while the
    main thread waits in a call that releases the GIL. Both read the pipe under one lock;
    a byte it showed is matched by our handler's next call for that signal, so nothing
    counts twice, and nothing is lost when the pipe is full or another fd is in place.

    A signal is ours while its handler is ours: one the user installs meanwhile
    (``signal.signal``, ``loop.add_signal_handler``) takes it over, and only handlers still
    ours are put back. Other signals go on to the wake-up fd we displaced (asyncio's after
    ``add_signal_handler``, uvloop's whenever it runs) through a duplicate of that fd, whose
    number cannot come to mean another file. The listening thread stops for a fork and the
    loop restarts it; a forked child closes our fds and puts the previous handlers back.
    Windows has no thread: a Proactor loop is woken by its own wake-up fd, any other loop
    periodically. Off the main thread nothing is installed.
    """

    installed: _SignalHooks | None = None
    """The hooks in place in this process, for the fork hooks."""

    def __init__(
        self,
        platform: _Platform,
        loop: asyncio.AbstractEventLoop,
        on_signal: Callable[[int, float], None],
    ) -> None:
        self._platform = platform
        self._loop = loop
        self._on_signal = on_signal
        self._handler = self._direct
        """One bound method, so ``signal.getsignal(sig) is self._handler`` says "still ours"."""
        self._previous: dict[int, Any] = {}
        self._lock = threading.RLock()
        """Held while the pipe is read and what it showed is counted."""
        self._pipe: tuple[int, int] | None = None
        """Our wake-up pipe (read end, write end), on POSIX."""
        self._unmatched: dict[int, int] = {}
        """Per signal, bytes the pipe showed (and counted) that no handler call matched yet."""
        self._fd_before: int | None = None
        """The wake-up fd before we first took it; None while we never took it."""
        self._forward = -1
        """A duplicate of the wake-up fd we displaced, or -1."""
        self._listener: threading.Thread | None = None
        """The listening thread; None while stopped (for a fork, or for good)."""
        self._wakeup: asyncio.TimerHandle | None = None

    @property
    def waking_up(self) -> bool:
        """True while the periodic wake-up is scheduled."""
        return self._wakeup is not None

    @property
    def listening(self) -> bool:
        """True while the listening thread hears the signals."""
        return self._listener is not None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            _warn_once(
                "signals: run() is not in the main thread, so it installs no signal handlers; "
                "stop it with loop.stop() or shutdown_handler"
            )
            return
        if not self._platform.windows and sys.platform != "win32":
            reader, writer = os.pipe()
            os.set_blocking(reader, False)
            os.set_blocking(writer, False)  # the C-level handler must never block
            self._pipe = (reader, writer)
        for sig in self._platform.signals:
            previous = signal.getsignal(sig)
            if sig in self._platform.taken_if_default and previous != signal.SIG_DFL:
                continue  # the user's (a reload on SIGHUP), or ignored under nohup
            self._previous[sig] = previous
            signal.signal(sig, self._handler)
        _SignalHooks.installed = self
        if self._pipe is not None:
            self.resume()
        elif not self._signals_wake_loop():
            self._tick()

    def _direct(self, signum: int, frame: FrameType | None) -> None:
        with self._lock:
            self._drain(wake=False)
            if self._unmatched.get(signum):
                self._unmatched[signum] = 0  # the pipe showed it: counted already
            else:
                self._on_signal(signum, time.monotonic())

    def _is_ours(self, signum: int) -> bool:
        return signum in self._previous and signal.getsignal(signum) is self._handler

    def _drain(self, *, wake: bool, ours: Callable[[int], bool] | None = None) -> None:
        """Read every byte in the pipe: count our signals, pass the others on. Under the lock."""
        if self._pipe is None:
            return
        data = b""
        with contextlib.suppress(OSError):  # empty (BlockingIOError), or closed
            while chunk := os.read(self._pipe[0], 4096):
                data += chunk
        now = time.monotonic()
        others = bytearray()
        for signum in data:
            if (ours or self._is_ours)(signum):
                self._unmatched[signum] = self._unmatched.get(signum, 0) + 1
                self._on_signal(signum, now)
            elif signum:  # 0 only wakes the listening thread
                others.append(signum)
        if others and self._forward != -1:
            with contextlib.suppress(OSError):
                os.write(self._forward, others)
        if others and wake:  # their Python-level handlers run in the main thread: wake it
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                self._loop.call_soon_threadsafe(_nothing)

    def _listen(self, reader: int) -> None:
        """The listening thread: wait for the pipe, read it, until it is not the listener."""
        if sys.platform == "win32":  # for the type checker: there is no pipe on Windows
            return
        poller = select.poll()
        poller.register(reader, select.POLLIN)
        me = threading.current_thread()
        while True:
            poller.poll()
            with self._lock:
                if self._listener is not me:
                    return
                self._drain(wake=True)

    def resume(self) -> None:
        """In the main thread, at install and as the loop starts: listen, and hold the
        wake-up fd while a thread listens (uvloop took it when it started)."""
        with self._lock:
            if self._pipe is None:  # not POSIX, or restore() or a fork closed it
                return
            if self._listener is None:
                listener = threading.Thread(
                    target=self._listen, args=(self._pipe[0],), name="aiorun-signals", daemon=True
                )
                self._listener = listener
                try:
                    listener.start()
                except RuntimeError as exc:  # no thread to be had (a process limit)
                    self._listener = None
                    _warn_once(
                        "signals: no listening thread (%s): signals are still heard, but a "
                        "second one cannot force the exit while the loop is stuck",
                        exc,
                    )
            writer = self._pipe[1]
            if self._listener is None:  # nobody reads our pipe: let the loop's fd wake it
                current = signal.set_wakeup_fd(-1)
                signal.set_wakeup_fd(self._forward if current == writer else current)
                return
            displaced = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
            if self._fd_before is None:
                self._fd_before = displaced
            if displaced not in (writer, self._forward, -1):
                self._close_forward()
                with contextlib.suppress(OSError):  # already closed: nothing to forward to
                    self._forward = os.dup(displaced)

    def _close_forward(self) -> None:
        if self._forward != -1:
            with contextlib.suppress(OSError):
                os.close(self._forward)
            self._forward = -1

    def _stop_listening(self) -> threading.Thread | None:
        """Make the listening thread end, and wait for it (bounded); returns it."""
        with self._lock:
            listener, self._listener = self._listener, None
            if listener is None or self._pipe is None:
                return None
            with contextlib.suppress(OSError):  # full: then it is awake anyway
                os.write(self._pipe[1], b"\0")
        listener.join(_JOIN_LIMIT)
        return listener

    def _signals_wake_loop(self) -> bool:
        """True for a Proactor loop whose wake-up fd is in place (set when it was created)."""
        if not isinstance(self._loop, self._platform.proactor_types):
            return False
        fd = signal.set_wakeup_fd(-1)  # there is no read-only query: peek, then put it back
        signal.set_wakeup_fd(fd)
        return fd != -1

    def _tick(self) -> None:
        self._wakeup = self._loop.call_later(self._platform.wakeup_interval, self._tick)

    def restore(self) -> None:
        """Put back the handlers and the wake-up fd that are still ours; then count what
        arrived until then, so no signal falls between us and the handler before us."""
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        with self._lock:
            taken = self._put_back()
        listener = self._stop_listening()
        with self._lock:
            self._drain(wake=False, ours=taken.__contains__)
            self._close(keep_pipe=listener is not None and listener.is_alive())
        if _SignalHooks.installed is self:
            _SignalHooks.installed = None

    def _put_back(self) -> set[int]:
        """Put back the handlers that are still ours, then the wake-up fd if it is still
        ours (in this order: a signal in between is still ours, or the default's). Returns
        the signals that were still ours."""
        taken = {sig for sig in self._previous if self._is_ours(sig)}
        for sig in taken:
            previous = self._previous[sig]
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        if self._pipe is not None and self._fd_before is not None:
            current = signal.set_wakeup_fd(self._fd_before)
            if current not in (self._pipe[1], self._forward):
                signal.set_wakeup_fd(current)  # someone else's since: leave it theirs
        return taken

    def _close(self, *, keep_pipe: bool = False) -> None:
        """Close our fds; the pipe is kept if a listening thread that never ended may read it."""
        self._close_forward()
        if self._pipe is not None and not keep_pipe:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pipe = None

    @staticmethod
    def _before_fork() -> None:
        """Stop the listening thread, so the process forks with no thread of ours."""
        hooks = _SignalHooks.installed
        listener = None if hooks is None else hooks._stop_listening()
        # join() returns before the OS thread is gone, and Python 3.12 counts OS threads
        # (in /proc on Linux) when it decides to warn: wait the few microseconds it takes.
        task = f"/proc/self/task/{getattr(listener, 'native_id', None)}"
        deadline = time.monotonic() + _JOIN_LIMIT
        while listener is not None and os.path.exists(task) and time.monotonic() < deadline:
            time.sleep(0.0001)

    @staticmethod
    def _after_fork_in_parent() -> None:
        """Listen again, from the loop: started here, the thread would count as one the
        process had when it forked (the 3.12+ warning counts threads after this hook)."""
        hooks = _SignalHooks.installed
        if hooks is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: restore() is near
                hooks._loop.call_soon_threadsafe(hooks.resume)

    @staticmethod
    def _after_fork_in_child() -> None:
        """In a forked child: close our fds, put the previous handlers back (no lock: the
        thread that held it may not exist here)."""
        hooks, _SignalHooks.installed = _SignalHooks.installed, None
        if hooks is not None:
            with contextlib.suppress(Exception):
                hooks._put_back()
            hooks._close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_SignalHooks._before_fork,
        after_in_parent=_SignalHooks._after_fork_in_parent,
        after_in_child=_SignalHooks._after_fork_in_child,
    )

_JOIN_LIMIT = 1.0
"""Seconds to wait for the listening thread to end: it only has to wake and return."""

_warned: set[str] = set()
"""Warnings already logged in this process: each is worth one line, not one per run()."""


def _warn_once(message: str, *args: object) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message, *args)


def _exit_even_if_blocked(status: int) -> None:
    """Exit with ``status`` in a moment whatever happens: a force exit logs first, and a log
    handler may block (on a stderr pipe that nobody reads, say)."""
    backstop = threading.Timer(_EXIT_BACKSTOP, os._exit, (status,))
    backstop.daemon = True
    backstop.start()


def _flush_and_exit(status: int) -> None:
    logging.shutdown()  # flushes every handler: os._exit() below skips atexit
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(status)


def _nothing() -> None:
    """A callback that only wakes the loop."""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# --- After it stops: the shutdown phases ----------------------------------------------------


@contextlib.contextmanager
def _garbage_collector_spaced(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Collect cyclic garbage less often while the cancelled tasks end, for at most
    ``_GC_PAUSE`` seconds.

    Cancelling thousands of tasks makes thousands of short-lived reference cycles
    (exceptions, tracebacks, frames), and the collector's default threshold runs hundreds
    of collections in the middle of it, some over the whole heap. A higher generation-0
    threshold runs a few instead. It is not a pause: protected work or a slow task that
    makes cyclic garbage meanwhile still gets it collected every ``_GC_THRESHOLD``
    allocations, so memory stays bounded; and after the time limit the usual thresholds
    are back even if the tasks have not ended.
    """
    before = gc.get_threshold()
    if not gc.isenabled() or before[0] == 0:
        yield
        return
    spaced = (max(before[0], _GC_THRESHOLD), *before[1:])
    gc.set_threshold(*spaced)

    def put_back() -> None:
        if gc.get_threshold() == spaced:  # else the user's own setting since: keep it
            gc.set_threshold(*before)

    restore = loop.call_later(_GC_PAUSE, put_back)
    try:
        yield
    finally:
        restore.cancel()
        put_back()


def _seconds_left(loop: asyncio.AbstractEventLoop, deadline: float) -> float | None:
    """What is left of the budget, or None for no limit (``timeout_task_shutdown=None``)."""
    return None if deadline == math.inf else deadline - loop.time()


async def _cancel_and_wait(budget: float, deadline: float) -> list[asyncio.Task[Any]]:
    """Cancel every unprotected task in one pass and wait for all tasks until the deadline.

    Tasks started meanwhile (by a ``finally:`` block, say) are cancelled in the next pass.
    Returns the tasks still running when the deadline passed, after logging their stacks.
    """
    loop = asyncio.get_running_loop()
    myself = asyncio.current_task()
    cancelled: set[asyncio.Task[Any]] = set()
    first_pass = True
    out_of_time = False
    while True:
        pending = asyncio.all_tasks(loop)
        pending.discard(cast("asyncio.Task[Any]", myself))
        if not pending:
            return []
        fresh = [task for task in pending if task not in _protected and task not in cancelled]
        for task in fresh:
            task.cancel(_CANCEL_MESSAGE)
        cancelled.update(fresh)
        if first_pass:
            logger.info(
                "shutdown: cancelling %d task(s); waiting for %d protected task(s)",
                len(fresh),
                len(pending) - len(fresh),
                extra={
                    "phase": "cancel",
                    "tasks": len(fresh),
                    "protected": len(pending) - len(fresh),
                },
            )
            first_pass = False
        if not out_of_time:
            # Most cancelled tasks end in their next step: let them take it, then wait
            # (with a done callback each) only for the few that did not.
            await asyncio.sleep(0)
        if not out_of_time:
            pending = {task for task in pending if not task.done()}
            remaining = _seconds_left(loop, deadline)
            if pending and (remaining is None or remaining > 0):
                _, pending = await asyncio.wait(pending, timeout=remaining)
            if not pending:
                out_of_time = loop.time() >= deadline
                cancelled.clear()  # all done: holding them would only slow the next pass
                continue
        stuck = sorted(pending, key=lambda task: task.get_name())
        logger.warning(
            "shutdown: %d task(s) still running after %.1fs%s",
            len(stuck),
            budget,
            _describe_tasks(stuck),
            extra={"phase": "timeout", "tasks": len(stuck), "budget": budget},
        )
        return stuck


async def _stop_executor(executor: Executor, deadline: float) -> tuple[str, ...]:
    """Cancel queued work and wait for the threads with what is left of the budget.

    Returns the names of the threads still busy then; the interpreter joins them at exit.
    """
    loop = asyncio.get_running_loop()
    try:
        executor.shutdown(wait=False, cancel_futures=True)
    except TypeError:  # an Executor written before cancel_futures existed
        executor.shutdown(wait=False)
    joined = loop.create_future()

    def join() -> None:
        executor.shutdown(wait=True)
        with contextlib.suppress(RuntimeError):  # run() gave up and closed the loop already
            loop.call_soon_threadsafe(_resolve, joined)

    try:
        threading.Thread(target=join, name="aiorun-executor-join", daemon=True).start()
    except RuntimeError:  # no thread to be had (a process limit): nothing to wait in
        if not getattr(executor, "_threads", ()):
            _resolve(joined)
    left = _seconds_left(loop, deadline)
    budget = None if left is None else max(left, _GRACE)
    await asyncio.wait({joined}, timeout=budget)
    if joined.done():
        logger.info("shutdown: executor stopped", extra={"phase": "executor"})
        return ()
    threads = [thread for thread in getattr(executor, "_threads", ()) if thread.is_alive()]
    logger.warning(
        "shutdown: executor still busy after %.1fs; %d thread(s) left running%s",
        budget,
        len(threads),
        _describe_threads(threads),
        extra={"phase": "executor", "threads": len(threads)},
    )
    return tuple(sorted(thread.name for thread in threads))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _close_async_generators(deadline: float) -> None:
    """Finalise async generators still suspended, as asyncio.run() does, within the budget."""
    loop = asyncio.get_running_loop()
    left = _seconds_left(loop, deadline)
    try:
        await asyncio.wait_for(
            loop.shutdown_asyncgens(), None if left is None else max(left, _GRACE)
        )
    except TimeoutError:
        logger.warning(
            "shutdown: async generators still closing; left behind", extra={"phase": "asyncgens"}
        )


# --- After it stops: what was left behind ---------------------------------------------------


def _forget_protected_work(loop: asyncio.AbstractEventLoop) -> None:
    """Release protected work of a loop run() closes: it can never finish now."""
    for work in [work for work in _protected if work.get_loop() is loop]:
        _protected.discard(work)


def _describe_tasks(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """Each task's name and stack, one block per task, for a log message."""
    ordered = list(tasks)
    blocks = []
    for task in ordered[:_STACKS_SHOWN]:
        buffer = io.StringIO()
        task.print_stack(file=buffer)
        blocks.append(f"\n  task {task.get_name()!r}:\n{buffer.getvalue().rstrip()}")
    if len(ordered) > _STACKS_SHOWN:
        blocks.append(f"\n  ... and {len(ordered) - _STACKS_SHOWN} more task(s)")
    return "".join(blocks)


def _describe_threads(threads: Iterable[threading.Thread]) -> str:
    """Each thread's name and current stack, for a log message."""
    frames = sys._current_frames()
    blocks = []
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)).rstrip() if frame else "  (no stack)"
        blocks.append(f"\n  thread {thread.name!r}:\n{stack}")
    return "".join(blocks)
