"""The write-ahead journal: what it promises about the file, whatever the disk or a crash does.

The service-level invariant (every reply a client received is in the journal, even after
``kill -9``) is tested in test_reliability.py. Here the journal itself is attacked: a torn last
line left by a crash, a disk that fills up in the middle of a write, special files, a symlink
planted at its path, and the group commit and fsync policies it is configured with.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    JOURNAL_HEADER,
    Service,
    StartService,
    ask,
    connect,
    is_reply,
    journal_record,
    journal_requests,
    service_env,
)

import servicekit.journal
from servicekit.exitcodes import ExitCode
from servicekit.journal import FsyncPolicy, Journal

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file semantics")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def journal_file(*requests: bytes) -> bytes:
    """A journal file holding ``requests``, as the service writes it."""
    return JOURNAL_HEADER + b"".join(map(journal_record, requests))


@pytest.mark.quick
def test_a_torn_last_line_is_fenced_not_fused(start_service: StartService, workdir: Path) -> None:
    """A crash mid-write leaves a partial line; the next run must not glue its first line on."""
    (workdir / "data").mkdir()
    (workdir / "data" / "journal.log").write_bytes(journal_file(b"complete") + b"partial-li")
    service = start_service()
    assert "fenced a torn last line: 10 byte(s) moved to data/journal.log.torn" in service.log
    with connect(service) as sock:
        assert is_reply(ask(sock, b"next-line\n"))
    assert service.stop() == ExitCode.OK, service.log
    assert journal_requests(service.journal) == b"complete\nnext-line\n"
    assert (workdir / "data" / "journal.log.torn").read_bytes() == b"partial-li"


def test_a_journal_ending_on_a_line_is_left_alone(
    start_service: StartService, workdir: Path
) -> None:
    (workdir / "data").mkdir()
    (workdir / "data" / "journal.log").write_bytes(journal_file(b"one", b"two"))
    service = start_service()
    assert service.stop() == ExitCode.OK, service.log
    assert "fenced" not in service.log
    assert service.journal.read_bytes() == journal_file(b"one", b"two")
    assert not (workdir / "data" / "journal.log.torn").exists()


@posix_only
def test_the_journal_is_private(start_service: StartService, workdir: Path) -> None:
    """It holds client data: readable by the service's user only, in a folder only it opens."""
    service = start_service()
    with connect(service) as sock:
        assert is_reply(ask(sock, b"private\n"))
    assert service.stop() == ExitCode.OK, service.log
    assert stat.S_IMODE(service.journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(service.journal.parent.stat().st_mode) == 0o700


@posix_only
def test_a_symlink_at_the_journal_path_is_refused(run_app, workdir: Path) -> None:
    """Someone who can write the folder must not redirect client data to a file of their choice."""
    (workdir / "data").mkdir()
    target = workdir / "elsewhere.log"
    (workdir / "data" / "journal.log").symlink_to(target)
    result = run_app(APP_PORT="0")
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "is a symbolic link" in result.stderr
    assert not target.exists()


@posix_only
def test_a_second_service_on_the_same_journal_refuses_with_69(
    start_service: StartService, run_app
) -> None:
    """Two processes appending to one journal would interleave their batches: refuse the second."""
    first = start_service()
    result = run_app(APP_PORT="0")
    assert result.returncode == ExitCode.ADDRESS_IN_USE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "data/journal.log is in use by another process" in result.stderr
    with connect(first) as sock:
        assert is_reply(ask(sock, b"still mine\n"))
    assert first.stop() == ExitCode.OK, first.log
    assert journal_requests(first.journal) == b"still mine\n"


@linux_only
def test_dev_null_as_journal_stops_with_0(start_service: StartService) -> None:
    """/dev/null cannot be fsynced; that is said once at start, and the clean stop exits 0."""
    service = start_service(APP_JOURNAL_PATH="/dev/null", APP_JOURNAL_FSYNC="always")
    with connect(service) as sock:
        assert is_reply(ask(sock, b"into the void\n"))
    assert service.stop() == ExitCode.OK, service.log
    assert service.log.count("cannot be synced") == 1, service.log


@linux_only
def test_a_fifo_nobody_reads_is_refused_at_start(run_app, workdir: Path) -> None:
    """Opening a FIFO for writing would wait forever for a reader: refuse it instead."""
    (workdir / "data").mkdir()
    os.mkfifo(workdir / "data" / "journal.log")
    result = run_app(APP_PORT="0")
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "cannot write journal" in result.stderr


FULL_DISK = textwrap.dedent(
    """
    import asyncio, logging, resource, sys
    from pathlib import Path
    from servicekit.journal import FsyncPolicy, Journal

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
    failures = []

    async def main():
        path = Path(sys.argv[1])
        journal = Journal(path, fsync_policy=FsyncPolicy.NEVER, on_failure=failures.append)
        journal.open()
        journal.start()
        acknowledged = 0
        for group in range(30):
            requests = [b"group %02d request %d, some padding" % (group, n) for n in range(7)]
            try:
                await journal.wait_for(journal.append(requests))
            except OSError:
                break
            acknowledged += len(requests)
        try:
            await journal.wait_for(journal.append([b"after the failure"]))
        except OSError:
            print("refused after failure")
        await journal.close(5)
        print("acknowledged", acknowledged, "failures", len(failures))

    asyncio.run(main())
    """
)


@linux_only
def test_a_disk_that_fills_mid_write_leaves_whole_lines_and_an_exact_count(
    tmp_path: Path,
) -> None:
    """The file size limit cuts a write in the middle, as a full disk does."""
    path = tmp_path / "journal.log"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)],
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    acknowledged = int(words[words.index("acknowledged") + 1])
    assert "refused after failure" in result.stdout
    assert words[-1] == "1", "on_failure is called once"
    content = path.read_bytes()
    assert content.endswith(b"\n"), "the file must end on a line boundary"
    assert len(journal_requests(path).splitlines()) == acknowledged
    assert 0 < acknowledged < 30 * 7
    # Exactly the batch that was cut is reported; nothing else was queued at that moment.
    assert "7 request(s) could not be journaled" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


