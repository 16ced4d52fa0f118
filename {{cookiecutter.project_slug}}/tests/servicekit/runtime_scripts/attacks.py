"""Adversarial programs for the runtime's hardening tests: ``python attacks.py NAME``.

Each one does to ``run()`` what a demanding asyncio user might, prints ``ready`` on stdout
when a test may act, and logs to stderr. The tests in ``test_aiorun_signals.py`` drive them
with real signals and check the exit status and the log.
"""

from __future__ import annotations

import _thread
import asyncio
import hashlib
import itertools
import logging
import multiprocessing
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from servicekit.aiorun import run, shutdown_waits_for

logger = logging.getLogger("attack")
background: set[asyncio.Future[Any]] = set()
"""Strong references to tasks the attacks start and never await."""


def ready() -> None:
    print("ready", flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def until_cancelled(closing: asyncio.Event) -> None:
    """The main coroutine's usual shape: wait, and say the shutdown has begun when cancelled."""
    ready()
    try:
        await asyncio.Event().wait()
    finally:
        closing.set()


# --- 1. a wedged loop and force exit ------------------------------------------------------


async def wedged() -> None:
    ready()
    time.sleep(15)  # noqa: ASYNC251 -- blocks the loop: only a signal heard outside it can help


async def wedged_in_c() -> None:
    """Block the loop inside one C call that releases the GIL and never checks for signals."""
    ready()
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 100_000_000)


def flood_stderr() -> None:
    """Fill a stderr pipe nobody reads, so the next log write blocks for good."""
    while True:
        logger.info("flood %s", "x" * 1000)


async def wedged_without_threads() -> None:
    """Wedged, and no thread can be started any more (a process limit reached)."""

    def refuse(*args: Any) -> int:
        raise RuntimeError("can't start new thread")

    _thread.start_new_thread = refuse  # type: ignore[assignment]
    await wedged()


def attack_wedged_loop(flood: bool) -> None:
    if flood:
        threading.Thread(target=flood_stderr, daemon=True).start()
    run(wedged(), force_exit_on_second_signal=True)


# --- 3. cyclic garbage during the shutdown -------------------------------------------------


async def churn(closing: asyncio.Event, seconds: float) -> None:
    """Protected work that makes reference cycles for ``seconds`` once the shutdown began."""
    await closing.wait()
    logger.info("churn starts")
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        for _ in range(1000):
            cycle: list[Any] = [bytearray(200)]
            cycle.append(cycle)
        rounds += 1
        if rounds % 100 == 0 and peak_rss_mib() > 600:  # enough to fail: spare the machine
            logger.info("churn gives up: too much memory")
            break
        await asyncio.sleep(0)
    logger.info("churn done")


async def cyclic_garbage() -> None:
    closing = asyncio.Event()
    background.add(asyncio.ensure_future(shutdown_waits_for(churn(closing, 3.0))))
    await until_cancelled(closing)


# --- 4. protected work whose failure the caller handles -------------------------------------


async def save() -> None:
    await asyncio.sleep(0.01)
    raise OSError("disk full (late)")


async def fails_at_once() -> None:
    raise OSError("disk full (at once)")


async def handled_errors() -> None:
    pending = shutdown_waits_for(save())
    await asyncio.sleep(0.1)  # the failure happens while nobody is waiting for it
    try:
        await pending
    except OSError as exc:
        logger.info("handled: %s", exc)
    task = asyncio.create_task(shutdown_waits_for(fails_at_once()))
    try:
        await task
    except OSError as exc:
        logger.info("handled: %s", exc)
    await until_cancelled(asyncio.Event())


async def dropped_error() -> None:
    shutdown_waits_for(fails_at_once())  # fire and forget: nobody can receive this failure
    ready()
    await asyncio.Event().wait()


# --- 5. an exception-handler call without an exception ----------------------------------------


async def message_only() -> None:
    ready()
    asyncio.get_running_loop().call_exception_handler({"message": "a message, no exception"})
    await asyncio.Event().wait()


# --- 6. arguments --------------------------------------------------------------------------


async def sleeper() -> None:
    background.add(asyncio.create_task(asyncio.sleep(3600), name="sleeper"))
    await until_cancelled(asyncio.Event())


async def never_started() -> None:
    logger.info("main started")  # must not appear: the bad argument is refused first


def callback(loop: asyncio.AbstractEventLoop) -> None:
    logger.info("shutdown callback ran")


