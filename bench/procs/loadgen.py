"""Echo load generator in Python, the fallback when no C compiler builds loadgen.c.

Strict ping-pong of fixed-size lines over N connections, on uvloop (--depth N: N lines per
write, all echoed before the next write).

Why built like this: the figure must measure the server, not the client. The client is a bare
asyncio.Protocol on uvloop (no streams layer, no per-line task), one process, so it spends far
less CPU per round trip than the server; it reads its own and the server's CPU time over the
measured window so the report can show who was busy. Each connection keeps exactly one line in
flight and checks every echo byte for byte. After a warm-up, round trips are counted for a fixed
window; the result is one JSON object on stdout.

    python loadgen.py --port P --conns 50 --size 1024 [--depth 16] --warmup 0.5 --seconds 3
                      [--server-pid N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import cast


def proc_cpu(pid: int) -> float:
    """CPU seconds of the server and its live child processes (APP_WORKERS > 1 workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return own + sum(proc_cpu(int(kid)) for kid in kids)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def self_sys() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


class PingPong(asyncio.Protocol):
    """Send one line, wait for its full echo, send the next."""

    def __init__(
        self, line: bytes, depth: int, counter: list[int], lost: asyncio.Future[None]
    ) -> None:
        self.line = line
        self.depth = depth
        self.counter = counter
        self.lost = lost
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.stopping = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.line)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < len(self.line):
            return
        if self.buf != self.line:
            if not self.lost.done():
                self.lost.set_exception(RuntimeError(f"bad echo: {bytes(self.buf[:40])!r}"))
            self.transport.close()  # type: ignore[union-attr]
            return
        self.buf.clear()
        self.counter[0] += self.depth
        assert self.transport is not None
        if self.stopping:  # close only between round trips, so no echo is cut off (no RST)
            self.transport.close()
        else:
            self.transport.write(self.line)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)
        if self.stopping:
            return
        if not self.lost.done():
            self.lost.set_result(None)


async def drive(args: argparse.Namespace) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    line = (b"x" * (args.size - 1) + b"\n") * args.depth
    counter = [0]
    lost: asyncio.Future[None] = loop.create_future()
    protocols: list[PingPong] = []
    for _ in range(args.conns):
        _, protocol = await loop.create_connection(
            lambda: PingPong(line, args.depth, counter, lost), args.host, args.port
        )
        protocols.append(protocol)
    await asyncio.sleep(args.warmup)  # warm-up is load, not synchronisation
    n0, t0, c0, k0 = counter[0], time.perf_counter(), self_cpu(), self_sys()
    s0 = proc_cpu(args.server_pid) if args.server_pid else 0.0
    done, _ = await asyncio.wait([lost], timeout=args.seconds)
    n1, t1, c1, k1 = counter[0], time.perf_counter(), self_cpu(), self_sys()
    s1 = proc_cpu(args.server_pid) if args.server_pid else 0.0
    for protocol in protocols:
        protocol.stopping = True
    await asyncio.wait_for(asyncio.gather(*(p.closed for p in protocols)), 10)
    if done:
        lost.result()  # raises the bad-echo error, if that is what ended it
        raise RuntimeError("server closed a connection during the measurement")
    wall = t1 - t0
    return {
        "lines_per_s": (n1 - n0) / wall,
        "roundtrips_per_s": (n1 - n0) / wall,
        "mib_per_s": (n1 - n0) * args.size * 2 / wall / 2**20,
        "client_cpu": (c1 - c0) / wall,
        "client_sys": (k1 - k0) / wall,
        "server_cpu": (s1 - s0) / wall if args.server_pid else float("nan"),
        "seconds": wall,
        "client": "python",
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--server-pid", type=int, default=0)
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(drive(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
