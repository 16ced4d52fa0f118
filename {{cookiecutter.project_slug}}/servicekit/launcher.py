"""``python -m servicekit.launcher``: start the service so that it can always stop gracefully.

Windows has no SIGTERM. The only graceful stop a console program gets is a console control
event, Ctrl-C or Ctrl-Break, and CTRL_BREAK_EVENT can be aimed at one program only when that
program leads its own process group (CREATE_NEW_PROCESS_GROUP), which also makes it deaf to
Ctrl-C. So the launcher starts ``python -m app`` as the leader of a new process group (POSIX:
a new session), hears the user's Ctrl-C itself and passes it on as the one event the child
does hear: CTRL_BREAK_EVENT on Windows, SIGTERM on POSIX. A child that has not exited within
the grace period (APP_SHUTDOWN_TIMEOUT plus a margin) is killed.

Commands::

    python -m servicekit.launcher run [--run-dir DIR] [--grace S] [-- ARGS]  # start, wait, exit
    python -m servicekit.launcher stop [--run-dir DIR]  # ask the running ``run`` to stop

``stop`` talks to ``run`` through files in the run folder (``data/`` by default): ``run``
writes ``app.pid``; ``stop`` writes ``app.stop``; ``run`` notices it within 50 ms, stops the
service, writes its exit status to ``app.exit`` and removes ``app.pid``. A file needs no port
and works the same everywhere, and it is the only way in on Windows: a process attached to
another console cannot send console events to this one.

Exit statuses: the service's own (``servicekit/exitcodes.py``); 137 when the launcher had to kill
the service; 1 for the launcher's own refusals (already running, nothing to stop).

Stdlib only (it imports nothing from the project but the exit statuses, the runtime's
signal names and the settings, all stdlib only; python-dotenv is imported only to read a
``.env`` file, exactly as the service reads it), so it runs on any interpreter that can run
the service, the embeddable Windows Python included. A walk-through that uses it is
``scripts/launcher_demo.py``. Everything that differs between Windows and POSIX is in
:class:`Platform`, which tests build for either side on any machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from servicekit.aiorun import _signal_name
from servicekit.config import ConfigError, Settings, load_settings
from servicekit.exitcodes import exit_status

logger = logging.getLogger("servicekit.launcher")

GRACE_MARGIN = 5.0
"""Seconds on top of the service's shutdown budget: interpreter exit, a slow disk, a busy box."""
POLL_SECONDS = 0.05
"""How often ``run`` looks at the child and the stop file; bounds how late a stop is noticed."""
KILLED = 137
"""Status of ``run`` when it had to kill the service (128 + SIGKILL, on every platform)."""
REFUSED = 1
"""Status of ``run`` / ``stop`` when they refuse (already running, nothing to stop)."""

if sys.platform == "win32":
    CTRL_BREAK_EVENT: int = signal.CTRL_BREAK_EVENT
    CREATE_NEW_PROCESS_GROUP: int = subprocess.CREATE_NEW_PROCESS_GROUP
    SIGBREAK: int = signal.SIGBREAK
else:  # the Windows values, so tests can drive the Windows branch on any machine
    CTRL_BREAK_EVENT = 1
    CREATE_NEW_PROCESS_GROUP = 0x00000200
    SIGBREAK = 21


class Child(Protocol):
    """The part of :class:`subprocess.Popen` the launcher uses (tests pass a fake)."""

    @property
    def pid(self) -> int: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


Spawn = Callable[[Sequence[str], Mapping[str, Any]], Child]


def popen_child(command: Sequence[str], options: Mapping[str, Any]) -> Child:
    """Start the real child process."""
    return subprocess.Popen(list(command), **options)


