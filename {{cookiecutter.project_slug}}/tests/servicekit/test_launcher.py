"""The launcher (``python -m servicekit.launcher``): real processes; the Windows branch via a seam.

Three layers, each saying what it proves:

- Real processes on this machine: ``run`` starts the service, a client echoes, ``stop`` (or
  Ctrl-C to the launcher) stops it, the child exits 0 and the journal is complete. On POSIX the
  stop event is SIGTERM; the same tests run on Windows in CI, where it is CTRL_BREAK_EVENT.
- The Windows branch on any machine, through :func:`servicekit.launcher.windows_platform`, with
  a fake child process and a fake console-event sender: process-group flag, which signals are
  relayed and which are not, what happens when the event cannot be sent (as under Wine) or is
  ignored.
- Windows only: ``os.kill(pid, CTRL_BREAK_EVENT)`` on ``python -m app`` for real. It is skipped
  elsewhere, since no other system (Wine included) can deliver that event.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import HANG_GUARD, LISTENING, Process, journal_requests, service_env

from servicekit import exitcodes, launcher
from servicekit.config import Settings
from servicekit.exitcodes import ExitCode
from servicekit.launcher import (
    CREATE_NEW_PROCESS_GROUP,
    CTRL_BREAK_EVENT,
    KILLED,
    SIGBREAK,
    Launcher,
    RunFiles,
    request_stop,
    shutdown_timeout,
    windows_platform,
)

WINDOWS = sys.platform == "win32"
posix_only = pytest.mark.skipif(WINDOWS, reason="POSIX signals to the launcher")
windows_only = pytest.mark.skipif(
    not WINDOWS, reason="CTRL_BREAK_EVENT exists only on real Windows (Wine cannot send it)"
)
STOP_HEARD = "shutdown: SIGBREAK received" if WINDOWS else "shutdown: SIGTERM received"


# --- Real processes ---------------------------------------------------------------------------


def launcher_env(**settings: str) -> dict[str, str]:
    defaults = {"APP_HOST": "127.0.0.1", "APP_PORT": "0", "APP_JOURNAL_PATH": "data/journal.log"}
    return service_env(**{**defaults, **settings})


def start_launcher(workdir: Path, *args: str, **settings: str) -> tuple[Process, str, int]:
    """``python -m servicekit.launcher run`` in ``workdir``, ready: it and the service address."""
    process = Process(
        [sys.executable, "-m", "servicekit.launcher", "run", *args],
        workdir,
        launcher_env(**settings),
    )
    match = process.wait_for(LISTENING)
    return process, match[1], int(match[2])


def ask(host: str, port: int, lines: Sequence[bytes]) -> list[bytes]:
    """Send each line, read one reply line for it; whatever the protocol answers."""
    with socket.create_connection((host, port), timeout=HANG_GUARD) as sock:
        stream = sock.makefile("rb")
        replies = []
        for line in lines:
            sock.sendall(line)
            replies.append(stream.readline())
        return replies


def launcher_command(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servicekit.launcher", *args],
        cwd=workdir,
        env=launcher_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )


def test_run_echo_stop_through_the_launcher(workdir: Path) -> None:
    running, host, port = start_launcher(workdir)
    files = RunFiles(workdir / "data")
    recorded = json.loads(files.pid.read_text())
    lines = [b"first\n", b"second\n", b"third\n"]
    assert [reply.count(b"\n") for reply in ask(host, port, lines)] == [1, 1, 1]

    stopped = launcher_command(workdir, "stop")

    assert stopped.returncode == ExitCode.OK, stopped.stderr
    assert stopped.stdout.startswith("stopped in ")
    assert running.wait() == ExitCode.OK, running.log
    log = running.log
    assert STOP_HEARD in log
    assert "shutdown: complete" in log
    assert "Traceback" not in log
    assert journal_requests(workdir / "data" / "journal.log") == b"".join(lines)
    assert not files.pid.exists(), "app.pid must be removed on exit"
    assert json.loads(files.exit.read_text())["status"] == ExitCode.OK
    assert recorded["launcher"] == running.popen.pid
    assert recorded["service"] != running.popen.pid
    assert not launcher.current_platform().is_alive(recorded["service"])


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_launcher_is_relayed_as_sigterm(workdir: Path, signum: int) -> None:
    """Ctrl-C in a terminal reaches only the launcher (the child has its own session)."""
    running, host, port = start_launcher(workdir)
    assert ask(host, port, [b"x\n"])[0].endswith(b"\n")
    assert running.stop(signum) == ExitCode.OK, running.log
    assert f"{signal.Signals(signum).name} received: sending SIGTERM" in running.log
    assert "shutdown: SIGTERM received" in running.log
    assert journal_requests(workdir / "data" / "journal.log") == b"x\n"


def test_the_service_exit_status_is_passed_through(workdir: Path) -> None:
    with socket.socket() as taken:  # the service cannot bind: 69, passed on unchanged
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = subprocess.run(
            [sys.executable, "-m", "servicekit.launcher", "run"],
            cwd=workdir,
            env=launcher_env(APP_PORT=str(taken.getsockname()[1])),
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            check=False,
        )
    assert in_use.returncode == ExitCode.ADDRESS_IN_USE, in_use.stderr
    extra = launcher_command(workdir, "run", "--", "--extra")  # arguments after -- go through
    assert extra.returncode == ExitCode.CONFIG, extra.stderr
    assert "started 'python -m app --extra'" in extra.stderr
    assert "error: unknown argument '--extra'" in extra.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "servicekit.launcher", "run"],
        cwd=workdir,
        env=launcher_env(APP_PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert bad.returncode == ExitCode.CONFIG, bad.stderr


def test_a_second_run_is_refused_while_one_is_running(workdir: Path) -> None:
    running, _, _ = start_launcher(workdir)
    second = launcher_command(workdir, "run")
    assert second.returncode == launcher.REFUSED
    assert "already running" in second.stderr
    assert launcher_command(workdir, "stop").returncode == ExitCode.OK
    assert running.wait() == ExitCode.OK


def test_stop_with_nothing_running_says_so(workdir: Path) -> None:
    result = launcher_command(workdir, "stop")
    assert result.returncode == launcher.REFUSED
    assert result.stderr.startswith("error: nothing to stop")


def test_demo_reports_a_clean_stop(workdir: Path) -> None:
    """The walk-through lives in scripts/, out of the package; run from another folder."""
    demo = Path(__file__).resolve().parents[2] / "scripts" / "launcher_demo.py"
    result = subprocess.run(
        [sys.executable, str(demo)],
        cwd=workdir,
        env=launcher_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: ping answered" in result.stdout
    assert "demo: service exit status 0 (status 0 (OK))" in result.stdout
    assert "journal holds the request" in result.stdout
    assert result.stdout.rstrip().endswith("demo: OK")
    assert launcher_command(workdir, "demo").returncode == 2, "the package has no demo"


@posix_only
def test_a_child_that_ignores_the_stop_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    """Real processes, launcher in-process: the child ignores SIGTERM and gets SIGKILL."""
    stubborn = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    started: list[subprocess.Popen[bytes]] = []

    def spawn(command: Sequence[str], options: Mapping[str, Any]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(list(command), **options, stdout=subprocess.PIPE)
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"  # its SIGTERM handler is in place
        started.append(child)
        return child

    runner = Launcher(
        launcher.posix_platform(),
        [sys.executable, "-c", stubborn],
        RunFiles(tmp_path),
        grace=0.3,
        spawn=spawn,
    )
    runner.request_stop("test")  # handled as soon as the child is up
    assert runner.run(handle_signals=False) == KILLED
    assert started[0].returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "app.exit").read_text())["status"] == KILLED


def test_a_run_folder_that_is_a_file_is_refused_in_one_line(workdir: Path) -> None:
    (workdir / "data").write_text("not a folder")
    result = launcher_command(workdir, "run")
    assert result.returncode == launcher.REFUSED
    assert "Traceback" not in result.stderr
    assert "cannot use the run folder data: " in result.stderr.splitlines()[-1]


class UnwritablePidFile(RunFiles):
    """A run folder where app.pid cannot be written (disk full, owned by another user)."""

    def write(self, path: Path, data: Mapping[str, Any]) -> None:
        if path == self.pid:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write(path, data)


@posix_only
def test_a_pid_file_that_cannot_be_written_leaves_no_orphan(tmp_path: Path) -> None:
    """The child runs in its own session: a launcher that dies after starting it must not
    leave it serving with nobody to stop it."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(command: Sequence[str], options: Mapping[str, Any]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(list(command), **options)
        started.append(child)
        return child

    runner = Launcher(
        launcher.posix_platform(),
        [sys.executable, "-c", "import time; time.sleep(60)"],
        UnwritablePidFile(tmp_path),
        grace=5.0,
        spawn=spawn,
    )
    try:
        assert runner.run(handle_signals=False) == launcher.REFUSED
        assert started[0].poll() is not None, "the service was left running"
    finally:
        started[0].kill()
        started[0].wait()


