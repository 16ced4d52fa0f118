"""Benchmark 1: shutdown latency, SIGTERM -> process exit, under load, for three runners.

The same server (procs/echo_server.py) runs under the vendored runtime, aiorun 2025.1.1 and
asyncio.run. For each cell of the load grid (idle connections x sleeping tasks) every runner is
measured once per repetition, in an order rotated each time, so drift on this shared machine
hits all runners alike. asyncio.run has no SIGTERM handling, so it gets SIGINT (Ctrl-C), the
way such programs are stopped. Each run's stderr is kept to count the tracebacks it printed.

A fourth runner, `exit`, is the floor: os._exit(0) on SIGTERM, the same load, no cleanup at
all. What it takes is the kernel's teardown of the process and its sockets, which no graceful
shutdown can avoid.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import idle
from .procs import Child, count_tracebacks

SERVER = Path(__file__).resolve().parent.parent / "procs" / "echo_server.py"
RUNNERS = ("vendored", "aiorun", "asyncio", "exit")
"""`exit` is the floor: the same load, and SIGTERM calls os._exit(0) at once."""
STOP_SIGNAL = {
    "vendored": signal.SIGTERM,
    "aiorun": signal.SIGTERM,
    "asyncio": signal.SIGINT,
    "exit": signal.SIGTERM,
}


@dataclass
class Sample:
    runner: str
    conns: int
    tasks: int
    seconds: float
    tracebacks: int
    stderr_lines: int
    returncode: int | None
    run_returned: float | None = None
    """Seconds from the signal to the server's "runner returned" log line; the rest of
    `seconds` is the interpreter's own exit (freeing what the program holds, atexit, ...)."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def measure_once(runner: str, conns: int, tasks: int, project: Path | None) -> Sample:
    """Start the server under `runner`, load it, signal it, time the exit."""
    argv = [sys.executable, str(SERVER), "--runner", runner, "--tasks", str(tasks)]
    if project is not None:
        argv += ["--project", str(project)]
    child = Child(argv)
    held = []
    try:
        port = int(child.wait_line(child.stdout, r"^ready (\d+)$").group(1))
        held = idle.open_idle(port, conns)
        seconds, t0 = child.signal_and_time_exit(STOP_SIGNAL[runner])
    finally:
        idle.close_all(held)
        child.kill()
    run_returned = None
    for line, when in zip(child.stderr.lines, child.stderr.times, strict=True):
        if line.endswith("bench: runner returned"):
            run_returned = when - t0
    return Sample(
        runner=runner,
        conns=conns,
        tasks=tasks,
        seconds=seconds,
        tracebacks=count_tracebacks(child.stderr.lines),
        stderr_lines=len(child.stderr.lines),
        returncode=child.returncode,
        run_returned=run_returned,
    )


def run_grid(
    *,
    runners: Sequence[str],
    conns_grid: Sequence[int],
    tasks_grid: Sequence[int],
    reps: int,
    project: Path | None,
    log: Callable[[str], None],
) -> list[Sample]:
    """All cells x runners x reps, runner order rotated per (rep, cell); one warm-up per runner."""
    for runner in runners:  # warm the page cache and .pyc files; not recorded
        measure_once(runner, 0, 0, project)
    samples: list[Sample] = []
    cells = [(c, t) for t in tasks_grid for c in conns_grid]
    for rep in range(reps):
        for index, (conns, tasks) in enumerate(cells):
            shift = (rep + index) % len(runners)
            for runner in [*runners[shift:], *runners[:shift]]:
                sample = measure_once(runner, conns, tasks, project)
                samples.append(sample)
            log(
                f"shutdown rep {rep + 1}/{reps} conns={conns} tasks={tasks}: "
                + ", ".join(
                    f"{s.runner}={s.seconds * 1000:.0f}ms/tb{s.tracebacks}"
                    for s in samples[-len(runners) :]
                )
            )
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m harness.shutdown`: run the grid here and print the samples as JSON.

    For running the grid under another Python, such as inside a container (harness/py314.py):
    stdlib only, and aiorun importable from wherever PYTHONPATH points.
    """
    import argparse
    import json
    import platform

    parser = argparse.ArgumentParser()
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--conns", required=True, help="comma-separated, e.g. 0,1000")
    parser.add_argument("--tasks", required=True, help="comma-separated, e.g. 10000")
    parser.add_argument("--reps", type=int, required=True)
    args = parser.parse_args(argv)
    vendored = (args.project / "servicekit" / "aiorun.py").exists()
    grid = run_grid(
        runners=[r for r in RUNNERS if vendored or r != "vendored"],
        conns_grid=[int(c) for c in args.conns.split(",")],
        tasks_grid=[int(t) for t in args.tasks.split(",")],
        reps=args.reps,
        project=args.project,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(json.dumps({"python": platform.python_version(), "samples": [s.as_dict() for s in grid]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
