"""The runtime's API, in process: shutdown order, protected work, errors, executor, signals.

Every test drives ``run()`` to a real shutdown (``loop.stop()`` or ``signal.raise_signal``)
and checks what happened, in which order, and what was logged. Synchronisation uses events
and callbacks, never sleeps. Where a check runs inside the loop, ``stop_on_unhandled_errors``
makes a failing assert stop the loop and fail the test instead of hanging it. Real
subprocesses with real signals are in ``test_aiorun_signals.py``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
import socket
import sys
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from servicekit import aiorun
from servicekit.aiorun import ShutdownReport, run, shutdown_waits_for

HANG_GUARD = 30
"""Seconds after which a hung test dumps every stack and ends the run: a failure, not a wait."""

WINDOWS = sys.platform == "win32"
STOP = signal.SIGBREAK if WINDOWS else signal.SIGTERM
"""The platform's shutdown signal besides SIGINT: Ctrl-Break on Windows, else SIGTERM."""
POSIX_ONLY = pytest.mark.skipif(WINDOWS, reason="POSIX signal plumbing")
pytestmark = pytest.mark.usefixtures("signal_defaults")
"""The runtime runs in this process, and the tests check the handlers it leaves behind
against those of a process started from a terminal, even when the run was started under
``nohup`` or in the background."""


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_GUARD, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def runtime_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="servicekit.aiorun")
    return caplog


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    """What the runtime logged at ``level`` or above, in order."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "servicekit.aiorun" and record.levelno >= level
    ]


def stop_soon() -> None:
    asyncio.get_running_loop().stop()


KEPT: set[asyncio.Future[Any]] = set()
"""Tasks held for the test: one that only awaits a throwaway Event could be garbage-collected."""


@pytest.fixture(autouse=True)
def release_kept_tasks() -> Iterator[None]:
    yield
    KEPT.clear()


def keep(awaitable: Any, name: str | None = None) -> asyncio.Future[Any]:
    """Start ``awaitable`` as a task and hold it, as real code must hold its tasks."""
    if name is None:
        task = asyncio.ensure_future(awaitable)
    else:
        task = asyncio.get_running_loop().create_task(awaitable, name=name)
    KEPT.add(task)
    return task


# --- run() keeps the loop running, and stops -------------------------------------------------


def test_loop_keeps_running_after_the_coroutine_returns() -> None:
    events: list[str] = []

    async def later() -> None:
        await asyncio.sleep(0)
        events.append("later ran after main returned")
        stop_soon()

    async def main() -> None:
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, later())
        events.append("main returned")

    report = run(main())
    assert events == ["main returned", "later ran after main returned"]
    assert isinstance(report, ShutdownReport)
    assert report.signal is None
    assert report.unfinished == ()
    assert report.busy_threads == ()
    assert not report.timed_out
    assert 0 <= report.duration < HANG_GUARD


def test_run_without_a_coroutine_stops_on_a_signal(runtime_log: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(signal.raise_signal, STOP)
        report = run(loop=loop)
        assert not loop.is_closed(), "a loop the caller supplied is the caller's to close"
    finally:
        loop.close()
    assert report.signal == STOP
    assert messages(runtime_log, logging.INFO)[0] == f"shutdown: {STOP.name} received"


# --- The shutdown order -----------------------------------------------------------------------


class RecordingExecutor(ThreadPoolExecutor):
    def __init__(self, events: list[str]) -> None:
        super().__init__(max_workers=1)
        self.events = events

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if "executor shut down" not in self.events:
            self.events.append("executor shut down")
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


@pytest.mark.parametrize("kind", ["function", "async function", "coroutine object"])
def test_shutdown_runs_its_phases_in_order(
    kind: str, runtime_log: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []
    generators: list[AsyncIterator[int]] = []
    worker_state: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            worker_state.append("cancelled")
            events.append("task cancelled")
            raise

    async def numbers() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            events.append("async generator closed")

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        keep(worker())
        generator = numbers()
        generators.append(generator)
        await generator.__anext__()
        events.append("loop stopped")
        stop_soon()

    def callback(loop: asyncio.AbstractEventLoop) -> None:
        assert loop is loops[0]
        assert worker_state == [], "tasks must still be alive while the callback runs"
        events.append("callback ran")

    async def async_callback(loop: asyncio.AbstractEventLoop) -> None:
        await asyncio.sleep(0)
        callback(loop)

    async def callback_coroutine() -> None:
        await asyncio.sleep(0)
        callback(loops[0])

    shutdown_callback: Any = {
        "function": lambda: callback,
        "async function": lambda: async_callback,
        "coroutine object": callback_coroutine,
    }[kind]()
    run(main(), shutdown_callback=shutdown_callback, executor=RecordingExecutor(events))

    assert events == [
        "loop stopped",
        "callback ran",
        "task cancelled",
        "executor shut down",
        "async generator closed",
    ]
    assert loops[0].is_closed()
    phases = messages(runtime_log, logging.INFO)
    assert phases == [
        "shutdown: loop stopped",
        "shutdown: running shutdown callback",
        "shutdown: cancelling 1 task(s); waiting for 0 protected task(s)",
        "shutdown: executor stopped",
        phases[-1],
    ]
    assert phases[-1].startswith("shutdown: complete in ")


def test_shutdown_handler_replaces_stopping_the_loop() -> None:
    calls: list[asyncio.AbstractEventLoop] = []
    events: list[str] = []

    def handler(loop: asyncio.AbstractEventLoop) -> None:
        calls.append(loop)
        loop.call_soon(events.append, "handler let the loop run on")
        loop.call_soon(loop.call_soon, loop.stop)

    async def main() -> None:
        signal.raise_signal(STOP)
        await asyncio.Event().wait()

    report = run(main(), shutdown_handler=handler)
    assert len(calls) == 1
    assert events == ["handler let the loop run on"]
    assert report.signal == STOP


def test_repeated_signals_are_ignored_during_the_shutdown(
    runtime_log: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def handler(loop: asyncio.AbstractEventLoop) -> None:
        calls.append(1)
        loop.stop()

    async def main() -> None:
        signal.raise_signal(STOP)
        await asyncio.Event().wait()

    async def callback(loop: asyncio.AbstractEventLoop) -> None:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(STOP)
        for _ in range(5):
            await asyncio.sleep(0)

    report = run(main(), shutdown_handler=handler, shutdown_callback=callback)
    assert calls == [1]
    assert report.signal == STOP
    logged = messages(runtime_log, logging.INFO)
    assert "shutdown: SIGINT received again; ignored, already shutting down" in logged
    # the same signal again at once is a duplicate of the first (a wrapper sent it twice)
    assert any(
        line.startswith(f"shutdown: {STOP.name} received again after ")
        and line.endswith(" ms; the same request")
        for line in logged
    ), logged


def test_stuck_tasks_are_reported_with_their_stacks(runtime_log: pytest.LogCaptureFixture) -> None:
    async def stubborn() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                continue

    async def never_done() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        keep(shutdown_waits_for(never_done()))
        keep(stubborn(), name="stubborn")
        await asyncio.sleep(0)
        stop_soon()

    report = run(main(), timeout_task_shutdown=0.1)
    KEPT.clear()
    assert len(report.unfinished) == 2
    assert "stubborn" in report.unfinished
    assert report.timed_out
    warnings_logged = messages(runtime_log, logging.WARNING)
    assert len(warnings_logged) == 1
    warning = warnings_logged[0]
    assert warning.startswith("shutdown: 2 task(s) still running after 0.1s\n")
    assert "task 'stubborn':" in warning
    assert ", in stubborn" in warning
    assert ", in never_done" in warning
    gc.collect()  # the abandoned tasks die with their closed loop: already reported, no noise
    assert [r for r in runtime_log.records if r.levelno >= logging.ERROR] == []


def test_tasks_started_while_cancelling_are_cancelled_too() -> None:
    late: list[asyncio.Future[Any]] = []

    async def spawner() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # started by a cancellation handler, after the first pass
            late.append(keep(asyncio.Event().wait()))
            raise

    async def main() -> None:
        keep(spawner())
        await asyncio.sleep(0)
        stop_soon()

    report = run(main(), stop_on_unhandled_errors=True)
    assert len(late) == 1
    assert late[0].cancelled()
    assert report.unfinished == ()


def test_a_zero_budget_still_lets_cancelled_tasks_end() -> None:
    events: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            events.append("worker ended")

    async def main() -> None:
        keep(worker())
        await asyncio.sleep(0)
        stop_soon()

    report = run(main(), timeout_task_shutdown=0)
    assert events == ["worker ended"]
    assert report.unfinished == ()


def test_collections_are_spaced_while_tasks_end_and_back_after_the_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spaced while the cancelled tasks end, but protected work that runs on must get the
    usual collections back after ``_GC_PAUSE``."""
    monkeypatch.setattr(aiorun, "_GC_PAUSE", 0.01)
    usual = gc.get_threshold()
    thresholds: list[int] = []
    closing = asyncio.Event()

    async def protected() -> None:
        await closing.wait()
        thresholds.append(gc.get_threshold()[0])
        await asyncio.sleep(0.05)  # the spacing is the test: longer than the limit
        thresholds.append(gc.get_threshold()[0])

    async def main() -> None:
        keep(shutdown_waits_for(protected()))
        stop_soon()
        try:
            await asyncio.Event().wait()
        finally:
            closing.set()

    run(main())
    assert thresholds == [aiorun._GC_THRESHOLD, usual[0]]
    assert gc.get_threshold() == usual
    assert gc.isenabled()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_as_it_was_after_run(enabled: bool) -> None:
    thresholds: list[int] = []

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            thresholds.append(gc.get_threshold()[0])

    async def main() -> None:
        keep(worker())
        await asyncio.sleep(0)
        stop_soon()

    usual = gc.get_threshold()
    (gc.enable if enabled else gc.disable)()
    try:
        run(main())
        assert gc.isenabled() is enabled
        assert gc.get_threshold() == usual
    finally:
        gc.enable()
    # spaced while the cancelled tasks end; left alone when the caller turned it off
    assert thresholds == [aiorun._GC_THRESHOLD if enabled else usual[0]]


