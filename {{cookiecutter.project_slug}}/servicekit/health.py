"""``python -m servicekit.health``: exit 0 if the service is ready (or, with ``--live``, alive).

For container and Kubernetes probes. It sends an empty line, which the server answers with an
empty line and does not journal, so probes every few seconds prove the event loop is alive
without filling the journal, whatever protocol ``app/protocol.py`` speaks.

Two questions, two modes:

- **Ready** (the default): should this instance get new connections? Not while it is at
  ``APP_MAX_CONNECTIONS``: it would refuse them, so a load balancer should send them
  elsewhere until a slot frees.
- **Alive** (``--live``): is it worth keeping, or should it be restarted? A service at its
  connection limit answers at once that it is full, which is alive and busy: a liveness
  probe must not kill a service for being popular.

``shutting down``, silence, or no listener fail both. The address is the one the service
binds (``APP_HOST``, with ``0.0.0.0`` probed on 127.0.0.1 and ``::`` on ``::1``) and its port
(``APP_PORT``), from the environment or ``.env`` as the service reads them. Stdlib and
blocking on purpose: a probe should be a short, dependency-free process. It never exits 2,
which Docker reserves; bad arguments exit 1 like any other failure.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from servicekit.config import client_host, client_port, port_argument, shown_value
from servicekit.server import TOO_MANY

FULL = "at its connection limit"


def probe(host: str, port: int, timeout: float) -> str | None:
    """Return None if the service answered the ping, ``FULL`` if it is full, else why not.

    ``timeout`` bounds the whole probe, not each step: a server that sends one byte a
    second would otherwise keep a per-read timeout from ever expiring.
    """
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"\n")
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < 256:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(256 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except TimeoutError:
        return f"{host}:{port} did not answer within {timeout:g} s"
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode
        return f"{host}:{port} does not answer: {getattr(exc, 'strerror', None) or exc}"
    if reply == b"\n":
        return None
    if reply == TOO_MANY:
        return FULL
    return f"{host}:{port} answered {reply!r} instead of the ping"


class _Refused(Exception):
    """An argument or setting the probe cannot use; the message says which."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Refused(message)  # one line from main(), not argparse's usage and status 2


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{shown_value(text)} is not a positive number of seconds")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Probe once; print the reason on failure."""
    parser = _Parser(
        prog="python -m servicekit.health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--live", action="store_true", help="liveness: a full service passes")
    parser.add_argument("--host", default=None, help="default: from APP_HOST")
    parser.add_argument("--port", type=port_argument, default=None, help="default: APP_PORT")
    parser.add_argument("--timeout", type=_timeout, default=3.0)
    try:
        args = parser.parse_args(argv)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SystemExit:  # --help
        return 0
    port = args.port
    if port is None:
        try:
            port = port_argument(client_port())
        except argparse.ArgumentTypeError as exc:
            print(f"error: APP_PORT={exc}", file=sys.stderr)
            return 1
    host = args.host or client_host()
    problem = probe(host, port, args.timeout)
    if problem == FULL:
        if args.live:
            return 0
        print(f"not ready: {host}:{port} is {FULL}", file=sys.stderr)
        return 1
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
