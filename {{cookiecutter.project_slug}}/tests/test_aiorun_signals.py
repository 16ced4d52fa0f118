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

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "runtime_scripts" / "child.py"
HANG_GUARD = 20.0
"""Seconds after which waiting is a failure, far above any normal time."""


class Child:
    """The child process, with its stdout and stderr collected line by line as they come."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        self.popen = subprocess.Popen(
            [sys.executable, "-W", "error::DeprecationWarning", str(CHILD), *args],
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
        return [line for line in self.lines["stderr"] if " app.runtime.aiorun: " in line]


@pytest.fixture
def start():
    children: list[Child] = []

    def starter(*args: str) -> Child:
        child = Child(*args)
        children.append(child)
        return child

    yield starter
    for child in children:
        if child.popen.poll() is None:
            child.popen.kill()
            child.popen.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_gives_a_clean_shutdown_and_exit_0(start, signum: int) -> None:
    child = start("service", "--clients", "20", "--sleepers", "200")
    child.wait_for("ready", "stdout")
    child.signal(signum)
    assert child.finish() == 0, child.output()
    name = signal.Signals(signum).name
    phases = [line.split(" app.runtime.aiorun: ", 1)[1] for line in child.runtime_lines()]
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
    child.signal(signal.SIGINT)  # without force_exit_on_second_signal: ignored
    status = child.finish()
    elapsed = time.monotonic() - sent
    assert status == 75, child.output()
    assert budget <= elapsed < budget + 10, child.output()
    warning = child.wait_for("shutdown: 1 task(s) still running after 0.5s")
    assert warning.startswith("WARNING app.runtime.aiorun: ")
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
    sent = time.monotonic()
    child.signal(signal.SIGINT)
    assert child.finish() == 130, child.output()
    assert time.monotonic() - sent < HANG_GUARD / 2
    line = child.wait_for("shutdown: second SIGINT received; exiting now with status 130")
    assert line.startswith("WARNING app.runtime.aiorun: ")
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
    child.signal(signal.SIGTERM)
    assert child.finish() == 128 + signal.SIGTERM, child.output()
    child.wait_for("shutdown: second SIGTERM received; exiting now with status 143")


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_uvloop_service_stops_cleanly_on_sigterm(start) -> None:
    child = start("service", "--uvloop", "--clients", "20")
    child.wait_for("ready", "stdout")
    child.signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert "Traceback" not in "\n".join(child.lines["stderr"]), child.output()
    assert child.runtime_lines()[-1].split(": ", 1)[1].startswith("shutdown: complete in ")
