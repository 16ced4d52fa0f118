"""``python -m app.health``: exit 0 if the service is ready (or, with ``--live``, alive).

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
import socket
import sys
from collections.abc import Sequence

from app.config import client_host, client_port
from app.server import TOO_MANY

FULL = "at its connection limit"


def probe(host: str, port: int, timeout: float) -> str | None:
    """Return None if the service answered the ping, ``FULL`` if it is full, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"\n")
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return f"{host}:{port} does not answer: {exc.strerror or exc}"
    if reply == b"\n":
        return None
    if reply == TOO_MANY:
        return FULL
    return f"{host}:{port} answered {reply!r} instead of the ping"


def main(argv: Sequence[str] | None = None) -> int:
    """Probe once; print the reason on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m app.health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--live", action="store_true", help="liveness: a full service passes")
    parser.add_argument("--host", default=None, help="default: from APP_HOST")
    parser.add_argument("--port", type=int, default=client_port(), help="default: APP_PORT")
    parser.add_argument("--timeout", type=float, default=3.0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 1  # --help, or arguments argparse refused
    host = args.host or client_host()
    problem = probe(host, args.port, args.timeout)
    if problem == FULL:
        if args.live:
            return 0
        print(f"not ready: {host}:{args.port} is {FULL}", file=sys.stderr)
        return 1
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
