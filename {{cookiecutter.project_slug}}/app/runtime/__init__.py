"""What every generated service inherits: the runtime, the supervisor, systemd notification.

Nothing here needs changing to make the service yours (that is ``app/protocol.py``). The
runtime is a drop-in for aiorun: ``from app.runtime import run, shutdown_waits_for``.
"""

from app.runtime.aiorun import ShutdownReport, run, shutdown_waits_for

__all__ = ["ShutdownReport", "run", "shutdown_waits_for"]
