"""``python -m app.health``: exit 0 if the service answers, 1 if not. For container probes.

It sends an empty line, which the service echoes but does not journal, so probes every few
seconds prove the event loop is alive without filling the journal. Stdlib and blocking on
purpose: a probe should be a short, dependency-free process.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from app.config import client_port


def probe(host: str, port: int, timeout: float) -> str | None:
    """Return None if the service echoed the ping, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"\n")
            reply = sock.recv(64)
    except OSError as exc:
        return f"{host}:{port} does not answer: {exc.strerror or exc}"
    if reply != b"\n":
        return f"{host}:{port} answered {reply!r} instead of the ping"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Probe once; print the reason on failure."""
    parser = argparse.ArgumentParser(prog="python -m app.health", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=client_port())
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    problem = probe(args.host, args.port, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
