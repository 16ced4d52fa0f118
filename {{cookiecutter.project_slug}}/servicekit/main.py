"""``python -m app``: read the settings, run the service, exit with a meaningful status.

The exit statuses are listed in ``servicekit/exitcodes.py`` and in the README; ``--help`` prints
them with every setting. Settings come from ``APP_*`` variables only, so there are no other
arguments to take.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import cast

from servicekit import logs
from servicekit.aiorun import run
from servicekit.config import ConfigError, load_settings, shown_value
from servicekit.exitcodes import ExitCode, StartupError
from servicekit.service import DRAIN_SHARE, Service, ServiceProtocol

logger = logging.getLogger(__name__)


HELP = """\
usage: python -m app [--help]

Run the service until SIGTERM or Ctrl-C, then stop gracefully. Settings come from the
environment or a .env file in the working folder (the environment wins).

settings (variable, default, what it does):
{settings}

exit statuses:
{statuses}
"""


def main(protocol: ServiceProtocol, argv: Sequence[str] | None = None) -> int:
    """Run the service with this protocol until it is stopped; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        return _arguments(argv)
    try:
        settings, warnings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    logs.configure(settings.log_level, settings.log_format)
    for warning in warnings:
        logger.warning("%s", warning)
    if settings.workers > 1:
        from servicekit import supervisor  # only a supervisor pays for importing it

        return supervisor.main(settings)

    loop = _new_loop(settings.use_uvloop)
    if settings.worker_index:
        from servicekit import supervisor

        supervisor.beat_to_supervisor(loop, settings.heartbeat_timeout / 4)
    service = Service(settings, protocol)
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


def _arguments(argv: Sequence[str]) -> int:
    """``--help``: print the settings and exit statuses. Anything else: one line, status 2."""
    if list(argv) in (["--help"], ["-h"]):
        from servicekit.config import settings_help
        from servicekit.exitcodes import exit_statuses_help

        print(HELP.format(settings=settings_help(), statuses=exit_statuses_help()), end="")
        return ExitCode.OK
    unknown = next((arg for arg in argv if arg not in ("--help", "-h")), argv[-1])
    option, equals, _ = unknown.partition("=")  # --name=value: the name helps, not the value
    shown = f"{shown_value(option)} (its value not shown)" if equals else shown_value(unknown)
    print(
        f"error: unknown argument {shown}: settings are APP_* variables"
        " (python -m app --help lists them)",
        file=sys.stderr,
    )
    return ExitCode.CONFIG


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's if asked (the settings checked it is installed)."""
    if use_uvloop:
        uvloop = importlib.import_module("uvloop")
        return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    return asyncio.new_event_loop()
