"""Run the generated service's own Service under plain `asyncio.run`, not servicekit.aiorun.run().

Why: the throughput benchmark compares this with `python -m app` on the same (default) loop.
Between start and stop the runtime should cost nothing, so the ratio shows its overhead.
Same settings (APP_ variables), same log format, so the bench waits for the same
`listening on HOST:PORT` line. Stopped with SIGINT, the way asyncio.run programs are.

    python service_asyncio_run.py PROJECT_DIR      (run with the project as cwd)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    from app import protocol
    from servicekit.config import load_settings
    from servicekit.service import Service

    settings, _ = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    service = Service(settings, protocol)

    async def serve() -> None:
        await service.open()
        await service.serve()
        try:
            await asyncio.Event().wait()
        finally:
            await service.stop(asyncio.get_running_loop())

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
