"""The runtime in a real process receiving real signals.

Each test starts ``tests/runtime_scripts/child.py``, waits for the line it prints once its
loop runs (or for a log line), sends real signals and checks the exit status and the log.
Nothing here sleeps to synchronise; the time limits only turn a hang into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import child_pythonpath

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "runtime_scripts" / "child.py"
ATTACKS = Path(__file__).resolve().parent / "runtime_scripts" / "attacks.py"
HANG_GUARD = 20.0
"""Seconds after which waiting is a failure, far above any normal time."""
SECOND_SIGNAL_GAP = 0.5
"""A repeat this long after the first signal is a second request, not a duplicate of it."""


class Child:
    """The child process, with its stdout and stderr collected line by line as they come."""

    def __init__(self, *args: str, script: Path = CHILD) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = child_pythonpath()
        self.popen = subprocess.Popen(
            [sys.executable, "-W", "error::DeprecationWarning", str(script), *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._collect, args=(name,), daemon=True) for name in self.lines
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, name: str) -> None:
        stream = getattr(self.popen, name)
        for line in stream:
            with self._changed:
                self.lines[name].append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, stream: str = "stderr") -> str:
        """Block until a line containing ``text`` appears; fail if it never does."""
        deadline = time.monotonic() + HANG_GUARD
        with self._changed:
            while True:
                for line in self.lines[stream]:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reading()):
                    pytest.fail(f"never saw {text!r} on {stream}:\n{self.output()}")
                self._changed.wait(min(left, 0.5))

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)
        self.last_signal = time.monotonic()

    def signal_again(self, signum: int, gap: float = SECOND_SIGNAL_GAP) -> None:
        """Send ``signum`` again ``gap`` seconds after the last one: the spacing is the test."""
        time.sleep(max(0.0, self.last_signal + gap - time.monotonic()))
        self.signal(signum)

    def finish(self) -> int:
        """Wait for the exit status; a child still running after the guard is a failure."""
        try:
            status = self.popen.wait(timeout=HANG_GUARD)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"child did not exit:\n{self.output()}")
        for reader in self._readers:
            reader.join(HANG_GUARD)
        return status

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.lines["stdout"], "--- stderr", *self.lines["stderr"]])

    def runtime_lines(self) -> list[str]:
        return [line for line in self.lines["stderr"] if " servicekit.aiorun: " in line]


@pytest.fixture
def start():
    children: list[Child] = []

    def starter(*args: str, script: Path = CHILD) -> Child:
        child = Child(*args, script=script)
        children.append(child)
        return child

    yield starter
    for child in children:
        if child.popen.poll() is None:
            child.popen.kill()
            child.popen.wait()


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_signal_gives_a_clean_shutdown_and_exit_0(start, signum: int) -> None:
    child = start("service", "--clients", "20", "--sleepers", "200")
    child.wait_for("ready", "stdout")
    child.signal(signum)
    assert child.finish() == 0, child.output()
    name = signal.Signals(signum).name
    phases = [line.split(" servicekit.aiorun: ", 1)[1] for line in child.runtime_lines()]
    assert phases[0] == f"shutdown: {name} received"
    assert phases[1].startswith("shutdown: cancelling ")
    assert phases[1].endswith("; waiting for 1 protected task(s)")
    assert phases[2] == "shutdown: executor stopped"
    assert phases[3].startswith("shutdown: complete in ")
    assert len(phases) == 4
    assert "INFO child: protected flush done" in child.lines["stderr"]
    assert "Traceback" not in "\n".join(child.lines["stderr"]), child.output()
    assert child.lines["stdout"][-1] == f"report signal={int(signum)} unfinished="


def test_run_without_coroutine_stops_on_sigterm(start) -> None:
    child = start("no-coroutine")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert child.runtime_lines()[0].endswith("shutdown: SIGTERM received")
    assert child.runtime_lines()[-1].split(": ", 1)[1].startswith("shutdown: complete in ")


def test_stuck_task_ends_at_the_budget_with_its_stack_logged(start) -> None:
    budget = 0.5
    child = start("service", "--stubborn", "--timeout", str(budget))
    child.wait_for("ready", "stdout")
    sent = time.monotonic()
    child.signal(signal.SIGINT)
    child.wait_for("stubborn task ignores its cancellation")
    child.signal_again(signal.SIGINT)  # without force_exit_on_second_signal: ignored
    status = child.finish()
    elapsed = time.monotonic() - sent
    assert status == 75, child.output()
    assert budget <= elapsed < budget + 10, child.output()
    warning = child.wait_for("shutdown: 1 task(s) still running after 0.5s")
    assert warning.startswith("WARNING servicekit.aiorun: ")
    stderr = "\n".join(child.lines["stderr"])
    assert "task 'stubborn':" in stderr
    assert "in stubborn" in stderr  # the frame the task is stuck in
    assert "shutdown: SIGINT received again; ignored, already shutting down" in stderr
    assert child.lines["stdout"][-1] == f"report signal={int(signal.SIGINT)} unfinished=stubborn"
    assert child.runtime_lines()[-1].split(": ", 1)[1].startswith("shutdown: complete in ")


def test_second_sigint_exits_130_with_the_stacks_of_unfinished_tasks(start) -> None:
    child = start("service", "--stubborn", "--force-exit", "--timeout", "60")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGINT)
    child.wait_for("stubborn task ignores its cancellation")
    child.signal_again(signal.SIGINT)
    sent = time.monotonic()
    assert child.finish() == 130, child.output()
    assert time.monotonic() - sent < HANG_GUARD / 2
    line = child.wait_for("shutdown: second SIGINT received; exiting now with status 130")
    assert line.startswith("WARNING servicekit.aiorun: ")
    stderr = "\n".join(child.lines["stderr"])
    assert "task 'stubborn':" in stderr
    assert "in stubborn" in stderr
    assert "shutdown: complete" not in stderr
    assert not [line for line in child.lines["stdout"] if line.startswith("report")]


def test_second_signal_exits_even_while_the_loop_is_blocked(start) -> None:
    child = start("service", "--blocking-callback", "--force-exit")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    child.wait_for("callback blocks the loop")
    child.signal_again(signal.SIGTERM)
    assert child.finish() == 128 + signal.SIGTERM, child.output()
    child.wait_for("shutdown: second SIGTERM received; exiting now with status 143")


def test_force_exit_after_bounds_a_shutdown_blocked_by_a_callback(start) -> None:
    """Our extension: no second signal comes (Docker sends one SIGTERM, then SIGKILL), yet a
    callback that blocks the loop cannot hold the stop past ``force_exit_after``."""
    child = start("service", "--blocking-callback", "--force-exit-after", "0.5")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    child.wait_for("callback blocks the loop")
    assert child.finish() == 75, child.output()
    elapsed = time.monotonic() - child.last_signal
    assert elapsed < 0.5 + 1.0, f"{elapsed:.1f}s after SIGTERM:\n{child.output()}"
    child.wait_for("shutdown: SIGTERM received 0.5s ago and still not done: exiting now")
    child.wait_for("in blocking_callback")  # where the main thread was stuck


def test_force_exit_after_ends_with_run(start) -> None:
    """A shutdown done in time exits as without the option, and the clock stops when run()
    returns: the process may go on after it (here for twice the limit)."""
    child = start("service", "--force-exit-after", "0.3", "--linger", "0.6")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    child.wait_for("report signal=15", "stdout")
    assert "still not done" not in child.output()


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_uvloop_service_stops_cleanly_on_sigterm(start) -> None:
    child = start("service", "--uvloop", "--clients", "20")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert "Traceback" not in "\n".join(child.lines["stderr"]), child.output()
    assert child.runtime_lines()[-1].split(": ", 1)[1].startswith("shutdown: complete in ")


# --- Hardening: each test below attacks run() the way a demanding user might (attacks.py) ---


def attack(start, name: str) -> Child:
    return start(name, script=ATTACKS)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("wedged-loop", "wedged"),
        ("wedged-in-c", "wedged_in_c"),
        ("wedged-in-c-uvloop", "wedged_in_c"),
        ("wedged-without-threads", None),
    ],
)
def test_force_exit_works_while_the_loop_is_wedged(start, name: str, where: str | None) -> None:
    """A loop blocked in a sleep, or inside a C call that releases the GIL and never checks
    for signals: there a Python-level handler cannot run, so the signals must be heard off
    the main thread. uvloop installs a wake-up fd of its own whenever it starts, which must
    not make the runtime deaf. Where no thread can be started to report, it still exits."""
    if name.endswith("uvloop") and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop not installed")
    child = attack(start, name)
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGINT)
    child.signal_again(signal.SIGINT, gap=0.3)
    sent = child.last_signal
    assert child.finish() == 130, child.output()
    assert time.monotonic() - sent < 5.0, "the force exit waited for the wedged loop"
    if where is None:
        return  # nothing could be reported without a thread: the exit status says it all
    child.wait_for("shutdown: second SIGINT received; exiting now with status 130")
    stderr = "\n".join(child.lines["stderr"])
    assert "task 'main':" in stderr
    assert f"in {where}\n" in stderr + "\n"  # the stack shows where the loop is stuck


def test_force_exit_works_while_the_loop_is_wedged_and_stderr_is_unread() -> None:
    env = dict(os.environ, PYTHONPATH=child_pythonpath({}))
    with subprocess.Popen(
        [sys.executable, str(ATTACKS), "wedged-loop-unread-stderr"],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # never read: the flood fills it and every log write blocks
        text=True,
    ) as popen:
        try:
            assert popen.stdout is not None
            assert popen.stdout.readline() == "ready\n"
            popen.send_signal(signal.SIGINT)
            time.sleep(0.3)  # the spacing is the scenario: a second request, not a duplicate
            popen.send_signal(signal.SIGINT)
            sent = time.monotonic()
            assert popen.wait(timeout=HANG_GUARD) == 130
            assert time.monotonic() - sent < 5.0
        finally:
            if popen.poll() is None:
                popen.kill()


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_a_duplicate_signal_is_the_same_request(start, use_uvloop: bool) -> None:
    if use_uvloop and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop not installed")
    uvloop = ["--uvloop"] if use_uvloop else []
    child = start("service", "--force-exit", "--slow-callback", "0.3", *uvloop)
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    child.signal_again(signal.SIGTERM, gap=0.02)  # as timeout(1) or a process group does
    assert child.finish() == 0, child.output()
    assert "INFO child: protected flush done" in child.lines["stderr"]
    phases = [line.split(" servicekit.aiorun: ", 1)[1] for line in child.runtime_lines()]
    assert phases[0] == "shutdown: SIGTERM received"
    repeats = [line for line in phases if line.startswith("shutdown: SIGTERM received again")]
    assert len(repeats) == 1, child.output()  # logged, never dropped in silence
    assert "the same request" in repeats[0]
    assert phases[-1].startswith("shutdown: complete in ")


def test_a_duplicate_after_a_fast_shutdown_does_not_kill_the_process(start) -> None:
    child = start("service", "--force-exit", "--clients", "0", "--sleepers", "0")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    first = child.last_signal
    child.signal_again(signal.SIGTERM, gap=0.005)
    if child.last_signal - first > 0.02:
        pytest.skip("this test process was descheduled between the two signals")
    assert child.finish() == 0, child.output()
    assert child.lines["stdout"][-1] == f"report signal={int(signal.SIGTERM)} unfinished="


def test_a_repeat_after_the_window_is_the_second_signal(start) -> None:
    child = start("service", "--force-exit", "--stubborn")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    child.signal_again(signal.SIGTERM)
    assert child.finish() == 143, child.output()
    child.wait_for("shutdown: second SIGTERM received; exiting now with status 143")


def test_cyclic_garbage_in_protected_work_stays_bounded(start) -> None:
    child = attack(start, "cyclic-garbage")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert "INFO attack: churn done" in child.lines["stderr"]
    peak = float(child.wait_for("peak_rss_mib=", "stdout").split("=")[1])
    # The issue asks for under 200 MiB; a pause that let garbage pile up reached 210 on 3.14.
    assert peak < 120, f"peak RSS {peak:.0f} MiB during the shutdown"


def test_failures_the_caller_handles_are_not_unhandled(start) -> None:
    child = attack(start, "handled-errors")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    stderr = "\n".join(child.lines["stderr"])
    assert "handled: disk full (late)" in stderr
    assert "handled: disk full (at once)" in stderr
    assert "unhandled error" not in stderr
    assert "nobody was waiting" not in stderr
    assert "Traceback" not in stderr


def test_a_failure_nobody_can_receive_is_still_unhandled(start) -> None:
    child = attack(start, "dropped-error")
    assert child.finish() == 1, child.output()
    child.wait_for("shutdown: unhandled error stops the loop")
    assert "OSError: disk full (at once)" in child.lines["stderr"]


def test_an_exception_handler_call_without_an_exception_stops_the_loop(start) -> None:
    child = attack(start, "message-only")
    child.wait_for("ready", "stdout")
    assert child.finish() == 0, child.output()
    child.wait_for("shutdown: unhandled error stops the loop: a message, no exception")
    assert child.runtime_lines()[-1].split(": ", 1)[1].startswith("shutdown: complete in ")


def test_no_budget_means_no_limit(start) -> None:
    child = attack(start, "no-budget")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    child.wait_for("shutdown callback ran")
    child.wait_for("shutdown: cancelling 2 task(s)")
    assert "Traceback" not in "\n".join(child.lines["stderr"]), child.output()


def test_a_bad_argument_is_refused_before_anything_starts(start) -> None:
    child = attack(start, "bad-budget")
    assert child.finish() == 1
    stderr = "\n".join(child.lines["stderr"])
    assert "TypeError: run(): timeout_task_shutdown must be a number of seconds or None" in stderr
    assert "main started" not in stderr
    assert "shutdown callback ran" not in stderr
    assert "never awaited" not in stderr


def test_a_forked_child_signal_is_not_the_parents(start) -> None:
    child = attack(start, "fork-child")
    child.wait_for("ready", "stdout")
    assert not child.runtime_lines(), child.output()
    child.wait_for(f"forked child ended with {-signal.SIGTERM}")  # its signal was its own
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert "survived the child's signal" in "\n".join(child.lines["stderr"])
    assert len([line for line in child.runtime_lines() if " received" in line]) == 1


def test_the_users_loop_signal_handlers_are_put_back(start) -> None:
    child = attack(start, "user-handlers")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    child.wait_for("run() returned")
    child.wait_for("ready again", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    child.wait_for("user SIGTERM handler")


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_a_loop_signal_handler_added_inside_run_works_and_shutdown_is_still_heard(
    start, use_uvloop: bool
) -> None:
    """asyncio's add_signal_handler takes the wake-up fd from the listening thread; uvloop
    keeps its own and gets its signals passed on. Either way both kinds of signal work."""
    if use_uvloop and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop not installed")
    child = attack(start, "loop-handler-inside-uvloop" if use_uvloop else "loop-handler-inside")
    child.wait_for("ready", "stdout")
    for n in (1, 2):
        child.signal(signal.SIGUSR1)
        child.wait_for(f"user SIGUSR1 handler #{n}")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    child.wait_for("shutdown: SIGTERM received")


def test_run_inside_a_running_loop_is_refused_and_touches_nothing(start) -> None:
    child = attack(start, "nested-run")
    child.wait_for("ready", "stdout")
    line = child.wait_for("nested run refused: ")
    assert "cannot be called from a running event loop" in line
    stderr = "\n".join(child.lines["stderr"])
    assert "inner main started" not in stderr
    assert "never awaited" not in stderr
    child.signal(signal.SIGTERM)  # the outer run() still hears its signals
    assert child.finish() == 0, child.output()


def test_protection_reaches_the_subtasks_of_protected_work(start) -> None:
    child = attack(start, "subtasks")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    stderr = "\n".join(child.lines["stderr"])
    for part in ("create_task", "task group", "gather 1", "gather 2", "started after the signal"):
        assert f"part {part} done" in stderr, child.output()
    assert "save done" in stderr
    assert "waiting for 5 protected task(s)" in stderr, child.output()


# --- Never worse than aiorun: forks, the user's handlers, lost signals (issue 19) -------------

LOOPS = pytest.mark.parametrize("loop", ["", "-uvloop"], ids=["asyncio", "uvloop"])
"""The attacks that take a loop run on both: uvloop handles its wake-up fd differently."""


def attack_on(start, name: str, loop: str) -> Child:
    if loop and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop not installed")
    return attack(start, name + loop)


@LOOPS
def test_a_process_pool_does_not_hang_the_shutdown(start, loop: str) -> None:
    """Forked pool workers inherit the runtime's fds: they must not keep run() from ending."""
    child = attack_on(start, "process-pool", loop)
    child.wait_for("pool worker")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    child.wait_for("run() returned")