def test_every_shutdown_line_carries_structured_fields(
    runtime_log: pytest.LogCaptureFixture,
) -> None:
    """A JSON log formatter emits these ``extra=`` fields; the text stays as it was."""

    closing = asyncio.Event()

    async def protected() -> None:
        await closing.wait()

    async def main() -> None:
        for _ in range(4):
            keep(asyncio.sleep(3600))
        keep(shutdown_waits_for(protected()))
        signal.raise_signal(STOP)
        try:
            await asyncio.Event().wait()
        finally:
            closing.set()

    run(main(), shutdown_callback=lambda loop: None)
    fields = {
        record.getMessage().split(" ", 2)[1]: {
            key: getattr(record, key)
            for key in ("phase", "signal", "tasks", "protected", "duration")
            if hasattr(record, key)
        }
        for record in runtime_log.records
        if record.name == "servicekit.aiorun" and record.levelno >= logging.INFO
    }
    assert fields[STOP.name] == {"phase": "signal", "signal": STOP.name}
    assert fields["running"] == {"phase": "callback"}
    assert fields["cancelling"]["phase"] == "cancel"
    assert fields["cancelling"]["protected"] == 1
    assert fields["cancelling"]["tasks"] >= 5  # the sleepers, main, and the awaiting handle
    assert fields["executor"] == {"phase": "executor"}
    assert fields["complete"]["phase"] == "complete"
    assert 0 <= fields["complete"]["duration"] < HANG_GUARD


