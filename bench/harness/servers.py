"""How to start each server the bench measures, and how to tell it is ready.

Every server prints a ready line that carries its real port (all listen on 127.0.0.1 port 0):
the bench's own scripts print `ready PORT` on stdout; the generated service logs
`listening on HOST:PORT` on stderr, as its contract says.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Child

PROCS = Path(__file__).resolve().parent.parent / "procs"
SERVICE_READY = r"listening on (?P<host>\S+):(?P<port>\d+)"
SCRIPT_READY = r"^ready (?P<port>\d+)$"
CEILING_NAME = "bare uvloop Protocol echo"
CEILING_WAL_NAME = "bare echo + WAL"
JOURNAL_FREE_NAME = "service (uvloop), journal-free requests"
UNCHECKED_NAME = "service (uvloop), records without CRC-32"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]
    cwd: Path | None = None
    env: dict[str, str] | None = None
    ready_stream: str = "stdout"
    ready_pattern: str = SCRIPT_READY
    stop_signal: int = signal.SIGTERM
    notes: dict[str, str] = field(default_factory=dict)
    modes: tuple[str, ...] = ("pingpong",)
    """Throughput modes this variant runs in (harness/throughput.py)."""
    optional: bool = False
    """A measurement aid that reaches into the service's internals: when it no longer fits
    the build, the report names it "not available in this build" instead of failing the run."""
    journal: Path | None = None
    """The file this server appends every request to (removed after each load window)."""

    def settings(self) -> dict[str, str]:
        """The APP_ variables this server was started with (shown in the report)."""
        return {k: v for k, v in (self.env or {}).items() if k.startswith("APP_")}


def start(spec: ServerSpec, timeout: float = 20.0) -> tuple[Child, int]:
    """Start the server and block until its ready line; return it with its port."""
    child = Child(spec.argv, cwd=spec.cwd, env=spec.env)
    stream = child.stdout if spec.ready_stream == "stdout" else child.stderr
    match = child.wait_line(stream, spec.ready_pattern, timeout)
    return child, int(match.group("port"))


def stop(child: Child, signum: int) -> int:
    """Ask the server to stop and reap it (not timed)."""
    child.signal_and_time_exit(signum)
    return child.returncode if child.returncode is not None else -1


def service_env(journal: Path, **settings: str) -> dict[str, str]:
    """The environment for `python -m app`: ephemeral loopback port, a scratch journal, and
    no APP_ variables leaking in from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.update(
        APP_HOST="127.0.0.1",
        APP_PORT="0",
        APP_JOURNAL_PATH=str(journal),
        APP_LOG_LEVEL="INFO",
    )
    env.update(settings)
    return env


def _label(settings: dict[str, str]) -> str:
    label = {"1": "uvloop", "0": "default loop"}.get(settings.get("APP_USE_UVLOOP", ""), "default")
    if settings.get("APP_WORKERS", "1") != "1":
        label += f", workers={settings['APP_WORKERS']}"
    if "APP_JOURNAL_FSYNC" in settings:
        label += f", fsync={settings['APP_JOURNAL_FSYNC']}"
    if settings.get("APP_METRICS_PORT", "0") not in ("", "0"):
        label += ", metrics on"
    return label


def free_port() -> int:
    """A loopback port nothing listens on now, for a second port a server opens (metrics)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def generated_service(project: Path, journal: Path, **settings: str) -> ServerSpec:
    """The baked project's `python -m app`, configured by APP_ variables."""
    return ServerSpec(
        name=f"service ({_label(settings)})",
        argv=[sys.executable, "-m", "app"],
        cwd=project,
        env=service_env(journal, **settings),
        journal=journal,
        ready_stream="stderr",
        ready_pattern=SERVICE_READY,
    )


def baseline_service(project: Path, journal: Path, **settings: str) -> ServerSpec:
    """`python -m app` of the echo-first baseline (bake.BASELINE_COMMIT)."""
    from .bake import BASELINE_COMMIT

    return ServerSpec(
        name=f"echo-first {BASELINE_COMMIT} ({_label(settings)})",
        argv=[sys.executable, "-m", "app"],
        cwd=project,
        env=service_env(journal, **settings),
        journal=journal,
        ready_stream="stderr",
        ready_pattern=SERVICE_READY,
    )