@LOOPS
def test_a_forked_child_still_alive_does_not_delay_the_return(start, loop: str) -> None:
    child = attack_on(start, "forked-child-alive", loop)
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    line = child.wait_for("returned duration=", "stdout")
    returned_after = time.monotonic() - child.last_signal
    assert child.finish() == 0, child.output()
    assert returned_after < 1.0, f"run() returned {returned_after:.1f}s after the signal"
    assert float(line.split("=")[1]) < 1.0


@LOOPS
def test_a_sighup_handler_of_the_users_is_left_alone(start, loop: str) -> None:
    child = attack_on(start, "sighup-reloads", loop)
    child.wait_for("ready", "stdout")
    for n in (1, 2):
        child.signal(signal.SIGHUP)
        child.wait_for(f"reload #{n}")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert not [line for line in child.runtime_lines() if "SIGHUP" in line], child.output()


@LOOPS
@pytest.mark.parametrize("how", ["signal", "loop"])
def test_a_sigterm_handler_installed_inside_main_wins(start, loop: str, how: str) -> None:
    """main takes SIGTERM with signal.signal() or loop.add_signal_handler(): SIGTERM is then
    the user's alone, SIGINT still stops the service, and a handler of signal.signal() is
    still in place after run()."""
    child = attack_on(start, f"user-sigterm-{how}", loop)
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    child.wait_for("user SIGTERM handler #1")
    child.signal(signal.SIGINT)
    assert child.finish() == 0, child.output()
    assert not [line for line in child.runtime_lines() if "SIGTERM" in line], child.output()
    child.wait_for("shutdown: SIGINT received")
    if how == "signal":
        child.wait_for("kept: True")
        child.wait_for("user SIGTERM handler #2")


