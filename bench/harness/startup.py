"""Benchmark 4: start-up to ready, `python -m app` until its `listening on` line.

The floor is `python -c "import asyncio"` run to exit: an interpreter that loads asyncio and
nothing else, which no asyncio service can beat. Both are timed from just before the fork,
alternating, with the service in its default configuration (uvloop on where installed).
The service is then stopped with SIGTERM, untimed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

from . import servers
from .procs import Child


def service_once(project: Path, journal: Path) -> float:
    spec = servers.generated_service(project, journal)
    spec.env.pop("APP_USE_UVLOOP", None)  # type: ignore[union-attr]
    child = Child(spec.argv, cwd=spec.cwd, env=spec.env)
    try:
        child.wait_line(child.stderr, servers.SERVICE_READY)
        ready = child.stderr.times[child.last_index] - child.started
        child.signal_and_time_exit(signal.SIGTERM)
    finally:
        child.kill()
    return ready


def floor_once() -> float:
    child = Child([sys.executable, "-c", "import asyncio"])
    return child.wait_exit(20) - child.started


def run_all(
    project: Path, scratch: Path, *, reps: int, log: Callable[[str], None]
) -> dict[str, list[float]]:
    floor_once()  # warm the page cache; not recorded
    service_once(project, scratch / "startup-journal.log")
    results: dict[str, list[float]] = {"service": [], "floor": []}
    for rep in range(reps):
        order = ["service", "floor"] if rep % 2 == 0 else ["floor", "service"]
        for what in order:
            seconds = (
                service_once(project, scratch / "startup-journal.log")
                if what == "service"
                else floor_once()
            )
            results[what].append(seconds)
        log(
            f"startup rep {rep + 1}/{reps}: service {results['service'][-1] * 1000:.0f} ms, "
            f"import asyncio {results['floor'][-1] * 1000:.0f} ms"
        )
    return results
