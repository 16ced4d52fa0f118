"""Start-up in real processes: what a signal, a failing ``recover``, a thread the system will
not give, or a malformed setting does before the service has said ``listening on``.

Each of these once ended in a way nobody could act on: killed with 143 and no line, a
``KeyboardInterrupt`` traceback, "stopped by an unhandled error" with no record named,
``listening on`` followed by a crash, or a pasted secret printed back. Here each must end
with one line (a traceback only where the user's own code failed) and a documented status.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD, LISTENING, Process, journal_record, service_env

from servicekit.exitcodes import ExitCode

Figure = Callable[[str, str], None]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and limits")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux limits")

RECOVERING = textwrap.dedent(
    """
    import runpy, sys, time
    from app import protocol

    def recover(request):
        print("recover() saw", request.decode(), file=sys.stderr, flush=True)
        if request == b"boom":
            raise ValueError("recover cannot take this request")
        if request == b"slow":
            # A replay far longer than anyone waits: only a signal ends it. In short steps,
            # as a real replay works: one long C call hears a signal that the kernel gave
            # another thread only when it returns (docs/protocol.md, "Protocol").
            for _ in range(60_000):
                time.sleep(0.01)

    protocol.recover = recover
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
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


# --- A signal during start-up -----------------------------------------------------------------


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_the_replay_stops_the_start_in_one_line(
    workdir: Path, signum: signal.Signals, figure: Figure
) -> None:
    """Once: SIGTERM killed it at once (143, which means "a second SIGTERM"), with no line;
    SIGINT printed a KeyboardInterrupt traceback. Neither said what was interrupted."""
    journal = b"first\nslow\nnever replayed\n"
    process = start_recovering(workdir, {"journal.log": journal})
    process.wait_for("recover\\(\\) saw slow")
    process.send(signum)
    assert process.wait() == ExitCode.STARTUP_INTERRUPTED, process.log
    assert "Traceback" not in process.log
    assert "listening on" not in process.log
    # Besides the journal's own warnings (a file from before checksums, no snapshot()):
    said = [line for line in process.lines if "servicekit.journal" not in line]
    [stopped] = [line for line in said if "recover() saw" not in line]
    assert f"{signum.name} received while replaying the journal" in stopped, process.log
    assert (workdir / "data" / "journal.log").read_bytes() == journal  # nothing cut or added
    figure("startup", "SIGTERM, SIGINT or SIGHUP during the journal replay: one line, exit 3")


@posix_only
def test_workers_stopped_during_their_replay_make_the_supervisor_say_so(workdir: Path) -> None:
    """The supervisor forwards the signal; each worker stops its start in one line, and the
    supervisor's status says the service never started, rather than 0 or 143."""
    journals = {f"journal.worker-{index}.log": b"slow\n" for index in (1, 2)}
    process = start_recovering(workdir, journals, APP_WORKERS="2")
    process.wait_for("worker 1.*recover\\(\\) saw slow")
    process.wait_for("worker 2.*recover\\(\\) saw slow")
    process.send(signal.SIGTERM)
    assert process.wait() == ExitCode.STARTUP_INTERRUPTED, process.log
    assert process.log.count("received while replaying the journal") == 2, process.log
    assert "Traceback" not in process.log
    assert "listening on" not in process.log


INTERRUPTING = textwrap.dedent(
    """
    import os, runpy, signal, sys
    import servicekit.main
    from app import protocol

    replayed = []

    def recover(request):  # a replay to interrupt too, whatever this project's recover is
        replayed.append(request)

    protocol.recover = recover
    AT = int(os.environ["INTERRUPT_AT_CALL"])
    calls = 0

    def count(frame, event, arg):
        global calls
        calls += 1
        # The start ends where run() takes over: a run with fewer calls than the counting one
        # gets its signal there.
        handing_over = event == "call" and frame.f_code.co_name == "_serve"
        if calls == AT or handing_over:
            sys.setprofile(None)
            if AT == 0:  # counting
                print("calls in the start:", calls, file=sys.stderr, flush=True)
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # main() has not begun
                print("SIGTERM's default action", file=sys.stderr, flush=True)
            signal.raise_signal(signal.SIGTERM)

    start = servicekit.main.main

    def main(*args, **kwargs):
        sys.setprofile(count)  # every call and return, ours and the standard library's
        try:
            return start(*args, **kwargs)
        finally:
            sys.setprofile(None)

    servicekit.main.main = main
    runpy.run_module("app", run_name="__main__")
    """
)
"""``python -m interrupting``: the service, with SIGTERM raised at the INTERRUPT_AT_CALL-th
function call or return of ``main()``'s start, or at the hand-over to ``run()`` if that comes
first (0: count them up to the hand-over, and raise it there). The count varies from run to
run by a few percent (the loop's turns depend on timing)."""

START_SAMPLES = 60
"""Moments of the start that each get a SIGTERM: spread over all of it."""


