"""The journalling bound: what appending 1 KiB lines to a file costs per line, on this disk.

Why: a server that journals every line before replying pays at least this per line on top of
what a bare echo pays, so a journalling server's ratio to the bare echo has a ceiling of its
own: bound = 1 / (1 + bare_lines_per_cpu_second * cpu_seconds_per_line). The report shows it
next to the pipelined figure. Written the way a group commit writes: 16 lines per write(),
appended to a file in the same folder as the services' journals, no fsync, CPU time counted
(user + system, which is where the page-cache copy is paid).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

LINE = b"x" * 1023 + b"\n"
BATCH = 16


def filesystem(folder: Path) -> str:
    """The filesystem type under `folder` (from df), for the report."""
    try:
        out = subprocess.run(
            ["df", "--output=fstype", str(folder)], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[-1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def measure(folder: Path, *, lines: int, reps: int) -> dict[str, object]:
    """Median CPU and wall microseconds per 1 KiB line over `reps` runs of `lines` lines."""
    chunk = LINE * BATCH
    cpu_us, wall_us = [], []
    path = folder / "diskbound.log"
    for _ in range(reps):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(lines // BATCH):
                os.write(fd, chunk)
            c1, t1 = time.process_time(), time.perf_counter()
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
        cpu_us.append((c1 - c0) / lines * 1e6)
        wall_us.append((t1 - t0) / lines * 1e6)
    return {
        "cpu_us_per_line": statistics.median(cpu_us),
        "wall_us_per_line": statistics.median(wall_us),
        "samples_cpu_us": cpu_us,
        "lines": lines,
        "batch": BATCH,
        "filesystem": filesystem(folder),
    }
