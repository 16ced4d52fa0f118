"""The real service with metrics on, its batches timed and not, alternated in one process.

Why this way: with ``APP_METRICS_PORT`` on, the service's only work per batch that it does not
do with metrics off is timing the batch into a histogram (the endpoint is served by the event
loop and only when scraped; the counters are kept either way). That costs about 1% of a
ping-pong round trip, which two processes run one after the other cannot resolve on a shared
machine. This runs the generated service exactly as ``python -m app`` does, through its public
entry point ``servicekit.main.main(protocol)``, with metrics on, and takes the batch histogram
out and puts it back (``server.handling``, the one switch the server checks per batch).

A thread swaps the two every 50 ms (``alternating.py``, which goes first drawn at random) and
prints, for each slice it ends, ``slice on|off REQUESTS CPU_S`` on stderr: the requests
``handle`` saw and the process CPU time (all threads) spent while that version was in place. A
batch that spans a swap may be timed from a stale start: one wrong observation, which the bench
does not read.

    python metrics_service.py PROJECT_DIR     (run with the project as cwd; stopped with SIGKILL)
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from alternating import alternate, counting_echo


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    from servicekit import metrics
    from servicekit.main import main as service_main

    protocol, count = counting_echo("bench_metrics_protocol")
    opened = metrics.open_for

    async def open_and_swap(service: Any) -> Any:
        endpoint = await opened(service)
        server = service.server
        histogram = server.handling
        if histogram is None:
            sys.exit("metrics_service: metrics are on but the server times no batch")

        def use(on: bool) -> None:
            server.handling = histogram if on else None

        threading.Thread(target=alternate, args=(("off", "on"), use, count), daemon=True).start()
        return endpoint

    metrics.open_for = open_and_swap  # type: ignore[assignment]
    return int(service_main(protocol, []))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
