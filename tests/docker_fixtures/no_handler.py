"""Negative control for tests/test_docker.py: the same echo service with no signal handling.

It starts the generated project's Service under plain ``asyncio.run()``, which installs no
SIGTERM handler. Run as a container's main process (PID 1, or under a shell-form CMD's
``/bin/sh -c``), SIGTERM is then ignored and ``docker stop`` can only end it with SIGKILL after
the grace period: exit status 137, no drain, no journal flush. The test proves that it does.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from app import protocol
from servicekit.config import load_settings
from servicekit.service import Service


async def serve() -> None:
    settings, _ = load_settings()
    service = Service(settings, protocol)
    await service.open()
    await service.serve()
    await asyncio.Event().wait()  # forever: nothing here reacts to SIGTERM


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve())