# --- 7. fork ------------------------------------------------------------------------------


def wait_in_child(started: Any) -> None:
    started.set()
    time.sleep(60)  # only its own SIGTERM ends it early


async def fork_child() -> None:
    """A forked child gets SIGTERM, as ``multiprocessing`` workers do from ``terminate()``."""
    context = multiprocessing.get_context("fork")
    started = context.Event()
    child = context.Process(target=wait_in_child, args=(started,))
    child.start()
    assert started.wait(30)
    child.terminate()  # SIGTERM to the child alone
    child.join(30)
    logger.info("forked child ended with %s", child.exitcode)
    for _ in range(5):  # let the loop read whatever the child's signal woke it with
        await asyncio.sleep(0)
    logger.info("survived the child's signal")
    await until_cancelled(asyncio.Event())


# --- 8. handlers that were there before; nested run() ------------------------------------------


def user_handlers() -> None:
    loop = asyncio.new_event_loop()

    def user_sigterm() -> None:
        logger.info("user SIGTERM handler")
        loop.stop()

    loop.add_signal_handler(signal.SIGTERM, user_sigterm)
    run(until_cancelled(asyncio.Event()), loop=loop)
    logger.info("run() returned")
    loop.call_soon(lambda: print("ready again", flush=True))
    loop.run_forever()  # only the user's handler can stop this
    loop.close()


async def loop_handler_inside() -> None:
    """A handler the caller adds to the loop for another signal, while run() listens."""
    heard = itertools.count(1)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: logger.info("user SIGUSR1 handler #%d", next(heard))
    )
    await until_cancelled(asyncio.Event())


async def nested() -> None:
    async def inner() -> None:
        logger.info("inner main started")

    try:
        run(inner())
    except RuntimeError as exc:
        logger.info("nested run refused: %s", exc)
    await until_cancelled(asyncio.Event())


# --- 9. subtasks of protected work ----------------------------------------------------------


async def subtasks() -> None:
    closing = asyncio.Event()

    async def part(name: str) -> str:
        await closing.wait()
        await asyncio.sleep(0.05)  # still working after the shutdown's cancel pass
        logger.info("part %s done", name)
        return name

    async def save_in_parts() -> None:
        loose = asyncio.create_task(part("create_task"))
        async with asyncio.TaskGroup() as group:
            group.create_task(part("task group"))
            await asyncio.gather(part("gather 1"), part("gather 2"))
        await loose
        late = asyncio.create_task(part("started after the signal"))
        await late
        logger.info("save done")

    background.add(asyncio.ensure_future(shutdown_waits_for(save_in_parts())))
    await until_cancelled(closing)


# --- the command line ------------------------------------------------------------------------


def attacks() -> dict[str, Callable[[], object]]:
    return {
        "wedged-loop": lambda: attack_wedged_loop(flood=False),
        "wedged-loop-unread-stderr": lambda: attack_wedged_loop(flood=True),
        "wedged-without-threads": lambda: run(
            wedged_without_threads(), force_exit_on_second_signal=True
        ),
        "wedged-in-c": lambda: run(wedged_in_c(), force_exit_on_second_signal=True),
        "wedged-in-c-uvloop": lambda: run(
            wedged_in_c(), force_exit_on_second_signal=True, use_uvloop=True
        ),
        "cyclic-garbage": lambda: run(cyclic_garbage()),
        "handled-errors": lambda: run(handled_errors(), stop_on_unhandled_errors=True),
        "dropped-error": lambda: run(dropped_error(), stop_on_unhandled_errors=True),
        "message-only": lambda: run(message_only(), stop_on_unhandled_errors=True),
        "no-budget": lambda: run(sleeper(), shutdown_callback=callback, timeout_task_shutdown=None),
        "bad-budget": lambda: run(
            never_started(),
            shutdown_callback=callback,
            timeout_task_shutdown="5",  # type: ignore[arg-type]
        ),
        "fork-child": lambda: run(fork_child()),
        "user-handlers": user_handlers,
        "nested-run": lambda: run(nested()),
        "loop-handler-inside": lambda: run(loop_handler_inside()),
        "loop-handler-inside-uvloop": lambda: run(loop_handler_inside(), use_uvloop=True),
        "subtasks": lambda: run(subtasks()),
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    attacks()[argv[0]]()
    print(f"peak_rss_mib={peak_rss_mib():.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