# --- shutdown_waits_for() ---------------------------------------------------------------------

USAGES: dict[str, Callable[[Any], Any]] = {
    "awaited": lambda call: asyncio.ensure_future(_await(call)),
    "create_task": lambda call: asyncio.get_running_loop().create_task(call),
    "ensure_future": lambda call: asyncio.ensure_future(call),
    "bare call": lambda call: None,
}


async def _await(call: Any) -> Any:
    return await call


@pytest.mark.parametrize("usage", list(USAGES))
def test_shutdown_waits_for_protected_work_in_every_usage(usage: str) -> None:
    events: list[str] = []
    release = asyncio.Event()

    async def protected() -> str:
        await release.wait()  # set only once the shutdown has cancelled the canary
        events.append("protected work done")
        return "result"

    async def canary() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("canary cancelled")
            release.set()
            raise

    async def main() -> None:
        keep(canary())
        caller = USAGES[usage](shutdown_waits_for(protected()))
        await asyncio.sleep(0)
        if caller is not None:
            assert not caller.done()
        stop_soon()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run(main(), stop_on_unhandled_errors=True, timeout_task_shutdown=HANG_GUARD / 2)
        gc.collect()
    assert events == ["canary cancelled", "protected work done"]
    assert report.unfinished == ()
    assert [str(w.message) for w in caught] == []