# --- The Windows branch, through the seam ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeChild:
    """A child process in fake time: ``wait(timeout)`` advances the clock, runs due events."""

    def __init__(self, clock: FakeClock, pid: int = 4242) -> None:
        self.pid = pid
        self.clock = clock
        self.returncode: int | None = None
        self.killed = False
        self.events: list[tuple[float, Callable[[], None]]] = []

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.events.append((self.clock.now + when, action))

    def exit(self, code: int) -> None:
        self.returncode = code

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            assert timeout is not None, "a blocking wait on a running child would hang"
            self.clock.now += timeout
            due = [event for event in self.events if event[0] <= self.clock.now]
            for event in due:
                self.events.remove(event)
                event[1]()
        if self.returncode is None:
            raise subprocess.TimeoutExpired("fake", timeout or 0)
        return self.returncode

    def kill(self) -> None:  # TerminateProcess(handle, 1), as Popen.kill does on Windows
        self.killed = True
        self.returncode = 1


class WindowsHarness:
    """A Launcher on the Windows branch with a fake child and a fake GenerateConsoleCtrlEvent."""

    def __init__(self, tmp_path: Path, *, obeys: bool = True, send_error: bool = False) -> None:
        self.clock = FakeClock()
        self.child = FakeChild(self.clock)
        self.sent: list[tuple[int, int]] = []
        self.options: dict[str, Any] = {}
        self.obeys, self.send_error = obeys, send_error
        self.platform = windows_platform(send_ctrl_event=self.send, is_alive=lambda pid: True)
        self.files = RunFiles(tmp_path / "data")
        self.pid_file_seen: dict[str, Any] | None = None
        self.launcher = Launcher(
            self.platform,
            ["python.exe", "-m", "app"],
            self.files,
            grace=13.0,
            spawn=self.spawn,
            clock=self.clock,
        )

    def spawn(self, command: Sequence[str], options: Mapping[str, Any]) -> FakeChild:
        self.options = dict(options)
        self.child.at(0.1, self.look_at_pid_file)
        return self.child

    def look_at_pid_file(self) -> None:
        self.pid_file_seen = self.files.read(self.files.pid)

    def send(self, pid: int, event: int) -> None:
        if self.send_error:  # what os.kill(pid, CTRL_BREAK_EVENT) does under Wine
            raise OSError(22, "Invalid access")
        self.sent.append((pid, event))
        if self.obeys:
            self.child.at(0.4, lambda: self.child.exit(0))

    def run(self) -> int:
        return self.launcher.run(handle_signals=False)


