"""Benchmark 5: the generated image under `docker stop`, and its size.

Runs only when an engine answers at $DOCKER_HOST (scripts/docker-engine.sh starts a private one
and builds local Python base images, since no registry is reachable here); otherwise it returns
the reason it skipped. Uses the docker CLI, containers on the host network only, the service
bound to 127.0.0.1. The floor for `docker stop` is a trivial exec-form image on the same base
whose Python exits at once on SIGTERM: what is left is Docker's own stop overhead. Both hold the
same few idle connections (for the floor: none, it does not listen) and are alternated.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import idle
from .procs import Child

APP_TAG = "aiorun-template-bench/app:latest"
FLOOR_TAG = "aiorun-template-bench/floor:latest"
BASE_CANDIDATES = (
    "python:{v}-slim",
    "aiorun-template/python:{v}",
    "aiorun-template/python:3.11",
    "aiorun-template/python:3.13",
)
FLOOR_PROGRAM = (
    "import signal, sys\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('ready', flush=True)\n"
    "signal.pause()\n"
)
IDLE_CONNECTIONS = 20


@dataclass
class Result:
    skipped: str | None = None
    base: str = ""
    base_bytes: int = 0
    app_bytes: int = 0
    floor_bytes: int = 0
    build_seconds: float = 0.0
    stop: dict[str, list[float]] = field(default_factory=dict)
    exit_codes: dict[str, list[int]] = field(default_factory=dict)
    idle_connections: int = IDLE_CONNECTIONS


def _docker(*args: str, timeout: float = 600, check: bool = True) -> str:
    return subprocess.run(
        ["docker", *args], check=check, capture_output=True, text=True, timeout=timeout
    ).stdout.strip()


def engine_problem() -> str | None:
    """None when an engine answers at $DOCKER_HOST, else why not."""
    if not os.environ.get("DOCKER_HOST"):
        return "DOCKER_HOST is not set (start an engine with `source scripts/docker-engine.sh`)"
    try:
        _docker("info", "--format", "{{.ServerVersion}}", timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no Docker engine answers at DOCKER_HOST ({type(exc).__name__})"
    return None


def _pick_base(python_version: str) -> str | None:
    for pattern in BASE_CANDIDATES:
        image = pattern.format(v=python_version)
        if (
            subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode
            == 0
        ):
            return image
    return None


def _size(image: str) -> int:
    return int(_docker("image", "inspect", "--format", "{{.Size}}", image))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_once(image: str, app: bool) -> tuple[float, int]:
    """Run a container, wait for its ready line, hold idle connections, time `docker stop`."""
    port = _free_port()
    env = ["-e", "APP_HOST=127.0.0.1", "-e", f"APP_PORT={port}"] if app else []
    cid = _docker("run", "-d", "--network", "host", *env, image)
    held: list[socket.socket] = []
    logs = Child(["docker", "logs", "-f", cid])
    try:
        if app:
            logs.wait_line(logs.stderr, r"listening on ", timeout=60)
            held = idle.open_idle(port, IDLE_CONNECTIONS)
        else:
            logs.wait_line(logs.stdout, r"^ready$", timeout=60)
        t0 = time.perf_counter()
        _docker("stop", "-t", "10", cid, timeout=60)
        seconds = time.perf_counter() - t0
        code = int(_docker("inspect", "--format", "{{.State.ExitCode}}", cid))
    finally:
        idle.close_all(held)
        logs.kill()
        _docker("rm", "-f", "-v", cid, check=False)
    return seconds, code


def run_all(
    project: Path, scratch: Path, *, reps: int, python_version: str, log: Callable[[str], None]
) -> Result:
    problem = engine_problem()
    if problem:
        return Result(skipped=problem)
    base = _pick_base(python_version)
    if base is None:
        return Result(skipped=f"no local Python base image (tried {', '.join(BASE_CANDIDATES)})")
    try:
        return _measure(project, scratch, base, reps=reps, log=log)
    except (OSError, subprocess.SubprocessError) as exc:
        # An image that does not build is a finding about the template, not a reason to lose
        # every other section's figures: the report names it instead.
        return Result(skipped=f"failed: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    """What went wrong, fit for a table cell: the error lines of the command's stderr (no
    terminal colours, no line breaks), else the exception itself."""
    stderr = re.sub(r"\x1b\[[0-9;]*m", "", getattr(exc, "stderr", "") or "")
    errors = [line.strip() for line in stderr.splitlines() if "Error" in line or "error" in line]
    command = " ".join(getattr(exc, "cmd", [])[:2]) or type(exc).__name__
    return f"`{command}`: " + (" / ".join(errors)[-400:] or str(exc)[:300]).replace("|", "/")


def _measure(
    project: Path, scratch: Path, base: str, *, reps: int, log: Callable[[str], None]
) -> Result:
    t0 = time.perf_counter()
    _docker(
        "build",
        "--network",
        "host",
        "-q",
        "-t",
        APP_TAG,
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        str(project),
        timeout=900,
    )
    build_seconds = time.perf_counter() - t0
    floor_dir = scratch / "floor-image"
    floor_dir.mkdir(parents=True, exist_ok=True)
    (floor_dir / "Dockerfile").write_text(
        f"FROM {base}\nCOPY floor.py /floor.py\nSTOPSIGNAL SIGTERM\n"
        'ENTRYPOINT ["python3", "/floor.py"]\n'
    )
    (floor_dir / "floor.py").write_text(FLOOR_PROGRAM)
    _docker("build", "--network", "host", "-q", "-t", FLOOR_TAG, str(floor_dir), timeout=300)
    result = Result(
        base=base,
        base_bytes=_size(base),
        app_bytes=_size(APP_TAG),
        floor_bytes=_size(FLOOR_TAG),
        build_seconds=build_seconds,
        stop={"app": [], "floor": []},
        exit_codes={"app": [], "floor": []},
    )
    for rep in range(reps):
        order = ["app", "floor"] if rep % 2 == 0 else ["floor", "app"]
        for what in order:
            seconds, code = _stop_once(APP_TAG if what == "app" else FLOOR_TAG, what == "app")
            result.stop[what].append(seconds)
            result.exit_codes[what].append(code)
        log(
            f"docker rep {rep + 1}/{reps}: stop app {result.stop['app'][-1]:.3f}s "
            f"(exit {result.exit_codes['app'][-1]}), floor {result.stop['floor'][-1]:.3f}s"
        )
    return result
