"""Benchmarks 3c, 3d and 3e: what one piece of per-request work costs, measured in one process.

Three figures here are ratios of nearly equal numbers: the seam (the server's call per request
into the user's ``handle``), the metrics' batch timing and the journal's checksum. Between
processes they drown in the noise of a shared machine: for the metrics, the same two services
run one after the other read from 0.79 to 1.19 of each other in ping-pong, for a cost near 1%;
for the checksum, 0.80, 0.95 and 1.04 in three full runs. So each is measured inside one
process that swaps two versions of itself every ``SLICE_SECONDS``:

- 3c, the seam (procs/seam_service.py): ``handle`` answers at once (``one``: the server's one
  seam) or through a second seam built like the first (``two``). The bench does not cut the
  seam out (that meant editing the server's source, which froze its code); it adds one.
- 3d, the metrics (procs/metrics_service.py): the service runs with ``APP_METRICS_PORT`` on and
  its batch histogram in place (``on``) or taken out (``off``), so a batch is timed or not.
- 3e, the checksum (procs/checksum_service.py): the journal's records are written with their
  CRC-32 (``crc``, as shipped) or as plain lines (``plain``).

Both versions see the same process (memory layout, hash seed), the same clients and the same
load from other jobs. Each slice is charged with the process CPU time spent and the requests
handled while its version was in place; a run's cost is the median over its pairs of
neighbouring slices, and the figure is the median over runs, with their min-max as the spread.
The load is ping-pong (one 1 KiB line in flight per connection), so every read is a batch of
one and the per-request (or per-batch) work's share of a round trip is the largest it gets. The
checksum is paid per byte, not per batch, so it is measured pipelined too, where the rest of the
work per line is smallest.
"""

from __future__ import annotations

import json
import re
import time
import timeit
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from . import servers, throughput
from .stats import median

SLICE_SECONDS = 0.05
"""The procs' SLICE, for the report."""
SLICE_LINE = re.compile(r"^slice (?P<name>\w+) (?P<lines>\d+) (?P<cpu>[0-9.]+)$")


class Versions(NamedTuple):
    """The names a proc prints for its two versions: ``extra`` does the work ``base`` does not."""

    base: str
    extra: str


SEAM = Versions("one", "two")
METRICS = Versions("off", "on")
CHECKSUM = Versions("plain", "crc")
MODES = ("pingpong", "pipeline")


def slice_pairs(run: dict[str, Any], versions: Versions) -> list[float]:
    """Each pair of neighbouring slices (one of each version) as a cost: the ``extra`` slice's
    CPU per request over the ``base`` slice's, minus one."""
    per = [(name, cpu / lines) for name, lines, cpu in run["slices"] if lines]
    costs = []
    for (a, a_us), (b, b_us) in zip(per[::2], per[1::2], strict=False):
        if {a, b} == set(versions):
            costs.append((a_us / b_us if a == versions.extra else b_us / a_us) - 1)
    return costs


def run_cost(run: dict[str, Any], versions: Versions) -> float:
    """One run's cost: the median over its slice pairs, so that a slice hit by something else
    (a collection, another job taking the core) does not decide it."""
    return median(slice_pairs(run, versions))


def summary(section: dict[str, Any], versions: Versions) -> dict[str, float] | None:
    """Median and min-max of the runs' costs, and the CPU per request of each version."""
    runs = [r for r in section.get("runs") or [] if slice_pairs(r, versions)]
    if not runs:
        return None
    costs = [run_cost(r, versions) for r in runs]

    def us(name: str) -> float:
        return 1e6 * median(
            [cpu / lines for r in runs for n, lines, cpu in r["slices"] if n == name and lines]
        )

    return {
        "runs": len(runs),
        "slice_pairs": sum(len(slice_pairs(r, versions)) for r in runs),
        "median": median(costs),
        "min": min(costs),
        "max": max(costs),
        "us_base": us(versions.base),
        "us_extra": us(versions.extra),
    }


