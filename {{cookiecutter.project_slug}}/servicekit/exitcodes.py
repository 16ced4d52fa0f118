"""Exit statuses of ``python -m app``: one number per way the process can end.

Supervisors (systemd, Docker, Kubernetes, a CI job) only see the number, so each failure that
an operator must handle differently gets its own. Where a BSD ``sysexits.h`` code fits, it is
used, so the numbers mean something outside this project too. Everything that turns a failure
or a child's return code into a status, or a status into words, lives here.
"""

from __future__ import annotations

import enum
import errno
import os


class ExitCode(enum.IntEnum):
    """How the service ended. Second-signal force exits add 128 + the signal number."""

    meaning: str

    def __new__(cls, value: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    OK = 0, "stopped and shut down cleanly: every request answered, journal flushed"
    ERROR = 1, "an unhandled error stopped it, after a full graceful shutdown"
    CONFIG = 2, "bad configuration (a setting, a .env line, an argument); nothing started"
    STARTUP_INTERRUPTED = (
        3,
        (
            "a stop signal came during the start, e.g. while the journal was replayed; nothing"
            " was served, the journal is unchanged"
        ),
    )
    RECOVER_FAILED = (
        65,
        (
            "recover() raised on a journaled request (the log names its line and byte offset"
            " and shows the traceback), or snapshot() failed at the start's compaction; the"
            " journal is kept as it was (EX_DATAERR)"
        ),
    )
    ADDRESS_IN_USE = 69, "the port or the journal is in use by another process (EX_UNAVAILABLE)"
    NO_THREADS = (
        71,
        (
            "the system refused a thread the service needs (a memory limit such as ulimit -v,"
            " or a process limit); nothing was served (EX_OSERR)"
        ),
    )
    JOURNAL_UNWRITABLE = 73, "the journal cannot be created, or a write failed (EX_CANTCREAT)"
    SHUTDOWN_TIMEOUT = (
        75,
        (
            "the shutdown budget ran out: busy connections aborted or tasks abandoned, named in"
            " the log (EX_TEMPFAIL)"
        ),
    )
    PERMISSION_DENIED = 77, "not allowed to bind the address, e.g. a port below 1024 (EX_NOPERM)"


SIGNAL_BASE = 128
"""A process ended by signal N reports 128 + N, as shells do; so does a forced exit."""


class StartupError(Exception):
    """The service cannot start; ``exit_code`` says why, the message says what to fix.

    Raise it ``from None`` when the message says it all (a port in use), and ``from`` the
    error when that error is a bug to find (the user's ``recover`` raised): its traceback is
    then logged under the message.
    """

    def __init__(self, exit_code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bind_exit_code(exc: OSError) -> ExitCode:
    """The exit status for a failure to bind a listening socket."""
    if exc.errno == errno.EADDRINUSE:
        return ExitCode.ADDRESS_IN_USE
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ExitCode.PERMISSION_DENIED
    return ExitCode.CONFIG  # e.g. a host name that does not resolve


def os_reason(exc: OSError) -> str:
    """The OS's own words for the error, without asyncio's or Python's decoration."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    # E.g. a resolver error, whose codes are negative, or asyncio's "Multiple exceptions".
    return exc.strerror or str(exc) or type(exc).__name__


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: killed by signal N (-N) is 128 + N."""
    return SIGNAL_BASE - returncode if returncode < 0 else returncode


def describe(returncode: int) -> str:
    """Words for a child's return code: ``SIGKILL``, ``status 73 (JOURNAL_UNWRITABLE)``."""
    from servicekit.aiorun import _signal_name  # the runtime owns signal names

    if returncode < 0:
        return _signal_name(-returncode)
    if returncode > SIGNAL_BASE:
        return f"status {returncode} ({_signal_name(returncode - SIGNAL_BASE)})"
    known = {code.value: code.name for code in ExitCode}
    name = known.get(returncode)
    return f"status {returncode} ({name})" if name else f"status {returncode}"


def exit_statuses_help() -> str:
    """The exit statuses part of ``python -m app --help``."""
    rows = [f"  {code.value:>5}  {code.meaning}" for code in ExitCode]
    rows.append(f"  {SIGNAL_BASE}+N  a second signal N forced the exit (130 for Ctrl-C twice)")
    return "\n".join(rows)
