"""Benchmark 3c: what the seam costs, the real service with one seam and with two.

The seam is the server's call per request into the user's ``handle``. The bench does not cut it
out (that meant editing the server's source, which froze its code); it adds a second one built
like the first, from the outside, and measures what that adds: procs/seam_service.py runs the
service through its public entry point with a protocol whose ``handle`` answers either at once
or through one more awaited async echo with its reply checked, swapping the two every 50 ms.

Why alternated in one process: the figure is the ratio of two nearly equal numbers, on a shared
machine whose load drifts over seconds. Both versions see the same process (memory layout,
hash seed), the same clients and the same load from other jobs. Each slice is charged with the
process CPU time spent and the requests handled while its version was in place; a run's cost is
the median over its pairs of neighbouring slices, and the figure is the median over runs, with
their min-max as the spread. The load is ping-pong (one 1 KiB line in flight per connection),
so every read is a batch of one and a call's share of a round trip is the largest it gets.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import servers, throughput
from .stats import median

SLICE_SECONDS = 0.05
"""procs/seam_service.py's SLICE, for the report."""
SLICE_LINE = re.compile(r"^slice (?P<name>one|two) (?P<lines>\d+) (?P<cpu>[0-9.]+)$")


def slice_pairs(run: dict[str, Any]) -> list[float]:
    """Each pair of neighbouring slices (one of each version) as a cost: the two-seam slice's
    CPU per request over the one-seam slice's, minus one."""
    per = [(name, cpu / lines) for name, lines, cpu in run["slices"] if lines]
    costs = []
    for (a, a_us), (b, b_us) in zip(per[::2], per[1::2], strict=False):
        if {a, b} == {"one", "two"}:
            costs.append((a_us / b_us if a == "two" else b_us / a_us) - 1)
    return costs


def run_cost(run: dict[str, Any]) -> float:
    """One run's cost: the median over its slice pairs, so that a slice hit by something else
    (a collection, another job taking the core) does not decide it."""
    return median(slice_pairs(run))


def alternated(section: dict[str, Any]) -> dict[str, float] | None:
    """Median and min-max of the runs' costs, and the CPU per request of each version."""
    runs = [r for r in section.get("runs") or [] if slice_pairs(r)]
    if not runs:
        return None
    costs = [run_cost(r) for r in runs]

    def us(name: str) -> float:
        return 1e6 * median(
            [cpu / lines for r in runs for n, lines, cpu in r["slices"] if n == name and lines]
        )

    return {
        "runs": len(runs),
        "slice_pairs": sum(len(slice_pairs(r)) for r in runs),
        "median": median(costs),
        "min": min(costs),
        "max": max(costs),
        "us_one": us("one"),
        "us_two": us("two"),
    }


def run_alternated(
    project: Path,
    scratch: Path,
    load: throughput.Load,
    *,
    reps: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """`reps` processes, each alternating the two versions; the slices of the counted window."""
    spec = servers.seam_service(project, scratch / "j-seam.log")
    runs: list[dict[str, Any]] = []
    for rep in range(reps):
        try:
            child, port = servers.start(spec)
        except (RuntimeError, ValueError) as exc:
            return {"unavailable": f"{type(exc).__name__}: {str(exc)[-600:]}", "runs": runs}
        try:
            began = time.perf_counter()
            client = load.run("pingpong", port, child.pid)
            ended = time.perf_counter()
        finally:
            servers.stop(child, spec.stop_signal)
            (scratch / "j-seam.log").unlink(missing_ok=True)
        if client.returncode != 0:
            return {"unavailable": f"load generator: {client.stderr[-600:]}", "runs": runs}
        with child.stderr.cond:
            stamped = list(zip(child.stderr.times, child.stderr.lines, strict=True))
        slices = [
            (m.group("name"), int(m.group("lines")), float(m.group("cpu")))
            for at, line in stamped
            if began + load.warmup + 0.1 <= at <= ended and (m := SLICE_LINE.match(line))
        ]
        run = {"slices": slices, "client": json.loads(client.stdout)}
        if not slice_pairs(run):
            return {"unavailable": "no slices reported: " + " | ".join(child.stderr.lines[-5:])}
        runs.append(run)
        log(f"seam run {rep + 1}/{reps}: {run_cost(run):+.1%} server CPU per request")
    return {"runs": runs, "slice_seconds": SLICE_SECONDS}