def run(
    spec: servers.ServerSpec,
    versions: Versions,
    load: throughput.Load,
    *,
    reps: int,
    log: Callable[[str], None],
    mode: str = "pingpong",
) -> dict[str, Any]:
    """`reps` processes of ``spec``, each alternating its two versions under ``mode``'s load;
    the slices of each run's counted window."""
    runs: list[dict[str, Any]] = []
    for rep in range(reps):
        try:
            child, port = servers.start(spec)
        except (RuntimeError, ValueError) as exc:
            return {"unavailable": f"{type(exc).__name__}: {str(exc)[-600:]}", "runs": runs}
        try:
            began = time.perf_counter()
            client = load.run(mode, port, child.pid)
            ended = time.perf_counter()
        finally:
            servers.stop(child, spec.stop_signal)
            if spec.journal is not None:
                spec.journal.unlink(missing_ok=True)
        if client.returncode != 0:
            return {"unavailable": f"load generator: {client.stderr[-600:]}", "runs": runs}
        with child.stderr.cond:
            stamped = list(zip(child.stderr.times, child.stderr.lines, strict=True))
        slices = [
            (m.group("name"), int(m.group("lines")), float(m.group("cpu")))
            for at, line in stamped
            if began + load.warmup + 0.1 <= at <= ended and (m := SLICE_LINE.match(line))
        ]
        one = {"slices": slices, "client": json.loads(client.stdout)}
        if not slice_pairs(one, versions):
            return {"unavailable": "no slices reported: " + " | ".join(child.stderr.lines[-5:])}
        runs.append(one)
        cost = run_cost(one, versions)
        log(f"{spec.name}, {mode}, run {rep + 1}/{reps}: {cost:+.1%} server CPU per request")
    return {"runs": runs, "slice_seconds": SLICE_SECONDS, "mode": mode}


def seam(project: Path, scratch: Path, load: throughput.Load, **kw: Any) -> dict[str, Any]:
    """3c: the service with one seam and with two."""
    return run(servers.seam_service(project, scratch / "j-seam.log"), SEAM, load, **kw)


def metrics(project: Path, scratch: Path, load: throughput.Load, **kw: Any) -> dict[str, Any]:
    """3d: the service with metrics on, its batches timed and not."""
    return run(
        servers.metrics_timing_service(project, scratch / "j-timing.log"), METRICS, load, **kw
    )


def unavailable(section: dict[str, Any]) -> str:
    """Why a section of one run per mode (``checksum``'s) has no runs, or "" if none says."""
    return next(
        (section[m]["unavailable"] for m in MODES if "unavailable" in section.get(m, {})), ""
    )


def crc32_floor(size: int) -> dict[str, float]:
    """What one ``size``-byte record's checksum costs in this Python, in µs (best of 5): zlib's
    CRC-32 alone, and with the record's suffix formatted as ``encode`` does. The checksum's
    cost in the service cannot be below this. ``checksum`` takes it before and after its
    runs and keeps the lower, so that a moment's load (a server still exiting) does not
    raise the floor."""

    def best(statement: str) -> float:
        timer = timeit.Timer(statement, globals={"crc32": zlib.crc32, "line": bytes(size)})
        number, _ = timer.autorange()
        return 1e6 * min(timer.repeat(5, number)) / number

    return {"crc32_us": best("crc32(line)"), "record_us": best('b" %08x\\n" % crc32(line)')}


def checksum(project: Path, scratch: Path, load: throughput.Load, **kw: Any) -> dict[str, Any]:
    """3e: the service with its journal records checksummed and not, in both modes, and the
    checksum's own floor."""
    before = crc32_floor(load.size)
    runs = {
        mode: run(
            servers.checksum_service(project, scratch / f"j-checksum-{mode}.log"),
            CHECKSUM,
            load,
            mode=mode,
            **kw,
        )
        for mode in MODES
    }
    after = crc32_floor(load.size)
    return {"floor": {key: min(before[key], after[key]) for key in before}, **runs}
