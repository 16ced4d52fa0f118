"""Adversarial programs for the runtime's hardening tests: ``python attacks.py NAME``.

Each one does to ``run()`` what a demanding asyncio user might, prints ``ready`` on stdout
when a test may act, and logs to stderr. The tests in ``test_aiorun_signals.py`` drive them
with real signals and check the exit status and the log.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import functools
import gc
import hashlib
import itertools
import logging
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import threading
import time
import warnings
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


# --- 10. forked children that live on -------------------------------------------------------


def job() -> int:
    return os.getpid()


async def uses_pool(pool: concurrent.futures.Executor) -> None:
    worker = await asyncio.get_running_loop().run_in_executor(pool, job)
    logger.info("pool worker %d answered", worker)
    await until_cancelled(asyncio.Event())


def process_pool(use_uvloop: bool) -> None:
    """The common shape: a pool of forked workers that outlives the shutdown of run()."""
    warnings.filterwarnings("ignore", message=".*fork.*")  # the pool's own thread, as always
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        run(uses_pool(pool), use_uvloop=use_uvloop)
        logger.info("run() returned")


async def forks_a_sleeper(children: list[int]) -> None:
    pid = os.fork()
    if pid == 0:
        time.sleep(30)  # noqa: ASYNC251 -- the child: alive through the parent's shutdown
        os._exit(0)
    children.append(pid)
    await until_cancelled(asyncio.Event())


def forked_child_alive(use_uvloop: bool) -> None:
    children: list[int] = []
    try:
        report = run(forks_a_sleeper(children), use_uvloop=use_uvloop)
        print(f"returned duration={report.duration:.3f}", flush=True)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


# --- 11. the user's own signal handlers ------------------------------------------------------


def sighup_reloads(use_uvloop: bool) -> None:
    """The "reload the configuration on SIGHUP" pattern, installed before run()."""
    reloads = itertools.count(1)
    signal.signal(signal.SIGHUP, lambda signum, frame: logger.info("reload #%d", next(reloads)))
    run(until_cancelled(asyncio.Event()), use_uvloop=use_uvloop)


def user_sigterm_inside(use_uvloop: bool, on_loop: bool) -> None:
    """main takes SIGTERM for itself; SIGINT still stops the service. A handler set with
    signal.signal() stays after run(), so a SIGTERM afterwards still reaches it."""
    heard = itertools.count(1)

    def user_sigterm(*args: Any) -> None:
        logger.info("user SIGTERM handler #%d", next(heard))

    async def main() -> None:
        if on_loop:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, user_sigterm)
        else:
            signal.signal(signal.SIGTERM, user_sigterm)
        await until_cancelled(asyncio.Event())

    run(main(), use_uvloop=use_uvloop)
    if not on_loop:  # a loop's handlers end with the loop
        logger.info("kept: %s", signal.getsignal(signal.SIGTERM) is user_sigterm)
        signal.raise_signal(signal.SIGTERM)


# --- 12. another signal while the shutdown writes a file --------------------------------------


def write_while_signalled(use_uvloop: bool) -> None:
    """A synchronous shutdown callback writes two data files while SIGUSR1 (which has a
    Python handler) keeps arriving: not one byte may land in them but the callback's own.
    Two files, so both fd numbers uvloop's closed socket pair leaves free are reused."""
    usr1 = itertools.count(1)
    signal.signal(signal.SIGUSR1, lambda signum, frame: next(usr1))
    directory = tempfile.mkdtemp()
    paths = [os.path.join(directory, name) for name in ("index.txt", "data.txt")]

    def write(loop: asyncio.AbstractEventLoop) -> None:
        with open(paths[0], "w") as index, open(paths[1], "w") as data:
            print("writing", flush=True)
            for n in range(200):
                for file in (index, data):
                    file.write(f"line {n}\n")
                    file.flush()
                time.sleep(0.005)  # the workload: slow enough for signals to arrive meanwhile

    run(until_cancelled(asyncio.Event()), shutdown_callback=write, use_uvloop=use_uvloop)
    lines: list[str] = []
    for path in paths:
        with open(path) as file:
            lines += file.read().split("\n")[:-1]
        os.remove(path)
    os.rmdir(directory)
    strays = [line for line in lines if not line.startswith("line ")]
    print(f"lines={len(lines)} strays={len(strays)} usr1={next(usr1) - 1}", flush=True)