# --- The platform seam ------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    """Everything that differs between Windows and POSIX, as data and functions.

    :func:`windows_platform` and :func:`posix_platform` build either side on any machine,
    with the operating-system calls replaceable, so the Windows branch is tested on Linux
    without touching ``sys.platform``.
    """

    name: str
    stop_event: str
    """What the child is sent for a graceful stop, for the log."""
    popen_options: Mapping[str, Any]
    """How the child is started: in its own process group or session."""
    relayed_signals: tuple[int, ...]
    """Signals to the launcher that it passes on as the stop event."""
    shared_signals: tuple[int, ...]
    """Signals the child receives by itself at the same moment, so passing them on would
    count twice (Ctrl-Break typed in a console reaches every process attached to it)."""
    send_stop: Callable[[int], None]
    """Deliver the graceful stop event to the child with this pid; may raise OSError."""
    kill: Callable[[Child], None]
    is_alive: Callable[[int], bool]


def posix_platform() -> Platform:
    """POSIX: the child gets its own session, so the terminal's Ctrl-C reaches only us."""
    if sys.platform == "win32":
        raise NotImplementedError("posix_platform needs POSIX signals")
    return Platform(
        name="posix",
        stop_event="SIGTERM",
        popen_options={"start_new_session": True},
        relayed_signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
        shared_signals=(),
        send_stop=lambda pid: os.kill(pid, signal.SIGTERM),
        kill=_kill_session,
        is_alive=_posix_pid_alive,
    )


def windows_platform(
    send_ctrl_event: Callable[[int, int], None] = os.kill,
    is_alive: Callable[[int], bool] | None = None,
) -> Platform:
    """Windows: the child leads a new process group, the only target CTRL_BREAK_EVENT has.

    ``send_ctrl_event(pid, event)`` is ``os.kill``, which on Windows calls
    GenerateConsoleCtrlEvent for the two console events. Ctrl-C typed in the console reaches
    the launcher only (a new process group ignores Ctrl-C); Ctrl-Break reaches both, so it is
    not passed on again.
    """
    return Platform(
        name="windows",
        stop_event="CTRL_BREAK_EVENT",
        popen_options={"creationflags": CREATE_NEW_PROCESS_GROUP},
        relayed_signals=(signal.SIGINT,),
        shared_signals=(SIGBREAK,),
        send_stop=lambda pid: send_ctrl_event(pid, CTRL_BREAK_EVENT),
        kill=lambda child: child.kill(),
        is_alive=is_alive or _windows_pid_alive,
    )


def current_platform() -> Platform:
    """The platform we run on."""
    return windows_platform() if sys.platform == "win32" else posix_platform()


def _kill_session(child: Child) -> None:
    """SIGKILL the child's whole session, so helpers it started die with it."""
    if sys.platform == "win32":
        raise NotImplementedError("_kill_session needs POSIX")
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        child.kill()


def _posix_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours
    return True


def _windows_pid_alive(pid: int) -> bool:
    """True if a process with this pid is running. (``os.kill(pid, 0)`` would kill it.)"""
    if sys.platform == "win32":
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        process_query_limited_information, still_active, error_access_denied = 0x1000, 259, 5
        handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
        if not handle:
            return ctypes.get_last_error() == error_access_denied
        try:
            code = wintypes.DWORD()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == still_active
        finally:
            kernel32.CloseHandle(handle)
    raise NotImplementedError("_windows_pid_alive needs Windows")


# --- Settings and the run folder --------------------------------------------------------------


def shutdown_timeout(environ: Mapping[str, str], env_file: Path = Path(".env")) -> float:
    """APP_SHUTDOWN_TIMEOUT as the service will read it: its own settings code, environment
    first, then ``.env``.

    If a setting is malformed, or python-dotenv (which reads ``.env``) is missing, this is
    the default: the service itself will refuse to start, with the message, and exit long
    before any grace period matters.
    """
    try:
        settings, _ = load_settings(environ, env_file)
    except (ConfigError, ImportError):
        return Settings.shutdown_timeout
    return settings.shutdown_timeout