@posix_only
def test_a_signal_at_any_moment_of_the_start_ends_it_cleanly(workdir: Path) -> None:
    """A stop signal once raised an exception wherever the main thread was. In an import it
    left the import lock held and the process hung for ever; in an event-loop callback (a
    worker's heartbeat) asyncio logged it with a traceback and swallowed it; during the
    handlers' own installation it escaped as a traceback. Here SIGTERM comes at moments
    spread over the whole start of a worker with a journal to replay: each must end with one
    line and a documented status, the start stopped (3) or the service stopped by the runtime
    (0), with no traceback and no hang."""
    (workdir / "data").mkdir()
    journal = b"".join(journal_record(b"request %d" % n) for n in range(3))
    (workdir / "interrupting").mkdir()
    (workdir / "interrupting" / "__main__.py").write_text(INTERRUPTING)
    beats, beat_end = os.pipe()  # a worker's heartbeat channel, as its supervisor gives it
    os.set_blocking(beats, False)
    env = service_env(
        APP_HOST="127.0.0.1",
        APP_PORT="0",
        APP_REUSE_PORT="1",
        APP_JOURNAL_PATH="data/journal.log",
        APP_WORKER_INDEX="2",
        SUPERVISOR_HEARTBEAT_FD=str(beat_end),
    )

    def start_with_sigterm_at(call: int) -> subprocess.CompletedProcess[str]:
        (workdir / "data" / "journal.log").write_bytes(journal)
        with contextlib.suppress(BlockingIOError):
            os.read(beats, 65536)
        try:
            return subprocess.run(
                [sys.executable, "-m", "interrupting"],
                cwd=workdir,
                env={**env, "INTERRUPT_AT_CALL": str(call)},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=HANG_GUARD,
                check=False,
                pass_fds=(beat_end,),
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"hung after SIGTERM at call {call} of the start")

    try:
        counted = start_with_sigterm_at(0)
        match = re.search(r"calls in the start: (\d+)", counted.stderr)
        assert counted.returncode == ExitCode.OK, counted.stderr
        assert match, counted.stderr
        calls = int(match[1])
        for sample in range(START_SAMPLES):
            call = 1 + calls * sample // START_SAMPLES
            result = start_with_sigterm_at(call)
            said = f"SIGTERM at call {call} of {calls}: exit {result.returncode}\n{result.stderr}"
            assert "Traceback" not in result.stderr, said
            if "SIGTERM's default action" in result.stderr:  # before main() installed any
                assert result.returncode == -signal.SIGTERM, said
            elif result.returncode == ExitCode.STARTUP_INTERRUPTED:
                assert "SIGTERM received while" in result.stderr, said
                assert "listening on" not in result.stderr, said
            else:
                assert result.returncode == ExitCode.OK, said
                assert "shutdown: SIGTERM received" in result.stderr, said
    finally:
        os.close(beats)
        os.close(beat_end)


# --- recover() fails on one record ------------------------------------------------------------


def test_recover_failing_names_the_record_and_keeps_the_traceback(
    workdir: Path, figure: Figure
) -> None:
    """Once: exit 1 with "stopped by an unhandled error: ..." and nothing else, the same at
    every restart, with no way to find the request."""
    process = start_recovering(workdir, {"journal.log": b"first\nsecond\nboom\nfourth\n"})
    assert process.wait() == ExitCode.RECOVER_FAILED, process.log
    log = process.log
    assert "listening on" not in log
    assert "recover() saw fourth" not in log  # it stopped at the failing record
    [error] = [line for line in process.lines if " ERROR " in line]
    # Line 3 starts after "first\n" and "second\n": at byte 13.
    assert "journal line 3 (byte offset 13)" in error, error
    assert "data/journal.log" in error
    assert "sed -n 3p" in error  # what to look at next
    assert "Traceback" in log
    assert "ValueError: recover cannot take this request" in log
    assert log.count("Traceback") == 1
    figure("startup", "recover() raising: the record's line and byte offset, a traceback, exit 65")


# --- The protocol's functions are checked before anything binds --------------------------------


async def _async_function(request: bytes) -> None:
    pass


def _plain_function(request: bytes) -> None:
    pass


class _AsyncCallable:
    async def __call__(self, request: bytes) -> bytes:
        return request


@pytest.mark.parametrize(
    ("functions", "named"),
    [
        ({}, "has no handle()"),
        ({"handle": _plain_function}, "handle is not async"),
        ({"handle": _async_function, "recover": _async_function}, "recover is async"),
        ({"handle": _async_function, "snapshot": _async_function}, "snapshot is async"),
        ({"handle": _async_function, "needs_journal": _async_function}, "needs_journal is async"),
        ({"handle": _async_function, "recover": b"not a function"}, "recover is not a function"),
    ],
)
def test_a_protocol_slip_is_named_in_one_line(functions: dict[str, object], named: str) -> None:
    """Each slip gives one line that names the function and what to write instead."""
    from types import SimpleNamespace

    from servicekit.main import protocol_problem

    problem = protocol_problem(SimpleNamespace(__name__="userservice.protocol", **functions))
    assert problem is not None
    assert f"userservice.protocol.{named}" in problem.replace(" has", ".has"), problem
    assert "\n" not in problem


