"""``python -m app.health``: exit 0 if the service answers, 1 if not. For container probes.

It sends an empty line, which the service echoes but does not journal, so probes every few
seconds prove the event loop is alive without filling the journal. A service that answers
``too many connections`` is alive and busy, which counts as healthy: a liveness probe must
not kill a service for being popular. ``shutting down`` does not count. Stdlib and blocking on
purpose: a probe should be a short, dependency-free process. It never exits 2, which Docker
reserves; bad arguments exit 1 like any other failure.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from app.config import client_port
from app.server import TOO_MANY


def probe(host: str, port: int, timeout: float) -> str | None:
    """Return None if the service echoed the ping, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"\n")
            reply = sock.recv(64)
    except OSError as exc:
        return f"{host}:{port} does not answer: {exc.strerror or exc}"
    if reply in (b"\n", TOO_MANY):
        return None
    return f"{host}:{port} answered {reply!r} instead of the ping"


def main(argv: Sequence[str] | None = None) -> int:
    """Probe once; print the reason on failure."""
    parser = argparse.ArgumentParser(prog="python -m app.health", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=client_port())
    parser.add_argument("--timeout", type=float, default=3.0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 1  # --help, or arguments argparse refused
    problem = probe(args.host, args.port, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