def test_shutdown_waits_for_returns_the_result_like_shield() -> None:
    results: list[object] = []

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def main() -> None:
        results.append(await shutdown_waits_for(answer()))
        results.append(await asyncio.get_running_loop().create_task(shutdown_waits_for(answer())))
        results.append(await asyncio.ensure_future(shutdown_waits_for(answer())))
        stop_soon()

    run(main(), stop_on_unhandled_errors=True)
    assert results == [42, 42, 42]


def test_cancelling_the_caller_leaves_the_protected_work_running() -> None:
    events: list[str] = []

    async def main() -> None:
        go_on = asyncio.Event()

        async def protected() -> None:
            await go_on.wait()
            events.append("protected work finished")
            stop_soon()

        async def caller() -> None:
            await shutdown_waits_for(protected())

        task = asyncio.ensure_future(caller())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append("caller cancelled")
        go_on.set()

    report = run(main(), stop_on_unhandled_errors=True)
    assert events == ["caller cancelled", "protected work finished"]
    assert report.unfinished == ()


def test_cancelling_the_protected_work_reaches_the_caller() -> None:
    outcome: list[str] = []

    async def main() -> None:
        work: list[asyncio.Task[Any]] = []
        started = asyncio.Event()

        async def protected() -> None:
            work.append(asyncio.current_task())  # type: ignore[arg-type]
            started.set()
            await asyncio.Event().wait()

        async def caller() -> None:
            try:
                await shutdown_waits_for(protected())
            except asyncio.CancelledError:
                outcome.append("caller got CancelledError")
                raise

        task = asyncio.ensure_future(caller())
        await started.wait()
        work[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stop_soon()

    run(main(), stop_on_unhandled_errors=True)
    assert outcome == ["caller got CancelledError"]


def test_protected_work_errors_reach_the_caller_or_the_exception_handler(
    runtime_log: pytest.LogCaptureFixture,
) -> None:
    outcome: list[str] = []

    async def fail(text: str) -> None:
        await asyncio.sleep(0)
        raise ValueError(text)

    async def main() -> None:
        try:
            await shutdown_waits_for(fail("awaited"))
        except ValueError as exc:
            outcome.append(str(exc))
        shutdown_waits_for(fail("nobody waits"))
        for _ in range(5):
            await asyncio.sleep(0)
        stop_soon()

    run(main())
    assert outcome == ["awaited"]
    errors = [r for r in runtime_log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "shutdown_waits_for() work failed and nobody received its error" in errors[0].message
    assert errors[0].exc_info is not None
    assert str(errors[0].exc_info[1]) == "nobody waits"


def test_protected_work_is_strongly_referenced_until_done() -> None:
    events: list[str] = []
    futures: list[weakref.ref[asyncio.Future[None]]] = []

    async def protected() -> None:
        # Awaits a future nothing else holds: only a strong reference keeps this task alive.
        future = asyncio.get_running_loop().create_future()
        futures.append(weakref.ref(future))
        await future
        events.append("protected work done")
        stop_soon()

    async def main() -> None:
        shutdown_waits_for(protected())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()
        future = futures[0]()
        assert future is not None, "the protected task was garbage-collected"
        future.set_result(None)

    run(main(), stop_on_unhandled_errors=True)
    assert events == ["protected work done"]


def test_shutdown_waits_for_needs_a_loop() -> None:
    async def nothing() -> None:
        pass

    coro = nothing()
    with pytest.raises(RuntimeError, match="running event loop"):
        shutdown_waits_for(coro)
    coro.close()


# --- Errors -----------------------------------------------------------------------------------


def test_unhandled_error_stops_the_loop_and_is_raised_after_the_full_shutdown(
    runtime_log: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []

    async def bystander() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("bystander cancelled")
            raise

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def main() -> None:
        keep(bystander())
        asyncio.ensure_future(failing())  # noqa: RUF006 (unheld on purpose: nobody awaits it)
        await asyncio.Event().wait()

    with pytest.raises(ValueError, match="boom"):
        run(
            main(),
            stop_on_unhandled_errors=True,
            shutdown_callback=lambda loop: events.append("callback"),
        )
    assert events == ["callback", "bystander cancelled"]
    logged = messages(runtime_log, logging.INFO)
    assert logged[0].startswith("shutdown: unhandled error stops the loop: ")
    assert logged[-1].startswith("shutdown: complete in ")


def test_an_error_in_the_main_coroutine_is_reported_at_once() -> None:
    contexts: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        contexts.append(context)
        loop.stop()

    async def main() -> None:
        raise ValueError("main failed")

    loop.set_exception_handler(handler)
    loop.call_later(HANG_GUARD / 3, loop.stop)  # only if the error never reaches the handler
    try:
        run(main(), loop=loop)
    finally:
        loop.close()
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["task"].get_name() == "main"
    assert loop.get_exception_handler() is handler, "the caller's handler is put back"


def test_an_error_in_the_main_coroutine_is_reraised_with_stop_on_unhandled_errors() -> None:
    async def main() -> None:
        await asyncio.sleep(0)
        raise KeyError("main failed")

    with pytest.raises(KeyError, match="main failed"):
        run(main(), stop_on_unhandled_errors=True)


def test_a_failing_shutdown_callback_is_raised(runtime_log: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stop_soon()

    def callback(loop: asyncio.AbstractEventLoop) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        run(main(), shutdown_callback=callback)
    assert messages(runtime_log, logging.INFO)[-1].startswith("shutdown: complete in ")
    logged = [r for r in runtime_log.records if r.name == "servicekit.aiorun" and r.exc_info]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == ["callback failed"]


def test_a_failing_callback_is_only_logged_when_an_error_is_pending(
    runtime_log: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        raise ValueError("first")

    async def callback(loop: asyncio.AbstractEventLoop) -> None:
        raise RuntimeError("second")

    with pytest.raises(ValueError, match="first"):
        run(main(), stop_on_unhandled_errors=True, shutdown_callback=callback)
    logged = [r for r in runtime_log.records if r.name == "servicekit.aiorun" and r.exc_info]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == ["first", "second"]
    assert "the earlier error is re-raised instead" in logged[1].getMessage()


def test_the_stop_on_error_handler_is_disarmed_once_the_shutdown_begins(
    runtime_log: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []

    def fail_in_a_callback() -> None:
        raise ValueError("reported during the shutdown")

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            asyncio.get_running_loop().call_soon(fail_in_a_callback)
            for _ in range(3):
                await asyncio.sleep(0)  # the error is reported while this task still runs
            events.append("worker finished its cleanup")
            raise

    async def main() -> None:
        keep(worker())
        await asyncio.sleep(0)
        stop_soon()

    report = run(main(), stop_on_unhandled_errors=True)
    assert events == ["worker finished its cleanup"]
    assert report.unfinished == ()
    errors = [r for r in runtime_log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert str(errors[0].exc_info[1]) == "reported during the shutdown"


def test_system_exit_from_a_task_is_raised_after_the_shutdown() -> None:
    events: list[str] = []

    async def main() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit) as raised:
        run(main(), shutdown_callback=lambda loop: events.append("callback"))
    assert raised.value.code == 3
    assert events == ["callback"]


# --- Arguments refused before anything starts ---------------------------------------------


def test_custom_exception_handler_with_stop_on_unhandled_errors_is_refused() -> None:
    loop = asyncio.new_event_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        pass

    loop.set_exception_handler(handler)
    before = signal.getsignal(STOP)
    try:
        with pytest.raises(ValueError, match="custom exception handler"):
            run(loop=loop, stop_on_unhandled_errors=True)
        assert loop.get_exception_handler() is handler
        assert signal.getsignal(STOP) is before
    finally:
        loop.close()


def test_loop_with_use_uvloop_is_refused() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="loop= and use_uvloop=True are mutually exclusive"):
            run(loop=loop, use_uvloop=True)
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1.0, ValueError), ("8", TypeError), (True, TypeError)]
)
def test_a_bad_force_exit_after_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="force_exit_after must be"):
        run(force_exit_after=value)  # type: ignore[arg-type]


def test_missing_uvloop_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    posix = aiorun._Platform(windows=False, signals=(signal.SIGINT,))
    monkeypatch.setattr(aiorun, "_this_platform", lambda: posix)
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ImportError, match="pip install uvloop"):
        run(use_uvloop=True)