def test_windows_child_gets_its_own_process_group(tmp_path: Path) -> None:
    harness = WindowsHarness(tmp_path)
    harness.child.at(1.0, lambda: harness.child.exit(3))
    assert harness.run() == 3  # its status, passed through
    assert harness.options["creationflags"] == CREATE_NEW_PROCESS_GROUP == 0x200
    assert "start_new_session" not in harness.options
    assert harness.options["stdin"] == subprocess.DEVNULL
    assert harness.pid_file_seen is not None
    assert harness.pid_file_seen["service"] == harness.child.pid
    assert harness.pid_file_seen["launcher"] == os.getpid()
    assert not harness.files.pid.exists()
    assert harness.sent == []


def test_windows_stop_file_becomes_ctrl_break_to_the_child(tmp_path: Path) -> None:
    harness = WindowsHarness(tmp_path)
    harness.child.at(2.0, lambda: harness.files.write(harness.files.stop, {"requested_by": 1}))
    assert harness.run() == ExitCode.OK
    assert harness.sent == [(harness.child.pid, CTRL_BREAK_EVENT)]
    assert CTRL_BREAK_EVENT == 1
    assert not harness.child.killed
    assert not harness.files.stop.exists(), "the request is consumed"
    assert harness.launcher.stop_seconds == pytest.approx(0.4, abs=0.06)
    assert json.loads(harness.files.exit.read_text()) == {
        "status": 0,
        "stop_seconds": harness.launcher.stop_seconds,
    }


def test_windows_ctrl_c_is_relayed_once(tmp_path: Path) -> None:
    harness = WindowsHarness(tmp_path)
    harness.child.at(1.0, lambda: harness.launcher.on_signal(signal.SIGINT))
    harness.child.at(1.2, lambda: harness.launcher.on_signal(signal.SIGINT))
    assert harness.run() == ExitCode.OK
    assert harness.sent == [(harness.child.pid, CTRL_BREAK_EVENT)]


def test_windows_ctrl_break_is_not_relayed_the_child_heard_it(tmp_path: Path) -> None:
    """Ctrl-Break typed in the console reaches every process on it, the child included."""
    harness = WindowsHarness(tmp_path)
    assert SIGBREAK in harness.platform.shared_signals
    assert signal.SIGINT in harness.platform.relayed_signals
    harness.child.at(1.0, lambda: harness.launcher.on_signal(SIGBREAK))
    harness.child.at(1.5, lambda: harness.child.exit(0))  # it stops by itself
    assert harness.run() == ExitCode.OK
    assert harness.sent == []