@pytest.mark.parametrize(
    "handle", [_async_function, _AsyncCallable(), __import__("functools").partial(_async_function)]
)
def test_a_correct_protocol_passes_the_check(handle: object) -> None:
    from types import SimpleNamespace

    from servicekit.main import protocol_problem

    protocol = SimpleNamespace(
        handle=handle, recover=_plain_function, snapshot=list, needs_journal=bool
    )
    assert protocol_problem(protocol) is None


# --- Threads the service needs ----------------------------------------------------------------

ONE_THREAD = textwrap.dedent(
    """
    import os, resource, sys
    # A thread's stack is as large as the stack limit the process started with (glibc), so
    # with a 2 GiB stack limit and a 3 GiB address space the process and one thread fit,
    # and the second thread is refused: ulimit -v made deterministic, whatever the loop.
    stack = 2 << 30
    resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))
    resource.setrlimit(resource.RLIMIT_AS, (stack + (1 << 30), resource.RLIM_INFINITY))
    os.execv(sys.executable, [sys.executable, "-m", "app"])
    """
)


@linux_only
@pytest.mark.parametrize("uvloop", ["0", "1"])
def test_too_little_memory_for_its_threads_fails_before_listening(
    workdir: Path, uvloop: str, figure: Figure
) -> None:
    """Once: under ``ulimit -v`` it logged ``listening on`` and then died on "can't start
    new thread" (at the first fsync or at the stop), exit 1, after clients were let in."""
    if uvloop == "1":
        pytest.importorskip("uvloop")
    (workdir / "one_thread.py").write_text(ONE_THREAD)
    env = service_env(
        APP_HOST="127.0.0.1",
        APP_PORT="0",
        APP_JOURNAL_PATH="data/journal.log",
        APP_USE_UVLOOP=uvloop,
    )
    process = Process([sys.executable, "one_thread.py"], workdir, env)
    status = process.wait_for(f"{LISTENING.pattern}|cannot start")
    assert "cannot start" in status[0], process.log
    assert process.wait() == ExitCode.NO_THREADS, process.log
    [line] = process.lines
    assert "can't start new thread" in line or "threads" in line, line
    figure("startup", "no memory for its threads (ulimit -v): one line before listening, exit 71")


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
    run_app, workdir: Path, name: str, value: str, figure: Figure
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
    figure("secrets", "a pasted line or a 100 kB value as a setting: its length, never the value")


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
    run_app, dribbling_server: int, figure: Figure
) -> None:
    """Once: still running after 15 s with ``--timeout 2``, one byte a second resetting it."""

    def probe(port: int) -> tuple[float, str]:
        began = time.monotonic()
        result = run_app("--port", str(port), "--timeout", "2", module="servicekit.health")
        assert result.returncode == 1, result.stderr
        return time.monotonic() - began, result.stderr

    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
    start_up, _ = probe(refused_port)  # the interpreter's start, on this machine, now
    took, stderr = probe(dribbling_server)
    assert took - start_up < 2 + 0.5, f"the probe took {took:.1f} s with --timeout 2"
    [line] = stderr.splitlines()
    assert "within 2" in line, line
    figure("health-deadline", f"a byte a second: --timeout 2 gave up {took - start_up:.1f} s in")


# --- A worker is ready when it says so on its heartbeat channel -------------------------------


@linux_only
@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")
def test_workers_are_ready_through_their_channel_whatever_their_log_says(
    workdir: Path, tmp_path: Path, figure: Figure
) -> None:
    """With APP_LOG_LEVEL=WARNING no worker logs ``listening on``. The supervisor once read
    readiness from that line: it never told systemd READY=1, and it took the first crash
    of a worker for a failed start and stopped the whole service."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        address = str(tmp_path / "notify.sock")
        systemd.bind(address)
        systemd.settimeout(HANG_GUARD)
        env = service_env(
            APP_HOST="127.0.0.1",
            APP_PORT="0",
            APP_JOURNAL_PATH="data/journal.log",
            APP_WORKERS="2",
            APP_LOG_LEVEL="WARNING",
            NOTIFY_SOCKET=address,
        )
        process = Process([sys.executable, "-m", "app"], workdir, env)
        try:
            ready = systemd.recv(100)
        except TimeoutError:
            ready = b""
        if ready != b"READY=1":
            process.popen.kill()
            process.wait()
            pytest.fail(f"no READY=1 from the supervisor:\n{process.log}")
        children = Path(f"/proc/{process.popen.pid}/task/{process.popen.pid}/children")
        first = int(children.read_text().split()[0])
        os.kill(first, signal.SIGKILL)
        process.wait_for("exited with SIGKILL, restarting")
        assert process.popen.poll() is None, process.log
        assert process.stop(signal.SIGTERM) == ExitCode.OK, process.log
    assert "before the service was ready" not in process.log
    figure("workers", "at APP_LOG_LEVEL=WARNING: ready through the heartbeat pipe, READY=1 sent")
