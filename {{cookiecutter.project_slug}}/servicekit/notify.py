"""systemd notification (``sd_notify``): readiness, stop, status and watchdog, without libsystemd.

With ``Type=notify`` in a unit file, systemd sets ``NOTIFY_SOCKET`` and waits for
``READY=1`` before it considers the service started, and logs ``STOPPING=1`` as the start of
a stop; ``STATUS=...`` is what ``systemctl status`` shows. With ``WatchdogSec=`` it also sets
``WATCHDOG_USEC`` and kills and restarts a service that does not send ``WATCHDOG=1`` that
often: ``start_watchdog()`` sends it from the event loop itself, so a loop that is wedged (a
blocking call, an endless loop in a callback) stops the pings and gets the service restarted,
while a loop that is merely busy still gets its timer callbacks in.

Outside systemd the variables are unset and this does nothing. A failure to notify is
logged, never fatal: the service works the same without a supervisor listening.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)

SEND_TIMEOUT = 0.1
"""Seconds a message may wait for room in the receiver's queue. The send runs in the event
loop, so a blocking one would freeze the service, signals included, for as long as the
receiver does not read (a socket nobody reads: forever); systemd reads well within this."""


def send(state: str) -> None:
    """Send state lines such as ``READY=1`` (several: one per line) to NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not hasattr(socket, "AF_UNIX"):
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        # Once per address: a stale or mistyped NOTIFY_SOCKET fails every message, and with
        # a watchdog that is one every few seconds for as long as the service runs.
        level = logging.DEBUG if address in _failed else logging.WARNING
        _failed.add(address)
        logger.log(level, "cannot notify systemd at %s: %s", address.lstrip("\0"), exc)


_failed: set[str] = set()
"""The NOTIFY_SOCKET addresses that failed; only the first failure at each is a warning."""


def status(text: str) -> None:
    """Say what the service is doing, for ``systemctl status`` (one line)."""
    send("STATUS=" + " ".join(text.split()))


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of what systemd allows, or None if unwatched.

    systemd sets ``WATCHDOG_PID`` to the main process; a child that inherited the variables
    (a worker under ``APP_WORKERS``) is not the one being watched and must stay silent.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


def start_watchdog() -> None:
    """Ping systemd's watchdog from the running loop until the loop stops running callbacks.

    Call it from a coroutine on the service's loop, once the service is ready. The pings go
    on through the shutdown, whose length systemd bounds with ``TimeoutStopSec`` instead.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    loop = asyncio.get_running_loop()

    def ping() -> None:
        send("WATCHDOG=1")
        loop.call_later(interval, ping)

    ping()
