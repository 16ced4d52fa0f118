"""Benchmark 4: start-up to ready.

- `python -m app` until its `listening on` line (default settings, uvloop where installed),
  against a bare uvloop Protocol server (procs/ceiling_server.py) until its `ready` line: the
  least any uvloop service can do before it accepts. `python -c "import asyncio"` run to exit
  is shown as the interpreter's own floor.
- The same `python -m app` with a journal of JOURNAL_LINES lines already on disk, against the
  same with an empty journal: a protocol whose recover() does nothing must not pay for reading
  the journal.

Everything is timed from just before the fork and alternated. The project's .pyc files are
compiled first (python -m compileall; the report counts them), so they are present for every
timed run, and a warm-up start of each fills the page cache. Each server is then stopped,
untimed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from . import servers
from .procs import Child

JOURNAL_LINE = b"journaled request %07d, padded to sixty-four bytes with filler....\n"


def _time_to_ready(spec: servers.ServerSpec) -> float:
    child = Child(spec.argv, cwd=spec.cwd, env=spec.env)
    try:
        stream = child.stdout if spec.ready_stream == "stdout" else child.stderr
        child.wait_line(stream, spec.ready_pattern, timeout=120)
        ready = stream.times[child.last_index] - child.started
        child.signal_and_time_exit(spec.stop_signal)
    finally:
        child.kill()
    return ready


def _floor() -> float:
    child = Child([sys.executable, "-c", "import asyncio"])
    return child.wait_exit(20) - child.started


def write_journal(path: Path, lines: int) -> int:
    """A journal of `lines` complete lines, as the service would have left it; returns bytes."""
    block = 10_000
    with open(path, "wb") as out:
        for start in range(0, lines, block):
            out.write(b"".join(JOURNAL_LINE % i for i in range(start, min(lines, start + block))))
    path.chmod(0o600)
    return path.stat().st_size


def _default_settings(spec: servers.ServerSpec) -> servers.ServerSpec:
    spec.env.pop("APP_USE_UVLOOP", None)  # type: ignore[union-attr]  # the project's default
    return spec


def run_all(
    project: Path,
    scratch: Path,
    *,
    reps: int,
    journal_lines: int,
    log: Callable[[str], None],
) -> dict[str, object]:
    big = scratch / "startup-big-journal.log"
    size = write_journal(big, journal_lines)
    kinds: dict[str, Callable[[], float]] = {
        "service": lambda: _time_to_ready(
            _default_settings(servers.generated_service(project, scratch / "startup-j.log"))
        ),
        "bare_uvloop": lambda: _time_to_ready(servers.ceiling()),
        "floor": _floor,
        "service_big_journal": lambda: _time_to_ready(
            _default_settings(servers.generated_service(project, big))
        ),
    }
    # The .pyc files are compiled up front: a start with PYTHONDONTWRITEBYTECODE set (as here
    # and in many containers) would otherwise never write them, and every run would compile.
    packages = [str(project / "app"), str(project / "servicekit")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True)
    for measure in kinds.values():  # warm-up: fills the page cache
        measure()
    pyc = sorted(str(p.relative_to(project)) for p in project.glob("*/**/*.pyc"))
    results: dict[str, object] = {name: [] for name in kinds}
    for rep in range(reps):
        names = list(kinds)
        shift = rep % len(names)
        for name in [*names[shift:], *names[:shift]]:
            results[name].append(kinds[name]())  # type: ignore[attr-defined]
        (scratch / "startup-j.log").unlink(missing_ok=True)
        log(
            f"startup rep {rep + 1}/{reps}: "
            + ", ".join(f"{n} {results[n][-1] * 1000:.0f} ms" for n in names)  # type: ignore[index]
        )
    grown = big.stat().st_size - size
    big.unlink()
    return {
        **results,
        "journal_lines": journal_lines,
        "journal_bytes": size,
        "journal_grown_bytes": grown,
        "pyc_files": len(pyc),
    }
