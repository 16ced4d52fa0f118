"""Start-up in real processes: what a signal, a failing ``recover``, a thread the system will
not give, or a malformed setting does before the service has said ``listening on``.

Each of these once ended in a way nobody could act on: killed with 143 and no line, a
``KeyboardInterrupt`` traceback, "stopped by an unhandled error" with no record named,
``listening on`` followed by a crash, or a pasted secret printed back. Here each must end
with one line (a traceback only where the user's own code failed) and a documented status.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD, LISTENING, Process, service_env

from servicekit.exitcodes import ExitCode

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and limits")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux limits")

RECOVERING = textwrap.dedent(
    """
    import sys, time
    from app import protocol
    from servicekit import main as entry

    def recover(request):
        print("recover() saw", request.decode(), file=sys.stderr, flush=True)
        if request == b"boom":
            raise ValueError("recover cannot take this request")
        if request == b"slow":
            time.sleep(600)  # a replay far longer than anyone waits: only a signal ends it

    protocol.recover = recover
    sys.exit(entry.main(protocol))
    """
)
"""``python -m recovering``: the service with a ``recover`` that fails on ``boom`` and takes
forever on ``slow``. A package, so that a supervisor starts its workers with it too."""


def start_recovering(workdir: Path, journals: dict[str, bytes], **settings: str) -> Process:
    """The service above, started on journals that already hold something."""
    (workdir / "data").mkdir(exist_ok=True)
    for name, journal in journals.items():
        (workdir / "data" / name).write_bytes(journal)
    (workdir / "recovering").mkdir()
    (workdir / "recovering" / "__main__.py").write_text(RECOVERING)
    env = service_env(APP_HOST="127.0.0.1", APP_PORT="0", APP_JOURNAL_PATH="data/journal.log")
    env.update(settings)
    return Process([sys.executable, "-m", "recovering"], workdir, env)


# --- Malformed settings are not printed back whole --------------------------------------------

SECRET = "hunter2-correct-horse"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APP_LOG_LEVEL", f"debug DB_PASSWORD={SECRET}"),  # two lines pasted into one
        ("APP_PORT", f"8888#{SECRET}#{SECRET}"),  # no whitespace, but long
        ("APP_JOURNAL_FSYNC", f"DB_PASSWORD={SECRET}"),
        ("APP_STOP_ON_ERROR", "y" * 100_000),
    ],
)
def test_a_bad_setting_that_could_be_a_pasted_line_is_not_echoed(
    run_app, workdir: Path, name: str, value: str
) -> None:
    for source in ("environment", ".env"):  # not a setting run_app sets: .env would lose
        if source == ".env":
            (workdir / ".env").write_text(f"{name}='{value}'\n")
            result = run_app()
        else:
            result = run_app(**{name: value})
        assert result.returncode == ExitCode.CONFIG, result.stderr
        [line] = result.stderr.splitlines()
        assert SECRET not in line
        assert len(line) < 200, line[:300]
        assert line.startswith(f"error: {name}: ")
        assert f"{len(value)} characters" in line
        assert "expected" in line


def test_a_short_bad_setting_is_still_shown(run_app) -> None:
    result = run_app(APP_PORT="88a8")
    assert result.stderr.splitlines() == ["error: APP_PORT='88a8': expected a whole number"]


def test_a_long_unknown_argument_is_not_echoed(run_app) -> None:
    result = run_app(f"--password={SECRET}")
    assert result.returncode == ExitCode.CONFIG
    [line] = result.stderr.splitlines()
    assert SECRET not in line
    assert "unknown argument" in line


def test_the_health_probe_does_not_echo_a_pasted_app_port(run_app) -> None:
    result = run_app(module="servicekit.health", APP_PORT=f"8888 DB_PASSWORD={SECRET}")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert SECRET not in line
    assert line.startswith("error: APP_PORT")


# --- The health probe's timeout is a deadline -------------------------------------------------


@pytest.fixture
def dribbling_server() -> Iterator[int]:
    """A server that sends one byte a second and never a newline; yields its port."""
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)

        def serve() -> None:
            connections = []
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    connections.append(server.accept()[0])
                for connection in connections:
                    with contextlib.suppress(OSError):
                        connection.send(b"x")
                stop.wait(1.0)  # the pace of the attack, not a synchronisation
            for connection in connections:
                connection.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield server.getsockname()[1]
        stop.set()
        thread.join(HANG_GUARD)


def test_the_health_probe_gives_up_at_its_timeout_against_a_dribbling_server(
    run_app, dribbling_server: int
) -> None:
    """Once: still running after 15 s with ``--timeout 2``, one byte a second resetting it."""
    began = time.monotonic()
    result = run_app("--port", str(dribbling_server), "--timeout", "2", module="servicekit.health")
    took = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    assert took < 2 + 1.5, f"the probe took {took:.1f} s with --timeout 2"
    [line] = result.stderr.splitlines()
    assert "within 2" in line, line


# --- The launcher reads .env as the service does ----------------------------------------------


@posix_only
def test_the_launcher_reads_the_shutdown_timeout_as_the_service_does(workdir: Path) -> None:
    """A line that only looks like the setting, inside another variable's quoted value: the
    launcher's own regex once took it, and gave a 1 s grace to a service with 8 s."""
    (workdir / ".env").write_text('NOTE="a note that spans lines\nAPP_SHUTDOWN_TIMEOUT=1\n"\n')
    env = service_env(APP_HOST="127.0.0.1", APP_PORT="0", APP_JOURNAL_PATH="data/journal.log")
    process = Process([sys.executable, "-m", "servicekit.launcher", "run"], workdir, env)
    process.wait_for(LISTENING)
    assert "killed after 13.0 s" in process.log, process.log  # 8 s + the 5 s margin
    assert process.stop(signal.SIGTERM) == ExitCode.OK, process.log
