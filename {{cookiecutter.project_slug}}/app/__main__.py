"""``python -m app``: read the settings, run the echo service, exit with a meaningful status.

The exit statuses are listed in ``app/exitcodes.py`` and in the README.
"""

from __future__ import annotations

import logging
import os
import sys

from app import supervisor
from app.aiorun import run
from app.config import ConfigError, load_settings
from app.exitcodes import ExitCode
from app.service import DRAIN_SHARE, EchoService

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

    service = EchoService(settings)
    try:
        report = run(
            service.start(),
            shutdown_callback=service.stop,
            use_uvloop=settings.use_uvloop,
            stop_on_unhandled_errors=settings.stop_on_error,
            timeout_task_shutdown=settings.shutdown_timeout * (1 - DRAIN_SHARE),
            force_exit_on_second_signal=True,
        )
    except Exception as exc:  # the runtime has logged it with its traceback
        logger.error("stopped by an unhandled error: %s", exc)
        return ExitCode.ERROR
    if report.busy_threads:
        # Python would wait for these executor threads at exit, past the shutdown budget.
        logging.shutdown()
        os._exit(service.exit_code or ExitCode.SHUTDOWN_TIMEOUT)
    if service.exit_code != ExitCode.OK:
        return service.exit_code
    if report.unfinished:
        return ExitCode.SHUTDOWN_TIMEOUT
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
