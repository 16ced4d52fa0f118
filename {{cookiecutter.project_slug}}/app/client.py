"""``python -m app.client``: send lines to the echo service and print the replies.

Modelled on the streams echo client of the asyncio documentation, with the error handling a
command-line tool needs: exit 0 when every message came back, 1 with one line on stderr
otherwise (nothing listening, refused by the server, connection lost, timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from app.config import client_port


class EchoError(Exception):
    """The exchange failed; the message says how."""


async def echo(host: str, port: int, messages: Sequence[str], step_seconds: float) -> list[str]:
    """Send each message as one line, return the replies in order.

    Connecting, and the whole exchange, may each take ``step_seconds``.
    """
    try:
        async with asyncio.timeout(step_seconds):
            reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise EchoError(f"nothing is listening on {host}:{port} ({exc.strerror or exc})") from None
    except TimeoutError:
        raise EchoError(f"no answer from {host}:{port} within {step_seconds:g}s") from None
    replies: list[str] = []
    try:
        async with asyncio.timeout(step_seconds):
            for message in messages:
                writer.write(message.encode() + b"\n")
                await writer.drain()
                reply = await reader.readline()
                if not reply.endswith(b"\n"):
                    raise EchoError(f"{host}:{port} closed the connection")
                text = reply.decode(errors="replace").rstrip("\n")
                if text.startswith("error: ") and text != message:
                    raise EchoError(f"refused by {host}:{port}: {text.removeprefix('error: ')}")
                replies.append(text)
    except TimeoutError:
        raise EchoError(f"no answer from {host}:{port} within {step_seconds:g}s") from None
    except ConnectionError as exc:
        raise EchoError(f"connection to {host}:{port} lost ({exc})") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return replies


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Defaults follow the service's own settings: APP_PORT, and loopback."""
    parser = argparse.ArgumentParser(prog="python -m app.client", description=__doc__)
    parser.add_argument("messages", nargs="*", default=["hello"], metavar="MESSAGE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=client_port())
    parser.add_argument("--count", type=int, default=1, help="send the messages this many times")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per step")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; return its exit status."""
    args = parse_args(argv)
    try:
        replies = asyncio.run(echo(args.host, args.port, args.messages * args.count, args.timeout))
    except EchoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for reply in replies:
        print(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
