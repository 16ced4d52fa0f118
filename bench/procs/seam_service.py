"""The real service with one seam, then two, alternated in one process: what the seam costs.

Why this way: the seam is the call the server makes per request into the user's ``handle``.
Cutting it out means editing the server, which froze the server's code (an earlier version
recompiled its batch method from matching source lines). Adding one is possible from the
outside: this runs the generated service exactly as ``python -m app`` does, through its public
entry point ``servicekit.main.main(protocol)``, with a protocol whose ``handle`` answers either
at once (one seam: the server's call) or through a second seam built like the first (await an
async echo, check that its reply is one line of bytes). The extra server CPU per request of the
second is the price of one seam, measured in the service as it is, whatever its internals.

A thread swaps the two every 50 ms (``alternating.py``, which goes first drawn at random, so
work that comes at a fixed time after the start does not always land on the same side) and
prints, for each slice it ends, ``slice one|two REQUESTS CPU_S`` on stderr: the requests
``handle`` saw and the process CPU time (all threads) spent while that version was in place.
Both versions see the same process, clients and machine load; both count their requests the same
way.

    python seam_service.py PROJECT_DIR     (run with the project as cwd; stopped with SIGKILL)
"""

from __future__ import annotations

import sys
import threading
import types

from alternating import alternate

NEWLINE = ord("\n")


def bench_protocol() -> tuple[types.ModuleType, list[int], list[bool]]:
    """A protocol module for ``servicekit.main.main``, its request count and its switch."""
    count = [0]
    second = [False]

    async def echo(request: bytes) -> bytes:
        return request

    async def handle(request: bytes) -> bytes:
        count[0] += 1
        if second[0]:
            reply = await echo(request)
            if type(reply) is not bytes or NEWLINE in reply:
                return b"error: bad reply"
            return reply
        return request

    def recover(request: bytes) -> None:
        """Stateless: the service need not read the journal."""

    protocol = types.ModuleType("bench_seam_protocol")
    protocol.handle = handle  # type: ignore[attr-defined]
    protocol.recover = recover  # type: ignore[attr-defined]
    return protocol, count, second


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    from servicekit.main import main as service_main

    protocol, count, second = bench_protocol()

    def use(two: bool) -> None:
        second[0] = two

    threading.Thread(target=alternate, args=(("one", "two"), use, count), daemon=True).start()
    return int(service_main(protocol, []))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
