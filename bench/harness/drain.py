"""Benchmark 2: drain of the generated service, 200 clients mid-conversation at SIGTERM.

Each client runs a strict ping-pong of numbered lines (`d<client>-<seq>-...`), every echo
checked against the line it answers. Once every client has had a few answers, the bench sends
SIGTERM while all of them are still talking, and records, per client, how many lines it had
sent and had answered at that instant. Clients go on talking until the service closes them.

Afterwards the journal file (APP_JOURNAL_PATH) is compared with what the clients saw:
- answered, not journaled      -> lost (the service acknowledged a line it did not keep)
- sent before the signal, neither answered nor journaled -> lost (received, then dropped)
- journaled, never answered    -> reported (kept, but the reply did not reach the client)
Lines sent after the signal may be refused: the client sees no echo and knows it.

Clients live in this process on a uvloop loop, the signal is sent from that same loop, and the
exit is seen through a pidfd on it: "before/after the signal" is exact, not clock-matched.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import idle, servers

LINE_BYTES = 64
WARM_ANSWERS = 3


def make_line(client: int, seq: int) -> bytes:
    head = b"d%03d-%07d-" % (client, seq)
    return head + b"." * (LINE_BYTES - 1 - len(head)) + b"\n"


class Talker(asyncio.Protocol):
    """One client in a ping-pong conversation that it never ends by itself."""

    def __init__(self, client: int, warm: Callable[[], None]) -> None:
        self.client = client
        self.warm = warm
        self.sent = 0
        self.answered = 0
        self.answered_after = 0
        self.signalled = False
        self.sent_at_signal = 0
        self.answered_at_signal = 0
        self.bad: bytes | None = None
        self.end = "open"
        self.buf = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.transport.write(make_line(self.client, self.sent))
        self.sent += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (cut := self.buf.find(b"\n")) >= 0:
            line, self.buf = self.buf[: cut + 1], self.buf[cut + 1 :]
            if line != make_line(self.client, self.answered):
                self.bad = self.bad or line
                continue
            self.answered += 1
            if self.signalled:
                self.answered_after += 1
            if self.answered == WARM_ANSWERS:
                self.warm()
            self._send()

    def mark_signal(self) -> None:
        self.signalled = True
        self.sent_at_signal = self.sent
        self.answered_at_signal = self.answered

    def eof_received(self) -> bool:
        self.end = "eof"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.end = type(exc).__name__
        self.closed.set_result(None)


@dataclass
class Sample:
    seconds: float
    returncode: int | None
    clients: int
    answered_after_signal: int
    sent_after_signal: int
    unanswered_sent_after_signal: int
    lost_answered_not_journaled: int
    lost_received_then_dropped: int
    unanswered_sent_before_signal: int
    journaled_not_answered: int
    journal_duplicates: int
    bad_echoes: int
    ends: dict[str, int]
    drain_log: list[str]

    @property
    def lost(self) -> int:
        return self.lost_answered_not_journaled + self.lost_received_then_dropped

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "lost": self.lost}


async def _converse(
    child_pid: int, pidfd: int, port: int, clients: int
) -> tuple[float, list[Talker]]:
    loop = asyncio.get_running_loop()
    warm_left = clients
    all_warm = loop.create_future()

    def one_warm() -> None:
        nonlocal warm_left
        warm_left -= 1
        if warm_left == 0 and not all_warm.done():
            all_warm.set_result(None)

    talkers: list[Talker] = []
    for client in range(clients):
        _, talker = await loop.create_connection(
            functools.partial(Talker, client, one_warm), "127.0.0.1", port
        )
        talkers.append(talker)
    await asyncio.wait_for(all_warm, 30)

    exited: asyncio.Future[float] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(time.perf_counter())

    loop.add_reader(pidfd, on_exit)
    for talker in talkers:
        talker.mark_signal()
    t0 = time.perf_counter()
    os.kill(child_pid, signal.SIGTERM)
    try:
        t1 = await asyncio.wait_for(exited, 60)
    finally:
        loop.remove_reader(pidfd)
    await asyncio.wait_for(asyncio.gather(*(t.closed for t in talkers)), 10)
    return t1 - t0, talkers


def measure_once(project: Path, scratch: Path, clients: int, rep: int) -> Sample:
    import uvloop

    journal = scratch / f"drain-journal-{rep}.log"
    spec = servers.generated_service(project, journal)
    child, port = servers.start(spec)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            seconds, talkers = runner.run(_converse(child.pid, child.pidfd, port, clients))
        child.finish()
    finally:
        child.kill()
    return _compare(seconds, child.returncode, talkers, journal, child.stderr.lines)


def _requests(content: bytes) -> list[bytes]:
    """The journaled requests, each with its newline, in either journal format.

    Since checksums, a journal starts with a ``# servicekit journal`` header line and each
    record ends with a space and the CRC-32 of the request in 8 hex digits; older builds (the
    echo-first baseline) write the bare lines.
    """
    requests = []
    for line in content.splitlines(keepends=True):
        if line.startswith(b"# servicekit journal "):
            continue
        body = line[:-1]
        if body[-9:-8] == b" " and body[-8:] == b"%08x" % zlib.crc32(body[:-9]):
            line = body[:-9] + b"\n"
        requests.append(line)
    return requests


def _compare(
    seconds: float, returncode: int | None, talkers: list[Talker], journal: Path, log: list[str]
) -> Sample:
    kept = Counter(_requests(journal.read_bytes())) if journal.exists() else Counter()
    answered_not_journaled = dropped = unanswered_before = journaled_not_answered = 0
    for t in talkers:
        for seq in range(t.answered):
            if not kept[make_line(t.client, seq)]:
                answered_not_journaled += 1
        for seq in range(t.answered, t.sent):
            in_journal = bool(kept[make_line(t.client, seq)])
            journaled_not_answered += in_journal
            if seq < t.sent_at_signal:
                unanswered_before += 1
                dropped += not in_journal
    shutdown_words = re.compile(
        r"stopped accepting|draining|journal flushed|shutdown:|WARNING|ERROR"
    )
    return Sample(
        seconds=seconds,
        returncode=returncode,
        clients=len(talkers),
        answered_after_signal=sum(t.answered_after for t in talkers),
        sent_after_signal=sum(t.sent - t.sent_at_signal for t in talkers),
        unanswered_sent_after_signal=sum(t.sent - t.answered for t in talkers) - unanswered_before,
        lost_answered_not_journaled=answered_not_journaled,
        lost_received_then_dropped=dropped,
        unanswered_sent_before_signal=unanswered_before,
        journaled_not_answered=journaled_not_answered,
        journal_duplicates=sum(n - 1 for n in kept.values() if n > 1),
        bad_echoes=sum(t.bad is not None for t in talkers),
        ends=dict(Counter(t.end for t in talkers)),
        drain_log=[line for line in log if shutdown_words.search(line)],
    )


def run_all(
    project: Path, scratch: Path, *, reps: int, clients: int, log: Callable[[str], None]
) -> list[Sample]:
    samples = []
    for rep in range(reps):
        sample = measure_once(project, scratch, clients, rep)
        samples.append(sample)
        log(
            f"drain rep {rep + 1}/{reps}: exit {sample.seconds * 1000:.0f} ms "
            f"(status {sample.returncode}), answered after signal {sample.answered_after_signal}, "
            f"lost {sample.lost}, unanswered-sent-before {sample.unanswered_sent_before_signal}, "
            f"journaled-not-answered {sample.journaled_not_answered}, ends {sample.ends}"
        )
    return samples


@dataclass
class IdleSample:
    """SIGTERM with idle clients that neither send nor close (say, a connection pool): they
    only learn of the shutdown when they next use the socket."""

    idle: int
    seconds: float
    returncode: int | None
    warnings: list[str]


def measure_idle_once(project: Path, scratch: Path, count: int, rep: int) -> IdleSample:
    spec = servers.generated_service(project, scratch / f"idle-journal-{rep}.log")
    child, port = servers.start(spec)
    held = []
    try:
        held = idle.open_idle(port, count)
        seconds, _ = child.signal_and_time_exit(signal.SIGTERM)
    finally:
        idle.close_all(held)
        child.kill()
    warnings = [line for line in child.stderr.lines if " WARNING " in line or " ERROR " in line]
    return IdleSample(count, seconds, child.returncode, warnings)


def run_idle(
    project: Path, scratch: Path, *, reps: int, count: int, log: Callable[[str], None]
) -> list[IdleSample]:
    samples = []
    for rep in range(reps):
        sample = measure_idle_once(project, scratch, count, rep)
        samples.append(sample)
        log(
            f"drain with {count} idle clients, rep {rep + 1}/{reps}: exit "
            f"{sample.seconds * 1000:.0f} ms (status {sample.returncode})"
        )
    return samples