@LOOPS
def test_other_signals_write_nothing_into_the_users_files(start, loop: str) -> None:
    """uvloop closes its wake-up fd whenever its loop stops; a file opened then may get its
    number, and no signal byte may be forwarded into it."""
    child = attack_on(start, "write-while-signalled", loop)
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    child.wait_for("writing", "stdout")
    for _ in range(40):
        child.signal_again(signal.SIGUSR1, gap=0.01)  # the spacing is the scenario
    assert child.finish() == 0, child.output()
    line = child.wait_for("lines=", "stdout")
    assert line.startswith("lines=400 strays=0 "), child.output()


@LOOPS
def test_a_flood_of_another_signal_loses_no_sigterm(start, loop: str) -> None:
    """Thousands of SIGUSR1 a second while the loop is busy in a call that holds the GIL
    overflow any wake-up channel: the SIGTERM among them must still be heard. Five rounds,
    because the SIGTERM may also land where the channel has room (the runtime before this
    test lost it in about 3 of 8)."""
    for _ in range(5):
        child = attack_on(start, "flooded", loop)
        child.wait_for("ready", "stdout")
        stop = threading.Event()

        def flood(child: Child = child, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                for _ in range(100):
                    child.popen.send_signal(signal.SIGUSR1)
                time.sleep(0.001)  # the flood's rate, not a synchronisation

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            time.sleep(0.8)  # the scenario: the flood fills the channel before the SIGTERM
            child.signal(signal.SIGTERM)
            child.wait_for("shutdown: SIGTERM received")
        finally:
            stop.set()
            flooder.join()
        assert child.finish() == 0, child.output()


@LOOPS
@pytest.mark.parametrize("when", ["fork-then-no-threads", "no-threads-at-all"])
def test_sigterm_is_heard_where_no_thread_can_be_started(start, loop: str, when: str) -> None:
    child = attack_on(start, when, loop)
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    child.wait_for("shutdown: SIGTERM received")
    assert "Traceback" not in "\n".join(child.lines["stderr"]), child.output()


@LOOPS
@pytest.mark.parametrize("when", ["start", "end"])
def test_no_sigterm_is_lost_as_run_starts_or_ends(start, loop: str, when: str) -> None:
    """One run per call run() makes into the signal module as it starts (or ends), with a
    SIGTERM arriving in another thread just before that call: each one is heard, by run()
    or by the handler that was there before. (The end once lost 3 to 4 of 8.)"""
    child = attack_on(start, f"race-{when}", loop)
    assert child.finish() == 0, child.output()
    line = child.wait_for("lost=", "stdout")
    assert line.startswith("lost=0 "), line


@LOOPS
def test_forks_inside_run_warn_no_more_than_inside_asyncio_run(start, loop: str) -> None:
    child = attack_on(start, "fork-warnings", loop)
    assert child.finish() == 0, child.output()
    line = child.wait_for("asyncio.run warnings=", "stdout")
    baseline, ours = (int(part.split("=")[1]) for part in line.split() if "=" in part)
    assert ours <= baseline, line


def test_the_users_gc_threshold_set_during_the_shutdown_is_kept(start) -> None:
    child = attack(start, "gc-kept")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    child.wait_for("threshold=(1234, 11, 12)", "stdout")


def test_system_exit_during_the_shutdown_still_runs_every_phase(start) -> None:
    child = attack(start, "system-exit-in-shutdown")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 3, child.output()
    for line in ("executor stopped", "async generator closed", "shutdown: complete in "):
        child.wait_for(line)
    child.wait_for("shutdown: SystemExit raised; re-raised after the shutdown")


def test_a_keyboard_interrupt_raised_by_code_is_not_a_sigint(start) -> None:
    child = attack(start, "keyboard-interrupt")
    status = child.finish()
    assert status in (1, -signal.SIGINT), child.output()
    child.wait_for("shutdown: KeyboardInterrupt raised; re-raised after the shutdown")
    assert not [line for line in child.runtime_lines() if "SIGINT" in line], child.output()
    child.wait_for("shutdown: complete in ")


def test_run_off_the_main_thread_says_so_once(start) -> None:
    child = attack(start, "off-main-thread")
    assert child.finish() == 0, child.output()
    child.wait_for("both runs returned")
    warnings = [line for line in child.runtime_lines() if "not in the main thread" in line]
    assert len(warnings) == 1, child.output()
    assert warnings[0].startswith("WARNING ")
