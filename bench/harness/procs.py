"""Start a server process, wait for its ready line, signal it and time its exit precisely.

Why this way:
- Readiness is a line the server prints (never a sleep): reader threads drain stdout and stderr
  into memory and wake waiters, so the child never blocks on a full pipe while it shuts down.
- Exit time comes from a pidfd (Linux >= 5.3): poll() returns the instant the process becomes a
  zombie, with no polling interval (Popen.wait(timeout) sleeps in up to 50 ms steps).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stream:
    """Lines read so far from one pipe of the child, with a condition to wait on."""

    lines: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """perf_counter() when each line was read, for start-up timing."""
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


class Child:
    """One server process under test."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.started = time.perf_counter()
        """Just before the fork: start-up time is measured from here."""
        self.popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.pid = self.popen.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.last_index = -1
        self.stdout = Stream()
        self.stderr = Stream()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(pipe, stream: Stream) -> None:  # type: ignore[no-untyped-def]
        for raw in pipe:
            now = time.perf_counter()
            with stream.cond:
                stream.times.append(now)
                stream.lines.append(raw.decode(errors="replace").rstrip("\n"))
                stream.cond.notify_all()
        with stream.cond:
            stream.closed = True
            stream.cond.notify_all()

    def wait_line(self, stream: Stream, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Block until a line of `stream` matches `pattern`; raise if the child dies or is slow.

        The match's line was read at `stream.times[self.last_index]`.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with stream.cond:
            while True:
                for index in range(seen, len(stream.lines)):
                    match = regex.search(stream.lines[index])
                    if match:
                        self.last_index = index
                        return match
                seen = len(stream.lines)
                left = deadline - time.monotonic()
                if stream.closed or left <= 0:
                    self.kill()
                    raise RuntimeError(
                        f"no line matching {pattern!r} from {self.popen.args!r}; "
                        f"stderr tail: {self.stderr.lines[-15:]!r}"
                    )
                stream.cond.wait(left)

    def signal_and_time_exit(self, signum: int, timeout: float = 60.0) -> tuple[float, float]:
        """Send `signum`, wait for exit; return (seconds from signal to exit, monotonic t0)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        t0 = time.perf_counter()
        os.kill(self.pid, signum)
        ready = poller.poll(timeout * 1000)
        t1 = time.perf_counter()
        if not ready:
            self.kill()
            raise RuntimeError(f"{self.popen.args!r} did not exit within {timeout} s of {signum}")
        self.finish()
        return t1 - t0, t0

    def wait_exit(self, timeout: float = 60.0) -> float:
        """Wait for an exit already under way; return the perf_counter time it happened."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            self.kill()
            raise RuntimeError(f"{self.popen.args!r} did not exit within {timeout} s")
        t1 = time.perf_counter()
        self.finish()
        return t1

    def finish(self) -> int:
        """Reap the child and collect the rest of its output."""
        code = self.popen.wait()
        for thread in self._threads:
            thread.join(10)
        os.close(self.pidfd)
        self.pidfd = -1
        return code

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def kill(self) -> None:
        """Last resort for a child that misbehaves: SIGKILL and reap."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def count_tracebacks(lines: Sequence[str]) -> int:
    """How many Python tracebacks a process printed (one per 'Traceback (most recent...' line)."""
    return sum(1 for line in lines if line.startswith("Traceback (most recent call last)"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