class Counted:
    """Wraps an ``os`` function for one test, counting calls and waking a waiter on each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.function = getattr(os, name)
        self.calls = 0
        self.called = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        monkeypatch.setattr(servicekit.journal.os, name, self)

    def __call__(self, *args: object) -> object:
        self.calls += 1
        self.loop.call_soon_threadsafe(self.called.set)
        return self.function(*args)


def run_journal(
    tmp_path: Path, policy: FsyncPolicy, scenario: Callable[[Journal], Awaitable[None]]
) -> None:
    """Run ``scenario`` with an open, started journal on a fresh loop, then close it."""
    failures: list[OSError] = []

    async def main() -> None:
        journal = Journal(tmp_path / "journal.log", fsync_policy=policy, on_failure=failures.append)
        journal.open()
        journal.start()
        await scenario(journal)
        await journal.close(HANG_GUARD)

    asyncio.run(main())
    assert not failures


def test_requests_are_on_file_before_the_append_is_done(tmp_path: Path) -> None:
    async def scenario(journal: Journal) -> None:
        done = journal.wait_for(journal.append([b"first", b"second"]))
        assert not done.done(), "a reply may only follow the write"
        await done
        assert journal_requests(tmp_path / "journal.log") == b"first\nsecond\n"

    run_journal(tmp_path, FsyncPolicy.NEVER, scenario)


def test_continuations_run_in_order_with_the_write_and_one_that_raises_stops_no_other(
    tmp_path: Path,
) -> None:
    """The write calls each reply's continuation itself, in the order they were registered,
    once the file has their requests; a continuation with a bug is reported to the loop, and
    the others (other connections' replies) still run."""
    called: list[tuple[str, object]] = []
    reported: list[BaseException] = []

    async def scenario(journal: Journal) -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context["exception"])
        )
        first = journal.append([b"first"])
        second = journal.append([b"second"])

        def broken(error: OSError | None) -> None:
            called.append(("broken", error))
            raise RuntimeError("a bug in a continuation")

        def on_file(name: str) -> Callable[[OSError | None], None]:
            def then(error: OSError | None) -> None:
                called.append((name, error))
                assert journal_requests(tmp_path / "journal.log") == b"first\nsecond\n"

            return then

        journal.when_written(first, on_file("first"))
        journal.when_written(second, broken)
        journal.when_written(second, on_file("second"))
        assert not called, "a continuation may only follow the write"
        await journal.wait_for(second)
        assert journal.written >= second

    run_journal(tmp_path, FsyncPolicy.NEVER, scenario)
    assert called == [("first", None), ("broken", None), ("second", None)]
    assert [str(error) for error in reported] == ["a bug in a continuation"]


