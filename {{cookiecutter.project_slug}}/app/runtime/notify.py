"""systemd readiness notification (``sd_notify``), without depending on libsystemd.

With ``Type=notify`` in a unit file, systemd sets ``NOTIFY_SOCKET`` and waits for
``READY=1`` before it considers the service started, and logs ``STOPPING=1`` as the start of
a stop. Outside systemd the variable is unset and this does nothing. A failure to notify is
logged, never fatal: the service works the same without a supervisor listening.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def send(state: str) -> None:
    """Send one state line such as ``READY=1`` to the socket named by NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not hasattr(socket, "AF_UNIX"):
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        logger.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
