"""Exit statuses of ``python -m app``: one number per way the process can end.

Supervisors (systemd, Docker, Kubernetes, a CI job) only see the number, so each failure that
an operator must handle differently gets its own. Where a BSD ``sysexits.h`` code fits, it is
used, so the numbers mean something outside this project too.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """How the service ended. Second-signal force exits add 128 + the signal number."""

    OK = 0
    """Stopped by a signal or ``loop.stop()`` and shut down cleanly: nothing lost."""

    ERROR = 1
    """An unhandled error stopped the service; it still shut down gracefully first."""

    CONFIG = 2
    """A setting in the environment or ``.env`` is malformed; nothing was started."""

    ADDRESS_IN_USE = 69
    """The port is taken by another process (``EX_UNAVAILABLE``)."""

    JOURNAL_UNWRITABLE = 73
    """The journal cannot be created, or a write to it failed (``EX_CANTCREAT``). A failed
    write stops the service: it could no longer keep its promise to lose nothing."""

    SHUTDOWN_TIMEOUT = 75
    """The shutdown budget ran out (``EX_TEMPFAIL``): connections still busy were aborted, or
    tasks still running were abandoned. The log says which, tasks with their stacks."""

    PERMISSION_DENIED = 77
    """Not allowed to bind the address, e.g. a port below 1024 (``EX_NOPERM``)."""
