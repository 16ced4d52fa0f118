"""Benchmark 1 again on Python 3.14: the shutdown grid inside the local 3.14 image.

Why a container: the machine has Python 3.11 only, and the default Python is about to become
3.14, where asyncio's shutdown costs differ (3.13 stopped printing one cancellation report per
connection, which is most of what the vendored runtime saves on 3.11). The image is the one
scripts/docker-engine.sh builds (IMAGE, Debian with its python3.14). The grid itself runs in
the container (`python -m harness.shutdown`, stdlib only), so the exit is timed there through a
pidfd as on the host. aiorun is pure Python: the bench venv's copy is mounted read-only and put
on PYTHONPATH, so the container needs no package index.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from . import container

IMAGE = os.environ.get("BENCH_PY314_IMAGE", "aiorun-template/python:3.14")
BENCH_DIR = Path(__file__).resolve().parent.parent


def run_grid(
    project: Path,
    *,
    conns_grid: Sequence[int],
    tasks_grid: Sequence[int],
    reps: int,
    log: Callable[[str], None],
) -> dict[str, object]:
    """The samples and the container's Python version, or {"skipped": why}."""
    problem = container.engine_problem()
    if problem:
        return {"skipped": problem}
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        return {"skipped": f"image {IMAGE} not found (built by scripts/docker-engine.sh)"}
    spec = importlib.util.find_spec("aiorun")
    if spec is None or not spec.submodule_search_locations:
        return {"skipped": "aiorun is not installed in the bench venv"}
    aiorun_dir = Path(next(iter(spec.submodule_search_locations)))
    argv = [
        "docker", "run", "--rm", "--network", "host",
        "-e", "PYTHONPATH=/deps", "-e", "PYTHONDONTWRITEBYTECODE=1",
        "-v", f"{BENCH_DIR}:/bench:ro",
        "-v", f"{project}:/project:ro",
        "-v", f"{aiorun_dir}:/deps/aiorun:ro",
        "-w", "/bench",
        IMAGE,
        "python", "-m", "harness.shutdown", "--project", "/project",
        "--conns", ",".join(map(str, conns_grid)),
        "--tasks", ",".join(map(str, tasks_grid)),
        "--reps", str(reps),
    ]  # fmt: skip
    log(f"shutdown on {IMAGE}: {len(conns_grid) * len(tasks_grid)} cell(s) x {reps} rep(s)")
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stderr is not None
    for line in run.stderr:  # the grid's progress lines, as they come
        log(f"  [{IMAGE}] {line.rstrip()}")
    out = run.stdout.read() if run.stdout else ""
    if run.wait() != 0:
        return {"skipped": f"the grid failed in {IMAGE} (exit {run.returncode})"}
    result = json.loads(out)
    return {"image": IMAGE, "python": result["python"], "samples": result["samples"]}
