"""The shutdown benchmark's server: one streams echo server, started under a chosen runner.

Why a standalone copy: the shutdown comparison needs *the same* server code under the vendored
runtime, aiorun 2025.1.1 and asyncio.run, so only the runner differs. It holds what the issue
names as the load: idle connections (each a handler task parked in readline()) plus N tasks
sleeping for an hour. It prints `ready PORT` on stdout once the listener is up and the sleepers
exist; the bench then opens connections and confirms each with an echo before it signals.

Two more runners serve as references: `exit` leaves at once on SIGTERM (os._exit: no cleanup,
only the kernel's teardown of the process and its sockets), the floor any graceful shutdown
sits on; `asyncio --loop uvloop` is a plain streams server on uvloop for the throughput
breakdown (what the streams API costs against a bare Protocol).

    python echo_server.py --runner vendored|aiorun|asyncio|exit [--tasks N] [--project DIR]
                          [--loop default|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

logger = logging.getLogger("bench")
KEEP: list[object] = []  # the server and the sleepers stay referenced until shutdown


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every line back; a plain handler like most users write."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    finally:
        writer.close()


async def start(tasks: int) -> None:
    """Listen on an ephemeral loopback port, park `tasks` sleepers, announce readiness."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    KEEP.append(server)
    KEEP.extend(asyncio.create_task(asyncio.sleep(3600)) for _ in range(tasks))
    # One turn of the loop runs every new task's first step (they were queued before us), so
    # from here on they are all asleep, and "ready" does not race with their start-up.
    await asyncio.sleep(0)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)


async def start_and_exit_on_sigterm(tasks: int) -> None:
    """The floor: the same load, but SIGTERM ends the process without any cleanup."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, os._exit, 0)
    await start_and_wait_forever(tasks)


async def start_and_wait_forever(tasks: int) -> None:
    """asyncio.run needs a main coroutine that never returns; SIGINT cancels it."""
    await start(tasks)
    await asyncio.Event().wait()


def main() -> int:
    # Logging set up as a service would. The "runner returned" line tells the bench how much
    # of the exit time was spent in the runner and how much in the interpreter's own exit.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--runner", choices=["vendored", "aiorun", "asyncio", "exit"], required=True
    )
    parser.add_argument("--loop", choices=["default", "uvloop"], default="default")
    parser.add_argument("--tasks", type=int, default=0)
    parser.add_argument("--project", help="baked project root (for --runner vendored)")
    args = parser.parse_args()
    # A shell's background job inherits SIGINT ignored, and then Python and asyncio.run leave
    # Ctrl-C ignored too; behave as when started from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    if args.runner in ("asyncio", "exit"):
        # The usual asyncio.run program: Ctrl-C/SIGINT cancels main, asyncio.run cancels the
        # rest and raises KeyboardInterrupt, which a well-behaved program catches. Runner is
        # what asyncio.run uses inside; it is spelled out to pass a loop factory on 3.11.
        exits = args.runner == "exit"
        main_coro = start_and_exit_on_sigterm if exits else start_and_wait_forever
        factory = None
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(main_coro(args.tasks))
        except KeyboardInterrupt:
            pass
        logger.info("runner returned")
        return 0
    if args.runner == "aiorun":
        from aiorun import run
    else:
        sys.path.insert(0, args.project)
        from servicekit.aiorun import run  # type: ignore[no-redef]
    run(start(args.tasks))  # runs until SIGTERM/SIGINT, like a service does
    logger.info("runner returned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