def test_group_commit_writes_everything_queued_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends from many connections in one turn of the loop make one write (a ``writev`` of
    their records where there is one)."""

    async def scenario(journal: Journal) -> None:
        writes = [Counted(monkeypatch, name) for name in ("write", "writev") if hasattr(os, name)]
        appends = [journal.append([b"connection %d" % n]) for n in range(50)]
        await asyncio.gather(*map(journal.wait_for, appends))
        assert sum(counted.calls for counted in writes) == 1

    run_journal(tmp_path, FsyncPolicy.NEVER, scenario)
    lines = journal_requests(tmp_path / "journal.log").splitlines()
    assert lines == [b"connection %d" % n for n in range(50)]


def test_fsync_always_syncs_each_batch_before_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(journal: Journal) -> None:
        syncs = Counted(monkeypatch, "fsync")
        for n in range(3):
            await journal.wait_for(journal.append([b"line %d" % n]))
            assert syncs.calls == n + 1

    run_journal(tmp_path, FsyncPolicy.ALWAYS, scenario)


def test_fsync_never_syncs_only_at_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[Counted] = []

    async def scenario(journal: Journal) -> None:
        syncs.append(Counted(monkeypatch, "fsync"))
        for n in range(3):
            await journal.wait_for(journal.append([b"line %d" % n]))
        assert syncs[0].calls == 0

    run_journal(tmp_path, FsyncPolicy.NEVER, scenario)
    assert syncs[0].calls == 1


def test_fsync_interval_syncs_a_quiet_tail_within_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most one fsync per interval, and data written just after one is synced by the next."""

    async def scenario(journal: Journal) -> None:
        syncs = Counted(monkeypatch, "fsync")
        await journal.wait_for(journal.append([b"first"]))
        await asyncio.wait_for(syncs.called.wait(), HANG_GUARD)  # the first write syncs at once
        syncs.called.clear()
        for n in range(5):
            await journal.wait_for(journal.append([b"then %d" % n]))
        assert syncs.calls == 1, "a second sync inside the interval"
        await asyncio.wait_for(syncs.called.wait(), HANG_GUARD)  # no new write: the timer syncs
        assert syncs.calls == 2

    run_journal(tmp_path, FsyncPolicy.INTERVAL, scenario)


@posix_only
def test_the_journal_flushes_on_sigterm_with_every_policy(start_service: StartService) -> None:
    for policy in FsyncPolicy:
        service = start_service(APP_JOURNAL_FSYNC=policy.value)
        line = policy.value.encode() + b"\n"
        with connect(service) as sock:
            assert is_reply(ask(sock, line))
        assert service.stop(signal.SIGTERM) == ExitCode.OK, service.log
    assert journal_requests(service.journal) == b"always\ninterval\nnever\n"


def talk_until_killed(
    service: Service, round_: int, kill_at: int, acknowledged: list[bytes], rng: random.Random
) -> None:
    """20 clients pipeline requests; SIGKILL once ``kill_at`` replies were acknowledged in all.

    A request counts as acknowledged when its reply arrived: each connection has eight in
    flight and replies come in order, so the oldest in flight is the one answered.
    """

    async def talk(client: int, killed: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        in_flight: list[bytes] = []
        try:
            for n in range(100_000):
                request = b"r%d c%d n%d %s" % (round_, client, n, b"x" * rng.randrange(200))
                writer.write(request + b"\n")
                in_flight.append(request)
                if len(in_flight) < 8:
                    continue
                await reader.readuntil(b"\n")
                acknowledged.append(in_flight.pop(0))
                if len(acknowledged) >= kill_at and not killed.is_set():
                    killed.set()
                    service.send(signal.SIGKILL)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # killed
        finally:
            writer.close()

    async def scenario() -> None:
        killed = asyncio.Event()
        talkers = asyncio.gather(*(talk(client, killed) for client in range(20)))
        await asyncio.wait_for(talkers, HANG_GUARD * 3)
        assert killed.is_set()

    asyncio.run(scenario())
    assert service.wait() == -signal.SIGKILL


@pytest.mark.quick
@posix_only
def test_kill_9_under_load_loses_no_acknowledged_request_and_fuses_none(
    start_service: StartService, figure
) -> None:
    """Rounds of: clients pipelining, SIGKILL after a random number of replies, restart.

    Whatever the protocol answers, a reply means its request is in the journal. After all the
    rounds, every journal line is one whole request (a torn tail was fenced, never fused with
    the next run's first line) and each client's requests appear in the order it sent them.
    """
    rng = random.Random(9)
    rounds = 6
    acknowledged: list[bytes] = []
    fenced = 0
    for round_ in range(rounds):
        service = start_service()
        fenced += service.log.count("fenced a torn last line")
        kill_at = len(acknowledged) + rng.randrange(200, 2000)
        talk_until_killed(service, round_, kill_at, acknowledged, rng)
    last = start_service()  # fences the last round's torn tail, if any
    fenced += last.log.count("fenced a torn last line")
    assert last.stop() == ExitCode.OK, last.log
    journal = journal_requests(last.journal).splitlines()
    well_formed = re.compile(rb"r\d+ c\d+ n\d+ x*")
    fused = [line for line in journal if not well_formed.fullmatch(line)]
    assert not fused, f"{len(fused)} fused or torn line(s), e.g. {fused[:3]}"
    missing = set(acknowledged) - set(journal)
    assert not missing, f"{len(missing)} acknowledged request(s) not journaled"
    order: dict[bytes, list[int]] = {}
    for line in journal:
        round_id, client_id, number = line.split(b" ")[:3]
        order.setdefault(round_id + b" " + client_id, []).append(int(number[1:]))
    assert all(numbers == sorted(numbers) for numbers in order.values()), "order not kept"
    figure(
        "kill-9",
        f"kill -9 under load, {rounds} rounds and restarts: {len(acknowledged):,} acknowledged"
        f" requests all journaled, 0 fused lines ({fenced} torn tail(s) fenced)",
    )