# --- 13. SIGTERM must never be lost ---------------------------------------------------------


async def busy(closing: asyncio.Event) -> None:
    """Keep the loop busy in C calls that hold the GIL for a while: no other thread runs."""
    ready()
    try:
        while True:
            sum(range(10_000_000))
            await asyncio.sleep(0)
    finally:
        closing.set()


def flooded(use_uvloop: bool) -> None:
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    run(busy(asyncio.Event()), use_uvloop=use_uvloop)


def refuse_threads() -> None:
    """As under a process limit: every new thread is refused."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    threading.Thread.start = refuse  # type: ignore[method-assign]


async def forks_then_no_threads() -> None:
    refuse_threads()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # noqa: ASYNC222 -- a child that exits at once
    await until_cancelled(asyncio.Event())


def fork_then_no_threads(use_uvloop: bool) -> None:
    run(forks_then_no_threads(), use_uvloop=use_uvloop)


def no_threads_at_all(use_uvloop: bool) -> None:
    refuse_threads()
    run(until_cancelled(asyncio.Event()), use_uvloop=use_uvloop)


def signal_injected(use_uvloop: bool, at_end: bool) -> None:
    """SIGTERM arrives while run() starts (or ends): in run k, just before its k-th call of
    signal.signal() or signal.set_wakeup_fd(), received by another thread as the kernel may
    choose, so the main thread runs the Python-level handler only later. Every point is
    tried; each SIGTERM must be heard, by run() or by the handler that was there before."""
    heard = [0]

    def previous(signum: int, frame: Any) -> None:
        heard[0] += 1

    class Heard(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("shutdown: SIGTERM received"):
                heard[0] += 1

    signal.signal(signal.SIGTERM, previous)
    logging.getLogger("servicekit.aiorun").addHandler(Heard())
    targets = {"signal", "set_wakeup_fd"}  # the C functions (signal.signal wraps one)
    watching = [False]

    def deliver_elsewhere() -> None:
        """The signal trips in another thread; from then on only C code runs here until
        the caller continues, so the main thread runs the handler at its next check."""
        sent = _thread.allocate_lock()
        sent.acquire()

        def send() -> None:
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # handled before it returns
            sent.release()

        threading.Thread(target=send).start()
        sent.acquire()

    async def main(before: int) -> None:
        watching[0] = at_end
        if at_end:
            asyncio.get_running_loop().stop()
            return
        deadline = time.monotonic() + 1.0
        # A signal handler bumps the count, perhaps outside any loop: poll it.
        while heard[0] == before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        asyncio.get_running_loop().stop()

    lost = 0
    point = 0
    while True:
        calls = [0]

        def profile(
            frame: Any, event: str, arg: Any, k: int = point, calls: list[int] = calls
        ) -> None:
            if (
                watching[0]
                and event == "c_call"
                and getattr(arg, "__module__", None) == "_signal"
                and arg.__name__ in targets
            ):
                if calls[0] == k:
                    deliver_elsewhere()
                calls[0] += 1

        before = heard[0]
        watching[0] = not at_end
        sys.setprofile(profile)
        try:
            run(main(before), use_uvloop=use_uvloop, shutdown_callback=lambda loop: None)
        finally:
            sys.setprofile(None)
            watching[0] = False
        if calls[0] <= point:
            break  # every point tried
        for _ in range(100):  # a Python-level handler still pending runs between bytecodes
            if heard[0] != before:
                break
            time.sleep(0.001)
        if heard[0] == before:
            lost += 1
            logger.info("lost the SIGTERM sent before call %d", point)
        point += 1
    print(f"lost={lost} of {point}", flush=True)


# --- 14. fork warnings -----------------------------------------------------------------------


async def forks(count: int) -> None:
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)  # noqa: ASYNC222 -- a child that exits at once
        await asyncio.sleep(0)


async def forks_then_stop(count: int) -> None:
    await forks(count)
    asyncio.get_running_loop().stop()  # run() keeps the loop running after main returns


def fork_warnings(use_uvloop: bool) -> None:
    """Forks inside run() warn no more than inside asyncio.run() (3.12 and later warn when a
    process that forks has more than one thread)."""
    counts = []
    for runner in ("asyncio.run", "run"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if runner == "run":
                run(forks_then_stop(50), use_uvloop=use_uvloop)
            elif use_uvloop:
                import uvloop

                uvloop.run(forks(50))
            else:
                asyncio.run(forks(50))
        counts.append(len([w for w in caught if "fork" in str(w.message)]))
    print(f"asyncio.run warnings={counts[0]} run warnings={counts[1]}", flush=True)


# --- 15. smaller ones ------------------------------------------------------------------------


async def sets_gc_threshold(closing: asyncio.Event) -> None:
    await closing.wait()
    gc.set_threshold(1234, 11, 12)  # the user's own tuning, made during the shutdown


async def gc_tuning() -> None:
    closing = asyncio.Event()
    background.add(asyncio.ensure_future(shutdown_waits_for(sets_gc_threshold(closing))))
    await until_cancelled(closing)


def gc_kept() -> None:
    run(gc_tuning())
    print(f"threshold={gc.get_threshold()}", flush=True)


async def exits_when_cancelled() -> None:
    try:
        await asyncio.Event().wait()
    finally:
        raise SystemExit(3)


async def numbers() -> Any:
    try:
        yield 1
        yield 2
    finally:
        logger.info("async generator closed")


async def system_exit_in_shutdown() -> None:
    background.add(asyncio.ensure_future(exits_when_cancelled()))
    generator = numbers()
    background.add(generator)  # type: ignore[arg-type]
    await generator.__anext__()
    await until_cancelled(asyncio.Event())


async def raises_keyboard_interrupt() -> None:
    ready()
    await asyncio.sleep(0)
    raise KeyboardInterrupt


def off_main_thread() -> None:
    async def stops() -> None:
        asyncio.get_running_loop().stop()

    for _ in range(2):
        thread = threading.Thread(target=run, args=(stops(),))
        thread.start()
        thread.join()
    logger.info("both runs returned")


# --- the command line ------------------------------------------------------------------------


def attacks() -> dict[str, Callable[[], object]]:
    table: dict[str, Callable[[], object]] = {
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
        "gc-kept": gc_kept,
        "system-exit-in-shutdown": lambda: run(system_exit_in_shutdown()),
        "keyboard-interrupt": lambda: run(raises_keyboard_interrupt()),
        "off-main-thread": off_main_thread,
    }
    for name, use_uvloop in (("", False), ("-uvloop", True)):
        table.update(
            {
                f"process-pool{name}": functools.partial(process_pool, use_uvloop),
                f"forked-child-alive{name}": functools.partial(forked_child_alive, use_uvloop),
                f"sighup-reloads{name}": functools.partial(sighup_reloads, use_uvloop),
                f"user-sigterm-signal{name}": functools.partial(
                    user_sigterm_inside, use_uvloop, False
                ),
                f"user-sigterm-loop{name}": functools.partial(
                    user_sigterm_inside, use_uvloop, True
                ),
                f"write-while-signalled{name}": functools.partial(
                    write_while_signalled, use_uvloop
                ),
                f"flooded{name}": functools.partial(flooded, use_uvloop),
                f"fork-then-no-threads{name}": functools.partial(fork_then_no_threads, use_uvloop),
                f"no-threads-at-all{name}": functools.partial(no_threads_at_all, use_uvloop),
                f"race-start{name}": functools.partial(signal_injected, use_uvloop, False),
                f"race-end{name}": functools.partial(signal_injected, use_uvloop, True),
                f"fork-warnings{name}": functools.partial(fork_warnings, use_uvloop),
            }
        )
    return table


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    attacks()[argv[0]]()
    print(f"peak_rss_mib={peak_rss_mib():.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