def test_missing_winloop_on_windows_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    windows = aiorun._Platform(windows=True, signals=(signal.SIGINT,))
    monkeypatch.setattr(aiorun, "_this_platform", lambda: windows)
    monkeypatch.setitem(sys.modules, "winloop", None)
    with pytest.raises(ImportError, match="pip install winloop"):
        run(use_uvloop=True)


@POSIX_ONLY
def test_uvloop_is_created_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    loop_types: list[type] = []

    async def main() -> None:
        loop_types.append(type(asyncio.get_running_loop()))
        signal.raise_signal(STOP)

    before = signal.getsignal(STOP)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no event-loop-policy API
        report = run(main(), use_uvloop=True)
    assert loop_types == [uvloop.Loop]
    assert report.signal == STOP
    assert signal.getsignal(STOP) is before


# --- The executor -----------------------------------------------------------------------------


def test_default_executor_is_created_with_executor_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[RecordingPool] = []

    class RecordingPool(ThreadPoolExecutor):
        def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
            super().__init__(max_workers, **kwargs)
            self.max_workers_asked = max_workers
            created.append(self)

    monkeypatch.setattr(aiorun, "ThreadPoolExecutor", RecordingPool)
    names: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        names.append(await loop.run_in_executor(None, lambda: threading.current_thread().name))
        stop_soon()

    run(main(), stop_on_unhandled_errors=True, executor_workers=3)
    assert len(created) == 1
    assert created[0].max_workers_asked == 3
    assert names[0].startswith("aiorun")
    with pytest.raises(RuntimeError):
        created[0].submit(print)  # shut down with the loop