def test_windows_event_that_cannot_be_sent_means_kill_at_once(tmp_path: Path) -> None:
    """Under Wine, os.kill(pid, CTRL_BREAK_EVENT) fails: no point waiting for the grace."""
    harness = WindowsHarness(tmp_path, send_error=True)
    harness.child.at(1.0, lambda: harness.launcher.on_signal(signal.SIGINT))
    started = harness.clock.now
    assert harness.run() == KILLED
    assert harness.child.killed
    assert harness.clock.now - started < 2.0


def test_windows_child_that_ignores_ctrl_break_is_killed_after_the_grace(tmp_path: Path) -> None:
    harness = WindowsHarness(tmp_path, obeys=False)
    harness.child.at(1.0, lambda: harness.launcher.on_signal(signal.SIGINT))
    assert harness.run() == KILLED
    assert harness.child.killed
    assert harness.launcher.stop_seconds == pytest.approx(13.0, abs=0.1)


def test_stop_clears_a_stale_pid_file_without_waiting(tmp_path: Path) -> None:
    platform = windows_platform(send_ctrl_event=lambda pid, event: None, is_alive=lambda pid: False)
    files = RunFiles(tmp_path)
    files.write(files.pid, {"launcher": 999_999, "service": 1, "grace": 13.0})
    result = request_stop(platform, files, sleep=lambda seconds: pytest.fail("must not wait"))
    assert result.status is None
    assert "gone" in result.message
    assert not files.pid.exists()
    assert not files.stop.exists()


# --- Settings and small pieces ----------------------------------------------------------------


def test_grace_follows_the_service_shutdown_timeout(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    assert shutdown_timeout({}, env_file) == Settings.shutdown_timeout
    env_file.write_text("APP_PORT=1\nAPP_SHUTDOWN_TIMEOUT='3.5'  # short\n")
    assert shutdown_timeout({}, env_file) == 3.5
    assert shutdown_timeout({"APP_SHUTDOWN_TIMEOUT": "20"}, env_file) == 20.0
    assert shutdown_timeout({"APP_SHUTDOWN_TIMEOUT": "soon"}, env_file) == 8.0
    assert shutdown_timeout({"APP_SHUTDOWN_TIMEOUT": "-1"}, env_file) == 8.0


@pytest.mark.parametrize(
    "line",
    [
        "APP_SHUTDOWN_TIMEOUT=60",
        "APP_SHUTDOWN_TIMEOUT=60\t# a tab before the comment",
        "APP_SHUTDOWN_TIMEOUT=60 # a space before the comment",
        'APP_SHUTDOWN_TIMEOUT="60" # quoted',
        "export APP_SHUTDOWN_TIMEOUT=60",
    ],
)
def test_grace_reads_env_as_the_service_does(tmp_path: Path, line: str) -> None:
    """A launcher that read a shorter budget than the service would kill it mid-drain."""
    from servicekit.config import load_settings

    env_file = tmp_path / ".env"
    env_file.write_text(line + "\n")
    settings, _ = load_settings({}, env_file)
    assert shutdown_timeout({}, env_file) == settings.shutdown_timeout


def test_exit_status_of_a_signalled_child_is_128_plus_n() -> None:
    assert exitcodes.exit_status(-15) == 143
    assert exitcodes.exit_status(0) == 0
    assert exitcodes.exit_status(75) == 75


def test_return_codes_in_words() -> None:
    assert exitcodes.describe(-9) == "SIGKILL"
    assert exitcodes.describe(73) == "status 73 (JOURNAL_UNWRITABLE)"
    assert exitcodes.describe(137) == "status 137 (SIGKILL)"
    assert exitcodes.describe(4) == "status 4"


# --- Real Windows only ------------------------------------------------------------------------


@windows_only
def test_ctrl_break_event_stops_the_service_gracefully(workdir: Path) -> None:
    """The event the launcher relies on, sent for real to ``python -m app`` in its own group."""
    process = Process([sys.executable, "-m", "app"], workdir, launcher_env())  # new group
    match = process.wait_for(LISTENING)
    assert ask(match[1], int(match[2]), [b"break\n"])[0].endswith(b"\n")
    process.send(signal.CTRL_BREAK_EVENT)
    assert process.wait() == ExitCode.OK, process.log
    assert "shutdown: SIGBREAK received" in process.log
    assert journal_requests(workdir / "data" / "journal.log") == b"break\n"


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