@dataclass(frozen=True)
class RunFiles:
    """The files ``run`` and ``stop`` share: who is running, a stop request, the last status."""

    folder: Path

    @property
    def pid(self) -> Path:
        return self.folder / "app.pid"

    @property
    def stop(self) -> Path:
        return self.folder / "app.stop"

    @property
    def exit(self) -> Path:
        return self.folder / "app.exit"

    def write(self, path: Path, data: Mapping[str, Any]) -> None:
        """Write JSON atomically, so a reader never sees half a file."""
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    def read(self, path: Path) -> dict[str, Any] | None:
        """The JSON in ``path``, or None if it is missing or unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


# --- run --------------------------------------------------------------------------------------


class Launcher:
    """Start the service as a child, relay the first stop request, enforce the grace period."""

    def __init__(
        self,
        platform: Platform,
        command: Sequence[str],
        files: RunFiles,
        grace: float,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        spawn: Spawn = popen_child,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.platform = platform
        self.command = list(command)
        self.files = files
        self.grace = grace
        self.cwd = cwd
        self.env = env
        self.spawn = spawn
        self.clock = clock
        self._requests: list[tuple[str, bool]] = []
        self.stop_seconds: float | None = None
        """Seconds from the first stop request to the child's exit, once it has exited."""

    def request_stop(self, reason: str, *, relay: bool = True) -> None:
        """Ask for a graceful stop. Safe from a signal handler: only appends to a list.

        ``relay=False`` when the child got the same event by itself (Windows Ctrl-Break).
        """
        self._requests.append((reason, relay))

    def on_signal(self, signum: int, frame: FrameType | None = None) -> None:
        """The launcher's signal handler: a stop request, relayed unless the child shares it."""
        name = _signal_name(signum)
        self.request_stop(f"{name} received", relay=signum not in self.platform.shared_signals)

    def run(self, *, handle_signals: bool = True) -> int:
        """Start the child, wait for it, return its exit status (or KILLED, or REFUSED)."""
        try:
            owner = running_launcher(self.platform, self.files)
            self.files.folder.mkdir(parents=True, exist_ok=True)
            self.files.stop.unlink(missing_ok=True)  # a request left from an earlier run
        except OSError as exc:  # a file where the folder should be, no permission
            logger.error("cannot use the run folder %s: %s", self.files.folder, exc.strerror)
            return REFUSED
        if owner is not None:
            logger.error(
                "already running (launcher pid %d, %s); "
                "stop it with: python -m servicekit.launcher stop",
                owner,
                self.files.pid,
            )
            return REFUSED
        options = {
            **self.platform.popen_options,
            "cwd": self.cwd,
            "env": None if self.env is None else dict(self.env),
            "stdin": subprocess.DEVNULL,  # the service reads no input; keep it off the tty
        }
        # Handlers first: a Ctrl-C that lands right after the spawn is a request, not a crash.
        restore = self._install_signal_handlers() if handle_signals else (lambda: None)
        try:
            try:
                child = self.spawn(self.command, options)
            except OSError as exc:
                logger.error("cannot start %s: %s", self.command[0], exc)
                return REFUSED
            return self._run_child(child)
        finally:
            restore()

    def _run_child(self, child: Child) -> int:
        try:
            self.files.write(
                self.files.pid,
                {"launcher": os.getpid(), "service": child.pid, "grace": self.grace},
            )
        except OSError as exc:
            # Without app.pid nobody could stop the child, which runs in its own session.
            logger.error("cannot write %s (%s): stopping the service", self.files.pid, exc)
            self.platform.kill(child)
            child.wait()
            return REFUSED
        logger.info(
            "started '%s' (pid %d) in its own process group; "
            "Ctrl-C or 'python -m servicekit.launcher stop' stops it with %s, killed after %.1f s",
            " ".join(["python", *self.command[1:]]),
            child.pid,
            self.platform.stop_event,
            self.grace,
        )
        status: int | None = None
        try:
            status = self._supervise(child)
            return status
        finally:
            if status is None:  # an unexpected error in here: never leave the service orphaned
                self.platform.kill(child)
                child.wait()
            self.files.write(self.files.exit, {"status": status, "stop_seconds": self.stop_seconds})
            self.files.pid.unlink(missing_ok=True)

    def _supervise(self, child: Child) -> int:
        deadline: float | None = None
        requested_at = 0.0
        send_failed = False
        while True:
            try:
                returncode = child.wait(POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            else:
                if deadline is not None:
                    self.stop_seconds = self.clock() - requested_at
                status = exit_status(returncode)
                logger.info("the service exited with status %d", status)
                return status
            if self._take_stop_file():
                self.request_stop("stop requested (app.stop)")
            while self._requests:
                reason, relay = self._requests.pop(0)
                if deadline is not None:
                    logger.info("%s: already stopping", reason)
                    continue
                requested_at = self.clock()
                deadline = requested_at + self.grace
                if relay:
                    logger.info("%s: sending %s to the service", reason, self.platform.stop_event)
                    try:
                        self.platform.send_stop(child.pid)
                    except OSError as exc:
                        logger.error(
                            "could not send %s (%s): killing the service instead",
                            self.platform.stop_event,
                            exc,
                        )
                        deadline, send_failed = requested_at, True
                else:
                    logger.info("%s: the service received it too; waiting for it", reason)
            if deadline is not None and self.clock() >= deadline:
                if not send_failed:
                    logger.error("the service did not stop within %.1f s: killing it", self.grace)
                self.platform.kill(child)
                child.wait()
                self.stop_seconds = self.clock() - requested_at
                return KILLED

    def _take_stop_file(self) -> bool:
        try:
            self.files.stop.unlink()
        except FileNotFoundError:
            return False
        except OSError:  # Windows: the writer still has it open; next poll
            return False
        return True

    def _install_signal_handlers(self) -> Callable[[], None]:
        """Turn the launcher's own stop signals into requests; return how to undo that."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous: dict[int, Any] = {}
        for signum in (*self.platform.relayed_signals, *self.platform.shared_signals):
            previous[signum] = signal.signal(signum, self.on_signal)

        def restore() -> None:
            for signum, old in previous.items():
                signal.signal(signum, old if old is not None else signal.SIG_DFL)

        return restore


def running_launcher(platform: Platform, files: RunFiles) -> int | None:
    """The pid of the launcher that owns the run folder, if it is alive; clears a stale file."""
    info = files.read(files.pid)
    if info is None:
        if files.pid.exists():
            logger.warning("removing unreadable %s", files.pid)
            files.pid.unlink(missing_ok=True)
        return None
    pid = info.get("launcher")
    if isinstance(pid, int) and pid != os.getpid() and platform.is_alive(pid):
        return pid
    logger.warning("removing stale %s (launcher pid %s is gone)", files.pid, pid)
    files.pid.unlink(missing_ok=True)
    return None


# --- stop -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopResult:
    """What ``stop`` saw: the service's exit status and how long the stop took."""

    status: int | None
    seconds: float
    message: str


def request_stop(
    platform: Platform,
    files: RunFiles,
    *,
    extra_wait: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StopResult:
    """Ask the running ``run`` to stop the service; wait until it has exited.

    Waits for the launcher's grace period (recorded in ``app.pid``) plus ``extra_wait``.
    """
    info = files.read(files.pid)
    if info is None:
        return StopResult(None, 0.0, f"nothing to stop: no {files.pid}")
    owner = running_launcher(platform, files)
    if owner is None:
        return StopResult(None, 0.0, f"nothing to stop: the launcher in {files.pid} is gone")
    grace = info.get("grace")
    limit = (grace if isinstance(grace, (int, float)) else Settings.shutdown_timeout) + extra_wait
    files.exit.unlink(missing_ok=True)
    started = clock()
    files.write(files.stop, {"requested_by": os.getpid()})
    while files.pid.exists():
        if clock() - started > limit:
            return StopResult(
                None, clock() - started, f"launcher {owner} did not finish within {limit:.1f} s"
            )
        sleep(POLL_SECONDS)
    seconds = clock() - started
    result = files.read(files.exit) or {}
    status = result.get("status")
    if not isinstance(status, int):
        return StopResult(None, seconds, "the launcher exited without recording a status")
    return StopResult(status, seconds, f"stopped in {seconds:.2f} s, exit status {status}")


# --- Command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's own options, and the arguments after ``--`` that go to the service."""
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m servicekit.launcher",
        description="Start and stop the service so that it always stops gracefully.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "start the service and wait for it; Ctrl-C stops it gracefully"),
        ("stop", "stop the service started by 'run' from this folder"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--run-dir",
            type=Path,
            default=Path("data"),
            help="folder for app.pid, app.stop and app.exit (default: data)",
        )
        if name == "run":
            sub.add_argument(
                "--grace",
                type=float,
                default=None,
                help="seconds to wait after the stop request before killing "
                f"(default: APP_SHUTDOWN_TIMEOUT + {GRACE_MARGIN:g})",
            )
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run one launcher command; return the process exit status."""
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    platform = current_platform()
    if args.command == "run":
        grace = args.grace
        if grace is None:
            grace = shutdown_timeout(os.environ) + GRACE_MARGIN
        command = [sys.executable, "-m", "app", *extra]
        return Launcher(platform, command, RunFiles(args.run_dir), grace).run()
    if args.command == "stop":
        result = request_stop(platform, RunFiles(args.run_dir))
        if result.status is None:
            print(f"error: {result.message}", file=sys.stderr)
            return REFUSED
        print(result.message)
        return result.status
    raise AssertionError(f"unknown command {args.command}")  # argparse refused it already


if __name__ == "__main__":
    sys.exit(main())
