"""systemd notification over a real datagram socket, as systemd receives it.

The real systemd (Type=notify, WatchdogSec=, a wedged loop restarted) is proven by the
template's own suite, in a container whose PID 1 is systemd; this covers the protocol
wherever the project's tests run.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD, StartService, ask, connect, is_reply

from servicekit.exitcodes import ExitCode
from servicekit.notify import watchdog_interval

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="AF_UNIX datagrams: Linux")


def test_watchdog_interval_is_half_of_what_systemd_allows() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0


@pytest.mark.parametrize(
    "environ",
    [
        {},  # not under a watchdog
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"},  # watched is another process
    ],
)
def test_no_watchdog(environ: dict[str, str]) -> None:
    assert watchdog_interval(environ) is None


LIFESPAN = b"STATUS=closing the lifespan"


@linux_only
def test_ready_watchdog_pings_and_drain_status(start_service: StartService, tmp_path: Path) -> None:
    """READY=1, then WATCHDOG=1 again and again from the loop, then STOPPING=1 and STATUS=."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        address = str(tmp_path / "notify.sock")
        systemd.bind(address)
        systemd.settimeout(HANG_GUARD)
        service = start_service(NOTIFY_SOCKET=address, WATCHDOG_USEC="200000")  # ping each 0.1 s
        assert systemd.recv(100) == b"READY=1"
        assert [systemd.recv(100) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        with connect(service) as sock:
            assert is_reply(ask(sock, b"still pinging\n"))
        service.send(signal.SIGTERM)
        messages = []
        while not messages or messages[-1] != b"STATUS=flushing the journal":
            message = systemd.recv(100)
            if message != b"WATCHDOG=1":
                messages.append(message)
        lifespan = [b"STATUS=closing the lifespan"] if LIFESPAN in messages else []
        assert messages == [
            b"STOPPING=1",
            b"STATUS=draining connections",
            *lifespan,  # between the two, where a project has a lifespan (app/lifespan.py)
            b"STATUS=flushing the journal",
        ]
        assert service.wait() == ExitCode.OK
