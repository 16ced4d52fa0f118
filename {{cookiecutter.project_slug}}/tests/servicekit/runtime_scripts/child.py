"""A tiny service for the runtime's subprocess tests: ``python child.py SCENARIO [options]``.

It prints ``ready`` on stdout once the loop runs, so the test knows when a signal will be
heard, logs to stderr like the real service, and exits 75 when the shutdown left work
behind (as the generated service does), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable

from servicekit.aiorun import run, shutdown_waits_for

logger = logging.getLogger("child")
background: set[asyncio.Future[None]] = set()
"""Strong references: a task that only awaits a throwaway Event could be garbage-collected."""


def ready() -> None:
    print("ready", flush=True)


async def stubborn(started: asyncio.Event) -> None:
    """A task that swallows every cancellation: only the shutdown budget can end the wait."""
    started.set()
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            logger.info("stubborn task ignores its cancellation")


async def flush_journal(closing: asyncio.Event) -> None:
    """Protected work that can only finish after the shutdown has cancelled ``main``."""
    await closing.wait()
    logger.info("protected flush done")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


async def main(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(args.clients)]
    for _ in range(args.sleepers):
        background.add(asyncio.create_task(asyncio.sleep(3600)))
    if args.stubborn:
        started = asyncio.Event()
        background.add(asyncio.create_task(stubborn(started), name="stubborn"))
        await started.wait()  # a task cancelled before its first step could not swallow it
    closing = asyncio.Event()
    background.add(asyncio.ensure_future(shutdown_waits_for(flush_journal(closing))))
    ready()
    try:
        await asyncio.Event().wait()
    finally:
        closing.set()
        for _, writer in connections:
            writer.close()


def blocking_callback(loop: asyncio.AbstractEventLoop) -> None:
    """A shutdown callback that blocks the loop: only a signal handled outside it can help."""
    logger.info("callback blocks the loop")
    time.sleep(60)


def slow_callback(seconds: float) -> Callable[[asyncio.AbstractEventLoop], Awaitable[None]]:
    """A shutdown callback that takes a while without blocking the loop."""

    async def callback(loop: asyncio.AbstractEventLoop) -> None:
        logger.info("callback takes %.1fs", seconds)
        await asyncio.sleep(seconds)

    return callback


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["service", "no-coroutine"])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--sleepers", type=int, default=10)
    parser.add_argument("--stubborn", action="store_true")
    parser.add_argument("--blocking-callback", action="store_true")
    parser.add_argument("--slow-callback", type=float, default=0.0)
    parser.add_argument("--force-exit", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--force-exit-after", type=float, default=None)
    parser.add_argument("--linger", type=float, default=0.0)
    return parser.parse_args(argv)


def main_entry(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.scenario == "no-coroutine":
        loop = asyncio.new_event_loop()
        loop.call_soon(ready)
        try:
            report = run(loop=loop, timeout_task_shutdown=args.timeout)
        finally:
            loop.close()
    else:
        report = run(
            main(args),
            use_uvloop=args.uvloop,
            shutdown_callback=blocking_callback
            if args.blocking_callback
            else slow_callback(args.slow_callback)
            if args.slow_callback
            else None,
            timeout_task_shutdown=args.timeout,
            force_exit_on_second_signal=args.force_exit,
            force_exit_after=args.force_exit_after,
        )
    time.sleep(args.linger)  # the scenario: the process goes on after run() returned
    print(f"report signal={report.signal} unfinished={','.join(report.unfinished)}", flush=True)
    return 75 if report.unfinished else 0


if __name__ == "__main__":
    sys.exit(main_entry(sys.argv[1:]))
