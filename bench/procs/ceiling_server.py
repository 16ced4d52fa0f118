"""The throughput ceiling: the smallest echo server asyncio can run, a uvloop Protocol.

Why: it shows how fast a line-echo server can go on this machine with this client, so the
generated service's figure reads as a fraction of what is possible. No streams, no tasks, no
journal, no limits: it splits on newlines and writes complete lines straight back.
Prints `ready PORT` on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import cast


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        if cut:
            self.transport.write(data[:cut])


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
    sys.exit(0)
