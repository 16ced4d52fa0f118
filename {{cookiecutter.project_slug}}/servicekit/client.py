"""``python -m servicekit.client``: send requests to the service and print each reply.

Requests are the arguments, one per argument, or else the lines read from stdin. Each request
is one line, and the service answers each with one line, whatever the protocol: the client
sends a request, prints its reply, then sends the next. Exit 0 when every request was
answered; 1 with one line on stderr otherwise (nothing listening, refused by the server,
connection lost, timeout); 2 for bad arguments.

A service that stops drains its connections: it answers what it has received, then ends
each connection with a refusal, ``error: shutting down``; it refuses the same way a client
over the connection limit or a line too long or too slow. A refusal starts with a byte no
reply starts with (REFUSAL, ASCII NAK), so it cannot be mistaken for a reply, whatever the
protocol answers. The request it answers was not handled (it is not in the journal), and
neither were the ones after it: the client exits 1 and names the first of them, so they
can be sent again, to another copy or after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterable, Sequence

from servicekit.config import client_port, port_argument
from servicekit.exitcodes import os_reason
from servicekit.server import REFUSAL

LONGEST_REPLY = 1 << 24
"""Bytes a reply may have before the client gives up on it."""


class ClientError(Exception):
    """The exchange failed; the message says how."""


async def exchange(
    host: str, port: int, requests: Iterable[bytes], seconds: float, out: Callable[[bytes], None]
) -> None:
    """Send each request (a line ending in a newline) and pass its reply line to ``out``.

    Connecting may take ``seconds``, and so may each reply. Raises ClientError.
    """
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(host, port, limit=LONGEST_REPLY)
    except TimeoutError:
        raise ClientError(f"no answer from {where} within {seconds:g}s") from None
    except OSError as exc:
        raise ClientError(f"nothing is listening on {where} ({os_reason(exc)})") from None
    try:
        for number, request in enumerate(requests, 1):
            writer.write(request)
            async with asyncio.timeout(seconds):
                await writer.drain()
                reply = await reader.readline()
            if reply.startswith(REFUSAL):
                refusal = reply[1:80].decode(errors="replace").removeprefix("error: ").rstrip()
                raise ClientError(
                    f"refused by {where}: {refusal}; request {number} and any after it "
                    "were not handled"
                )
            if not reply.endswith(b"\n"):
                raise ClientError(f"{where} closed the connection without a reply")
            out(reply)
    except TimeoutError:
        raise ClientError(f"no answer from {where} within {seconds:g}s") from None
    except ValueError:  # a line longer than the reader's limit
        raise ClientError(f"{where} sent a reply over {LONGEST_REPLY} bytes") from None
    except OSError as exc:
        raise ClientError(f"connection to {where} lost ({os_reason(exc)})") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def print_reply(reply: bytes) -> None:
    """Print at once, so an interactive session sees each reply before typing on."""
    sys.stdout.buffer.write(reply)
    sys.stdout.flush()


def _message(text: str) -> bytes:
    if "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("a message is one line: no line breaks")
    return text.encode("utf-8", "surrogateescape") + b"\n"  # any bytes the shell passed


def _stdin_lines() -> Iterable[bytes]:
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\n") + b"\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Defaults follow the service's own settings: APP_PORT, and loopback."""
    parser = argparse.ArgumentParser(prog="python -m servicekit.client", description=__doc__)
    parser.add_argument(
        "messages", nargs="*", type=_message, metavar="MESSAGE", help="default: stdin's lines"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_argument, default=client_port())
    parser.add_argument("--count", type=int, default=1, help="send the messages this many times")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to connect, and for each reply"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; print each reply; return its exit status."""
    args = parse_args(argv)
    requests = args.messages * args.count if args.messages else _stdin_lines()
    try:
        asyncio.run(exchange(args.host, args.port, requests, args.timeout, print_reply))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