def service_under_asyncio_run(project: Path, journal: Path) -> ServerSpec:
    """The same Service code, run by plain asyncio.run on the default loop."""
    return ServerSpec(
        name="same server, asyncio.run",
        argv=[sys.executable, str(PROCS / "service_asyncio_run.py"), str(project)],
        cwd=project,
        env=service_env(journal, APP_USE_UVLOOP="0"),
        journal=journal,
        ready_stream="stderr",
        ready_pattern=SERVICE_READY,
        stop_signal=signal.SIGINT,
    )


def ceiling(wal: Path | None = None) -> ServerSpec:
    """A bare uvloop Protocol echo server: the most a line echo can do here. With ``wal``, the
    same echo appending each read's complete lines to that file before it replies: the most a
    write-ahead server can do here (procs/ceiling_server.py)."""
    return ServerSpec(
        name=CEILING_NAME if wal is None else CEILING_WAL_NAME,
        argv=[sys.executable, str(PROCS / "ceiling_server.py")]
        + ([] if wal is None else ["--wal", str(wal)]),
        stop_signal=signal.SIGINT,
        journal=wal,
    )


def seam_service(project: Path, journal: Path) -> ServerSpec:
    """The service on uvloop with one seam and with two, alternated (procs/seam_service.py)."""
    return _alternating(
        "service (uvloop), one seam and two, alternated", "seam_service.py", project, journal
    )


def metrics_timing_service(project: Path, journal: Path) -> ServerSpec:
    """The service on uvloop with metrics on, its batches timed and not, alternated
    (procs/metrics_service.py)."""
    return _alternating(
        "service (uvloop, metrics on), batches timed and not, alternated",
        "metrics_service.py",
        project,
        journal,
        APP_METRICS_PORT=str(free_port()),
    )


def checksum_service(project: Path, journal: Path) -> ServerSpec:
    """The service on uvloop with its journal records written with and without their CRC-32,
    alternated (procs/checksum_service.py)."""
    return _alternating(
        "service (uvloop), records with and without CRC-32, alternated",
        "checksum_service.py",
        project,
        journal,
    )


def _alternating(
    name: str, script: str, project: Path, journal: Path, **settings: str
) -> ServerSpec:
    """The baked service on uvloop, started by one of procs/ that alternates two versions of
    it in one process (harness/alternated.py); killed when its window ends."""
    return ServerSpec(
        name=name,
        argv=[sys.executable, str(PROCS / script), str(project)],
        cwd=project,
        env=service_env(journal, APP_USE_UVLOOP="1", **settings),
        journal=journal,
        ready_stream="stderr",
        ready_pattern=SERVICE_READY,
        stop_signal=signal.SIGKILL,
    )


def journal_free_service(project: Path, journal: Path) -> ServerSpec:
    """The service on uvloop answering every request without journalling it, if the build
    knows ``needs_journal`` (procs/journal_free_service.py)."""
    return _service_variant(JOURNAL_FREE_NAME, "journal_free_service.py", project, journal)


def unchecked_journal_service(project: Path, journal: Path) -> ServerSpec:
    """The service on uvloop with its journal records written without their CRC-32
    (procs/unchecked_journal_service.py): the checksum's cost is the difference."""
    return _service_variant(UNCHECKED_NAME, "unchecked_journal_service.py", project, journal)


def _service_variant(name: str, script: str, project: Path, journal: Path) -> ServerSpec:
    """The baked service on uvloop, started by one of procs/ with one thing changed."""
    return ServerSpec(
        name=name,
        argv=[sys.executable, str(PROCS / script), str(project)],
        cwd=project,
        env=service_env(journal, APP_USE_UVLOOP="1"),
        journal=journal,
        ready_stream="stderr",
        ready_pattern=SERVICE_READY,
    )
