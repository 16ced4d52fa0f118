"""Benchmark 3c: what the seam costs, the same server with and without ``protocol.handle``.

Why a section of its own: the figure is the ratio of two nearly equal numbers, on a shared
machine whose load drifts over seconds. Spread over the throughput section's long rotation, the
two sides of one comparison ran up to a minute apart, and a drift of a few percent showed up as
seam cost (or hid it). Two methods here, each giving one ratio per repetition, reported as the
median of those ratios with their min-max, so the spread is in the report beside it:

- alternated in one process (the verdict): procs/service_ablation.py --alternate swaps the
  server's batch method between the two versions every 50 ms and charges each slice with the
  process CPU time spent and the requests handled while its version was in place. Both see the
  same process (memory layout, hash seed), the same clients and the same load from other jobs.
- back-to-back processes (the cross-check): the same script started with ``--seam`` then
  ``--no-seam`` (order alternated from pair to pair), server CPU per round trip of each from
  /proc over the load generator's counted window. Process-to-process differences stay in it,
  so its spread is wider.

Both versions are the server's batch method recompiled from its source at start: unchanged,
or with the call through ``protocol.handle`` (its drive and the reply check) replaced by
appending the line itself. The load is ping-pong (one 1 KiB line in flight per connection), so
every read is a batch of one and the call's share of a round trip is the largest it gets.
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
"""procs/service_ablation.py's SLICE, for the report."""
SLICE_LINE = re.compile(r"^slice (?P<name>seam|no-seam) (?P<lines>\d+) (?P<cpu>[0-9.]+)$")

SEAM = "service (uvloop), seam recompiled"
NO_SEAM = "service (uvloop), no seam"


def cost(pair: dict[str, Any]) -> float:
    """Extra server CPU per round trip with the seam, as a fraction of the time without it."""
    return float(pair["without"]["per_cpu_second"] / pair["with"]["per_cpu_second"] - 1)


def slice_pairs(run: dict[str, Any]) -> list[float]:
    """Each pair of neighbouring slices (one of each loop) as a cost: the seam loop's CPU per
    request over the other's, minus one."""
    per = [(name, cpu / lines) for name, lines, cpu in run["slices"] if lines]
    costs = []
    for (a, a_us), (b, b_us) in zip(per[::2], per[1::2], strict=False):
        if {a, b} == {"seam", "no-seam"}:
            costs.append((a_us / b_us if a == "seam" else b_us / a_us) - 1)
    return costs


def run_cost(run: dict[str, Any]) -> float:
    """One alternated run's cost: the median over its slice pairs, so that a slice hit by
    something else (a collection, another job taking the core) does not decide it."""
    return median(slice_pairs(run))


def alternated(section: dict[str, Any]) -> dict[str, float] | None:
    """Median and min-max of the alternated runs' costs, and the CPU per request each side."""
    runs = section.get("runs") or []
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
        "us_with": us("seam"),
        "us_without": us("no-seam"),
    }


def summary(section: dict[str, Any]) -> dict[str, float] | None:
    """Median and min-max of the per-pair costs, and the rate ratio's median."""
    pairs = section.get("pairs") or []
    if not pairs:
        return None
    costs = [cost(p) for p in pairs]
    rates = [p["with"]["lines_per_s"] / p["without"]["lines_per_s"] for p in pairs]
    return {
        "pairs": len(pairs),
        "median": median(costs),
        "min": min(costs),
        "max": max(costs),
        "rate_median": median(rates),
        "us_with": 1e6 / median([p["with"]["per_cpu_second"] for p in pairs]),
        "us_without": 1e6 / median([p["without"]["per_cpu_second"] for p in pairs]),
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
    spec = servers.service_ablation(project, scratch / "j-alternate.log", "--alternate")
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
            (scratch / "j-alternate.log").unlink(missing_ok=True)
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
        if not any(s[0] == "seam" and s[1] for s in slices) or not any(
            s[0] == "no-seam" and s[1] for s in slices
        ):
            return {"unavailable": "no slices reported: " + " | ".join(child.stderr.lines[-5:])}
        runs.append(run)
        log(f"seam alternated run {rep + 1}/{reps}: {run_cost(run):+.1%} server CPU per request")
    return {"runs": runs, "slice_seconds": SLICE_SECONDS}


def run_pairs(
    project: Path,
    scratch: Path,
    load: throughput.Load,
    *,
    reps: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """`reps` pairs, order alternated; or why the build has no seam-less variant."""
    with_seam = servers.service_ablation(project, scratch / "j-seam.log", "--seam")
    without = servers.service_ablation(project, scratch / "j-no-seam.log", "--no-seam")
    pairs: list[dict[str, Any]] = []
    for rep in range(reps):
        order = (with_seam, without) if rep % 2 == 0 else (without, with_seam)
        got: dict[str, throughput.Sample] = {}
        for spec in order:
            try:
                sample, _ = throughput.measure_once(spec, "pingpong", load)
            except (RuntimeError, ValueError) as exc:
                why = f"{type(exc).__name__}: {str(exc)[-600:]}"
                log(f"seam: {spec.name} not available: {why}")
                return {"unavailable": why, "pairs": pairs}
            got[spec.name] = sample
        pair = {
            "order": "with first" if rep % 2 == 0 else "without first",
            "with": got[SEAM].as_dict(),
            "without": got[NO_SEAM].as_dict(),
        }
        pairs.append(pair)
        log(
            f"seam pair {rep + 1}/{reps}: {cost(pair):+.1%} server CPU per round trip "
            f"({got[SEAM].per_cpu_second:,.0f} vs {got[NO_SEAM].per_cpu_second:,.0f} per cpu-s)"
        )
    return {"pairs": pairs, "conns": load.conns, "size": load.size, "seconds": load.seconds}