def test_a_supplied_executor_is_used_and_shut_down() -> None:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mine")
    names: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        names.append(await loop.run_in_executor(None, lambda: threading.current_thread().name))
        stop_soon()

    run(main(), stop_on_unhandled_errors=True, executor=executor, executor_workers=7)
    assert names[0].startswith("mine")
    with pytest.raises(RuntimeError):
        executor.submit(print)


def test_executor_shutdown_is_bounded_by_the_budget(runtime_log: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    queued: list[Future[None]] = []
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slow")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        def blocking_job() -> None:
            loop.call_soon_threadsafe(started.set_result, None)
            gate.wait(10)  # an unbounded shutdown would wait all of this

        loop.run_in_executor(None, blocking_job)
        await started
        queued.append(executor.submit(print, "never runs"))  # waits for the only thread
        stop_soon()

    try:
        report = run(
            main(), stop_on_unhandled_errors=True, executor=executor, timeout_task_shutdown=0.2
        )
    finally:
        gate.set()
        executor.shutdown(wait=True)
    assert report.duration < 5
    assert queued[0].cancelled()
    assert report.busy_threads == ("slow_0",)
    assert report.timed_out
    warning = messages(runtime_log, logging.WARNING)
    assert len(warning) == 1
    assert warning[0].startswith("shutdown: executor still busy after ")
    assert "1 thread(s) left running" in warning[0]
    assert "thread 'slow_0':" in warning[0]
    assert "in blocking_job" in warning[0]


# --- Signal handlers --------------------------------------------------------------------------


def _sentinel_handler(signum: int, frame: Any) -> None:
    raise AssertionError("the sentinel handler must not be called")


@pytest.mark.parametrize(
    "previous", [_sentinel_handler, signal.SIG_IGN, signal.SIG_DFL], ids=["func", "IGN", "DFL"]
)
def test_previous_signal_handlers_are_restored(previous: Any) -> None:
    old_term = signal.signal(STOP, previous)
    old_int = signal.signal(signal.SIGINT, previous)
    try:

        async def main() -> None:
            assert signal.getsignal(STOP) is not previous
            signal.raise_signal(signal.SIGINT)

        report = run(main(), stop_on_unhandled_errors=True)
        assert report.signal == signal.SIGINT
        assert signal.getsignal(STOP) is previous
        assert signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(STOP, old_term)
        signal.signal(signal.SIGINT, old_int)


@pytest.mark.quick
def test_run_twice_in_one_process_and_ctrl_c_still_works() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    async def main() -> None:
        signal.raise_signal(signal.SIGINT)

    assert run(main()).signal == signal.SIGINT
    assert run(main()).signal == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_run_off_the_main_thread_installs_no_signals(runtime_log: pytest.LogCaptureFixture) -> None:
    reports: list[ShutdownReport] = []
    seen: list[Any] = []

    async def main() -> None:
        seen.append(signal.getsignal(STOP))
        stop_soon()

    aiorun._warned.clear()  # each warning is logged once per process
    before = signal.getsignal(STOP)
    thread = threading.Thread(
        target=lambda: reports.append(run(main(), stop_on_unhandled_errors=True))
    )
    thread.start()
    thread.join(HANG_GUARD)
    assert len(reports) == 1
    assert reports[0].signal is None
    assert seen == [before]
    assert any(
        line.startswith("signals: run() is not in the main thread, so it installs no")
        for line in messages(runtime_log, logging.WARNING)
    )


@POSIX_ONLY
def test_signals_are_heard_directly_and_wake_the_loop_through_our_fd() -> None:
    seen: list[Any] = []
    fd_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd_before)

    async def main() -> None:
        seen.append(signal.getsignal(signal.SIGINT))
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
        seen.append(fd)
        signal.raise_signal(signal.SIGINT)

    report = run(main(), stop_on_unhandled_errors=True)
    assert report.signal == signal.SIGINT
    # a Python handler of ours, heard even while the loop is blocked
    assert isinstance(getattr(seen[0], "__self__", None), aiorun._SignalHooks)
    assert seen[1] not in (-1, fd_before)
    assert signal.set_wakeup_fd(fd_before) == fd_before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@POSIX_ONLY
