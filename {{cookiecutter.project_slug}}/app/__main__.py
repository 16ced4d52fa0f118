"""``python -m app``: read the settings, run the echo service, exit with a meaningful status.

The exit statuses are listed in ``app/exitcodes.py`` and in the README.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from typing import cast

from app.config import ConfigError, load_settings
from app.exitcodes import ExitCode
from app.runtime import run, supervisor
from app.service import DRAIN_SHARE, EchoService, StartupError

logger = logging.getLogger("app")


def main() -> int:
    """Run the service until it is stopped; return the process exit status."""
    try:
        settings, warnings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for warning in warnings:
        logger.warning("%s", warning)
    if settings.workers > 1:
        return supervisor.main(settings)

    loop = _new_loop(settings.use_uvloop)
    if settings.worker_index:
        supervisor.beat_to_supervisor(loop, settings.heartbeat_timeout / 4)
    service = EchoService(settings)
    try:
        # Start before run() takes the loop over: a port in use or an unwritable journal is
        # then one line and an exit status, with nothing running that would need a shutdown.
        loop.run_until_complete(service.open())
        report = run(
            service.serve(),
            loop=loop,
            shutdown_callback=service.stop,
            stop_on_unhandled_errors=settings.stop_on_error,
            timeout_task_shutdown=settings.shutdown_timeout * (1 - DRAIN_SHARE),
            force_exit_on_second_signal=True,
        )
    except StartupError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except Exception as exc:  # the runtime has logged it with its traceback
        logger.error("stopped by an unhandled error: %s", exc)
        return ExitCode.ERROR
    finally:
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


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's if asked (the settings checked it is installed)."""
    if use_uvloop:
        uvloop = importlib.import_module("uvloop")
        return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    return asyncio.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
