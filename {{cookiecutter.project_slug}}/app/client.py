"""``python -m app.client``: send lines to the echo service and print the replies.

Modelled on the streams echo client of the asyncio documentation, with the error handling a
command-line tool needs: exit 0 when every message came back byte for byte, 1 with one line
on stderr otherwise (nothing listening, refused by the server, connection lost, timeout, a
reply that is not the echo), 2 for bad arguments.
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


async def echo(host: str, port: int, lines: Sequence[bytes], seconds: float) -> None:
    """Send each line and check that the same bytes come back; raise EchoError if not.

    Connecting may take ``seconds``, and so may the whole exchange after it.
    """
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise EchoError(f"no answer from {host}:{port} within {seconds:g}s") from None
    except OSError as exc:
        raise EchoError(f"nothing is listening on {host}:{port} ({_reason(exc)})") from None
    try:
        async with asyncio.timeout(seconds):
            for line in lines:
                writer.write(line)
                await writer.drain()
                await _expect(reader, line, f"{host}:{port}")
    except TimeoutError:
        raise EchoError(f"no answer from {host}:{port} within {seconds:g}s") from None
    except OSError as exc:
        raise EchoError(f"connection to {host}:{port} lost ({_reason(exc)})") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _expect(reader: asyncio.StreamReader, line: bytes, where: str) -> None:
    """Read exactly the echo of ``line``; explain anything else."""
    try:
        reply = await reader.readexactly(len(line))
    except asyncio.IncompleteReadError as short:
        reply = short.partial
    if reply == line:
        return
    first_line = reply.split(b"\n", 1)[0].decode(errors="replace")
    if first_line.startswith("error: "):
        raise EchoError(f"refused by {where}: {first_line.removeprefix('error: ')}")
    if len(reply) < len(line):
        raise EchoError(f"{where} closed the connection")
    raise EchoError(f"{where} is not an echo service: it answered {first_line[:60]!r}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return int(text)


def _message(text: str) -> bytes:
    if "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("a message is one line: no line breaks")
    return text.encode("utf-8", "surrogateescape") + b"\n"  # any bytes the shell passed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Defaults follow the service's own settings: APP_PORT, and loopback."""
    parser = argparse.ArgumentParser(prog="python -m app.client", description=__doc__)
    parser.add_argument("messages", nargs="*", type=_message, metavar="MESSAGE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=client_port())
    parser.add_argument("--count", type=int, default=1, help="send the messages this many times")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to connect, and for the exchange"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; print each echoed message; return its exit status."""
    args = parse_args(argv)
    lines = (args.messages or [b"hello\n"]) * args.count
    try:
        asyncio.run(echo(args.host, args.port, lines, args.timeout))
    except EchoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        sys.stdout.buffer.write(line)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