def test_sighup_is_heard_unless_nohup_ignored_it() -> None:
    seen: list[Any] = []

    async def main() -> None:
        seen.append(signal.getsignal(signal.SIGHUP))
        stop_soon()

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        run(main())
        assert seen == [signal.SIG_IGN]
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
    run(main())
    assert isinstance(getattr(seen[1], "__self__", None), aiorun._SignalHooks)


@POSIX_ONLY
def test_a_fork_pauses_the_listening_thread_and_loses_no_signal_meanwhile() -> None:
    """Python 3.12+ warn when a multi-threaded process forks, so the listening thread stops
    for the fork and the loop starts it again afterwards; a signal meanwhile is heard."""
    listening: list[bool] = []

    def listener_alive() -> bool:
        return any(thread.name == "aiorun-signals" for thread in threading.enumerate())

    async def main() -> None:
        listening.append(listener_alive())
        aiorun._SignalHooks._before_fork()
        listening.append(listener_alive())
        aiorun._SignalHooks._after_fork_in_parent()
        listening.append(listener_alive())  # not yet: the loop starts it
        await asyncio.sleep(0)
        listening.append(listener_alive())
        signal.raise_signal(signal.SIGINT)
        await asyncio.Event().wait()

    report = run(main())
    assert report.signal == signal.SIGINT
    assert listening == [True, False, False, True]
    assert not listener_alive()


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop like some third-party ones: it cannot watch a file descriptor."""

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        raise NotImplementedError


@POSIX_ONLY
def test_a_signal_another_thread_receives_wakes_a_loop_that_cannot_watch_a_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel may hand a signal to any thread; then nothing interrupts the main thread's
    wait, and only the listening thread can wake the loop: without add_reader, without a
    periodic wake-up. Blocking the signal in the main thread makes the kernel choose another."""
    posix = aiorun._Platform(windows=False, signals=(signal.SIGINT,))
    monkeypatch.setattr(aiorun, "_this_platform", lambda: posix)
    seen: list[tuple[bool, bool]] = []

    async def main() -> None:
        hooks = signal.getsignal(signal.SIGINT).__self__  # type: ignore[union-attr]
        seen.append((hooks.listening, hooks.waking_up))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.Event().wait()

    loop = NoReaderLoop()
    try:
        report = run(main(), loop=loop)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        loop.close()
    assert report.signal == signal.SIGINT
    assert seen == [(True, False)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


SIGBREAK_STAND_IN = signal.SIGBREAK if WINDOWS else signal.SIGUSR1
"""Elsewhere SIGUSR1 plays SIGBREAK: Python can raise it, and nothing else handles it."""


class StandInProactor(asyncio.SelectorEventLoop):
    """Plays Windows' ProactorEventLoop for the seam: signals can wake it via its fd."""


@pytest.mark.parametrize(
    ("loop_type", "wakeup_fd_set", "wakes_up"),
    [
        (asyncio.SelectorEventLoop, False, True),
        (StandInProactor, False, True),
        (StandInProactor, True, False),
    ],
    ids=["selector", "proactor-without-fd", "proactor-with-fd"],
)
def test_windows_branch_of_the_signal_seam(
    monkeypatch: pytest.MonkeyPatch, loop_type: type, wakeup_fd_set: bool, wakes_up: bool
) -> None:
    windows = aiorun._Platform(
        windows=True,
        signals=(signal.SIGINT, SIGBREAK_STAND_IN),
        proactor_types=(StandInProactor,),
        wakeup_interval=0.01,
    )
    monkeypatch.setattr(aiorun, "_this_platform", lambda: windows)
    seen: list[bool] = []

    async def main() -> None:
        hooks = signal.getsignal(SIGBREAK_STAND_IN).__self__  # type: ignore[union-attr]
        assert isinstance(hooks, aiorun._SignalHooks)
        seen.append(hooks.waking_up)
        signal.raise_signal(SIGBREAK_STAND_IN)

    loop = loop_type()
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno() if wakeup_fd_set else -1)
    try:
        report = run(main(), stop_on_unhandled_errors=True, loop=loop)
    finally:
        signal.set_wakeup_fd(previous_fd)
        loop.close()
        reader.close()
        writer.close()
    assert seen == [wakes_up]
    assert report.signal == SIGBREAK_STAND_IN
    assert signal.getsignal(SIGBREAK_STAND_IN) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- Clean logs -------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_on_unhandled_errors", [False, True])
