"""The real service with metrics on, its batches timed and not, alternated in one process.

Why this way: with ``APP_METRICS_PORT`` on, the service's only work per batch that it does not
do with metrics off is timing the batch into a histogram (the endpoint is served by the event
loop and only when scraped; the counters are kept either way). That costs about 1% of a
ping-pong round trip, which two processes run one after the other cannot resolve on a shared
machine. This runs the generated service exactly as ``python -m app`` does, through its public
entry point ``servicekit.main.main(protocol)``, with metrics on, and takes the batch histogram
out and puts it back (``server.handling``, the one switch the server checks per batch).

A thread swaps the two every SLICE seconds (which goes first is drawn at random) and prints,
for each slice it ends, ``slice on|off REQUESTS CPU_S`` on stderr: the requests ``handle`` saw
and the process CPU time (all threads) spent while that version was in place. A batch that
spans a swap may be timed from a stale start: one wrong observation, which the bench does not
read.

    python metrics_service.py PROJECT_DIR     (run with the project as cwd; stopped with SIGKILL)
"""

from __future__ import annotations

import random
import sys
import threading
import time
import types
from typing import Any

SLICE = 0.05
"""Seconds each version runs before the other takes over."""


def bench_protocol() -> tuple[types.ModuleType, list[int]]:
    """An echo protocol module for ``servicekit.main.main``, and its request count."""
    count = [0]

    async def handle(request: bytes) -> bytes:
        count[0] += 1
        return request

    def recover(request: bytes) -> None:
        """Stateless: the service need not read the journal."""

    protocol = types.ModuleType("bench_metrics_protocol")
    protocol.handle = handle  # type: ignore[attr-defined]
    protocol.recover = recover  # type: ignore[attr-defined]
    return protocol, count


def swap(server: Any, count: list[int]) -> None:
    """Alternate the versions forever, printing each finished slice's requests and CPU."""
    histogram = server.handling
    on = random.random() < 0.5  # which goes first: see seam_service.py
    server.handling = histogram if on else None
    cpu, seen = time.process_time(), count[0]
    while True:
        time.sleep(SLICE)
        name = "on" if on else "off"
        on = not on
        server.handling = histogram if on else None
        now, total = time.process_time(), count[0]
        print(f"slice {name} {total - seen} {now - cpu:.6f}", file=sys.stderr, flush=True)
        cpu, seen = time.process_time(), total  # the print is charged to neither


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    from servicekit import metrics
    from servicekit.main import main as service_main

    protocol, count = bench_protocol()
    opened = metrics.open_for

    async def open_and_swap(service: Any) -> Any:
        endpoint = await opened(service)
        if service.server.handling is None:
            sys.exit("metrics_service: metrics are on but the server times no batch")
        threading.Thread(target=swap, args=(service.server, count), daemon=True).start()
        return endpoint

    metrics.open_for = open_and_swap  # type: ignore[assignment]
    return int(service_main(protocol, []))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