def test_cancelled_stream_handlers_leave_the_log_clean(
    stop_on_unhandled_errors: bool, runtime_log: pytest.LogCaptureFixture
) -> None:
    """On 3.11 each cancelled handler made asyncio log "Exception in callback ..."."""
    clients = 200
    listener = socket.create_server(("127.0.0.1", 0), backlog=clients)
    connections = [
        socket.create_connection(listener.getsockname()[:2], timeout=HANG_GUARD)
        for _ in range(clients)
    ]

    async def main() -> None:
        connected = asyncio.Event()
        count = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            number = count
            if number == clients:
                connected.set()
            try:
                await reader.read()
            except asyncio.CancelledError:
                if number == 1:  # one handler has a real problem while it is cancelled
                    raise RuntimeError("a real error") from None
                raise
            finally:
                writer.close()

        servers.append(await asyncio.start_server(handle, sock=listener))
        await connected.wait()
        stop_soon()

    servers: list[asyncio.Server] = []
    try:
        report = run(
            main(),
            stop_on_unhandled_errors=stop_on_unhandled_errors,
            shutdown_callback=lambda loop: servers[0].close(),
        )
    finally:
        for connection in connections:
            connection.close()
        listener.close()
    assert report.unfinished == ()
    problems = [r for r in runtime_log.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1, [r.getMessage()[:200] for r in problems]
    assert problems[0].exc_info is not None
    assert str(problems[0].exc_info[1]) == "a real error"
