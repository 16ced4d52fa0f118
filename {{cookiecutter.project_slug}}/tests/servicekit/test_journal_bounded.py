"""A journal that stays bounded: compaction through the protocol's ``snapshot()``, rotation for
a protocol without state, and ``kill -9`` at every step of a compaction.

The stateful protocol here is a small key-value store written the way a user would write one
in ``app/protocol.py``: ``handle`` and ``recover`` apply ``SET k v``; ``snapshot`` returns one
``SET`` per key, the requests that rebuild today's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    JOURNAL_HEADER,
    REFUSAL,
    Process,
    Service,
    StartService,
    ask,
    connect,
    is_reply,
    journal_lines,
    journal_record,
    journal_requests,
    service_env,
    skip_if_the_journal_rebuilds_state,
)

from servicekit.exitcodes import ExitCode

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file semantics")

KEY_VALUE = textwrap.dedent(
    """
    import asyncio, os, runpy, signal, sys
    from app import protocol
    from servicekit import journal, main as entry

    store = {}

    def apply(request):
        parts = request.split(b" ", 2)
        if parts[0] == b"SET" and len(parts) == 3:
            store[parts[1]] = parts[2]

    async def handle(request):
        parts = request.split(b" ", 2)
        if parts[0] == b"GET" and len(parts) == 2:
            return store.get(parts[1], b"(none)")
        apply(request)
        return b"OK"

    def recover(request):
        apply(request)

    def snapshot():
        return [b"SET %s %s" % item for item in store.items()]

    protocol.handle, protocol.recover, protocol.snapshot = handle, recover, snapshot
    vars(protocol).pop("needs_journal", None)  # every request journaled, whatever app/ says

    # KILL_AT=n: SIGKILL this process at the n-th os call made inside a compaction (or
    # inside the journal function KILL_IN names).
    kill_at = int(os.environ.get("KILL_AT", "0"))
    kill_in = os.environ.get("KILL_IN", "_compact")
    calls = [0]
    compacting = [False]

    class KillingOs:
        def __getattr__(self, name):
            real = getattr(os, name)
            if not callable(real):
                return real

            def call(*args, **kwargs):
                if compacting[0]:
                    calls[0] += 1
                    if calls[0] == kill_at:
                        print(f"killed at step {kill_at}: os.{name}", file=sys.stderr, flush=True)
                        os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)

            return call

    def watch(function):
        def watched(*args):
            compacting[0] = True
            try:
                return function(*args)
            finally:
                compacting[0] = False

        return watched

    # SNAPSHOT_RAISES=1: snapshot() raises once the store holds anything (not at the start).
    # When the writer wakes for a compaction, it goes on only once the client's next batch is
    # queued, and had woken it too: the race in which the failure must wake it again. Each
    # compaction while serving says how many requests were queued for it.
    if os.environ.get("SNAPSHOT_RAISES"):
        def snapshot():
            if store:
                raise RuntimeError("the store is locked")
            return []

        protocol.snapshot = snapshot
        next_wakeup = journal.Journal._next_wakeup
        compact = journal.Journal._compact_while_serving

        async def woken_with_a_batch_queued(self):
            await next_wakeup(self)
            while self._compaction_due() and not self._queued_lines:
                await asyncio.sleep(0.001)
            self._wakeup.clear()  # set by that batch: this round is the one it woke

        def counted(self, loop):
            print(f"compaction with {self._queued_lines} queued", file=sys.stderr, flush=True)
            return compact(self, loop)

        journal.Journal._next_wakeup = woken_with_a_batch_queued
        journal.Journal._compact_while_serving = counted

    if kill_at:
        owner = journal.Journal if kill_in == "_compact" else journal
        setattr(owner, kill_in, watch(getattr(owner, kill_in)))
        journal.os = KillingOs()
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


def key_value(workdir: Path, **settings: str) -> Service:
    """The key-value service, run as ``python -m kv`` so that workers run it too."""
    (workdir / "kv").mkdir(exist_ok=True)
    (workdir / "kv" / "__main__.py").write_text(KEY_VALUE)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="data/journal.log", **settings)
    STARTED.append(service := Service(workdir, env, args=["-m", "kv"]))
    return service


STARTED: list[Process] = []
"""Processes a test started directly; the fixture below kills any left after a failure."""


@pytest.fixture(autouse=True)
def kill_leftovers() -> Iterator[None]:
    yield
    while STARTED:
        process = STARTED.pop()
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


def read_store(service: Service, keys: list[bytes]) -> dict[bytes, bytes]:
    with connect(service) as sock:
        return {key: ask(sock, b"GET " + key + b"\n")[:-1] for key in keys}


@posix_only
def test_a_compaction_that_fails_refuses_only_what_is_in_no_journal(workdir: Path) -> None:
    """A compaction runs after the write that made it due. When it fails (here a folder is in
    the way of its new file, as a full disk would stop it), the service stops (73), but the
    batch written before it is in the journal: it is answered, and only what no journal
    holds is refused. Seen failing: a refused SET was in the journal and replayed."""
    service = key_value(workdir, APP_JOURNAL_MAX_BYTES="4096", APP_JOURNAL_FSYNC="always")
    (service.journal.parent / "journal.log.compact").mkdir()
    answered: list[bytes] = []
    refused: list[bytes] = []
    with connect(service) as sock:
        for n in range(1000):
            request = b"SET k%d %s" % (n, b"v" * 100)
            reply = ask(sock, request + b"\n")
            if reply != b"OK\n":
                assert reply.startswith(REFUSAL), reply
                refused.append(request)
                break
            answered.append(request)
    assert service.wait() == ExitCode.JOURNAL_UNWRITABLE, service.log
    assert "cannot compact" in service.log or "journal" in service.log
    journal = journal_lines(service.journal)
    assert refused, "the compaction never failed"
    assert [request for request in answered if request + b"\n" not in journal] == []
    assert [request for request in refused if request + b"\n" in journal] == []


@posix_only
def test_kill_9_at_every_step_of_a_compaction_recovers_the_same_state(
    workdir: Path, figure
) -> None:
    """A compaction is cut by SIGKILL before each os call it makes, in turn; whichever file is
    left at the path must recover exactly the state the journal held before."""
    rng = random.Random(21)
    keys = [b"k%d" % n for n in range(20)]
    requests = [b"SET %s %d" % (rng.choice(keys), n) for n in range(300)]
    expected: dict[bytes, bytes] = {}
    for request in requests:
        _, key, value = request.split(b" ")
        expected[key] = value
    content = JOURNAL_HEADER + b"".join(map(journal_record, requests))
    steps = 0
    for kill_at in range(1, 100):
        (workdir / "data").mkdir(mode=0o700, exist_ok=True)
        (workdir / "data" / "journal.log").write_bytes(content)
        (workdir / "data" / "journal.log").chmod(0o600)
        (workdir / "kv.py").write_text(KEY_VALUE)
        env = service_env(
            APP_PORT="0",
            APP_JOURNAL_PATH="data/journal.log",
            APP_JOURNAL_MAX_BYTES="1000",
            KILL_AT=str(kill_at),
        )
        STARTED.append(cut := Process([sys.executable, "kv.py"], workdir, env))
        line = cut.wait_for(r"killed at step|listening on")
        if "listening on" in line[0]:
            assert cut.stop() == ExitCode.OK, cut.log
            assert "compacted data/journal.log" in cut.log
            break
        assert cut.wait() == -signal.SIGKILL
        steps += 1
        after = key_value(workdir)
        assert read_store(after, sorted(expected)) == expected, (kill_at, after.log)
        assert "skipped" not in after.log, after.log
        assert after.stop() == ExitCode.OK, after.log
    assert steps >= 8, f"only {steps} kill points: the compaction made fewer os calls than thought"
    figure(
        "compaction-kill-9",
        f"kill -9 before each of the {steps} os calls of a compaction: the same state recovered",
    )


def pipeline_sets(
    service: Service,
    round_: int,
    kill_after: int,
    acknowledged: dict[bytes, int],
    sent: dict[bytes, int],
) -> None:
    """8 clients pipeline ``SET`` on keys of their own with rising values; SIGKILL after
    ``kill_after`` replies in all. Records the last value answered and sent per key."""

    async def client(number: int, killed: asyncio.Event, count: list[int]) -> None:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        in_flight: list[tuple[bytes, int]] = []
        try:
            for n in range(1_000_000):
                key = b"c%d-k%d" % (number, n % 5)
                value = round_ * 1_000_000 + n
                writer.write(b"SET %s %d %s\n" % (key, value, b"x" * 100))
                sent[key] = value
                in_flight.append((key, value))
                if len(in_flight) < 8:
                    continue
                reply = await reader.readuntil(b"\n")
                assert reply == b"OK\n", reply
                key, value = in_flight.pop(0)
                acknowledged[key] = value
                count[0] += 1
                if count[0] >= kill_after and not killed.is_set():
                    killed.set()
                    service.send(signal.SIGKILL)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def scenario() -> None:
        killed = asyncio.Event()
        count = [0]
        await asyncio.wait_for(
            asyncio.gather(*(client(n, killed, count) for n in range(8))), HANG_GUARD * 3
        )

    asyncio.run(scenario())
    assert service.wait() == -signal.SIGKILL


@posix_only
def test_kill_9_under_load_with_compactions_loses_nothing_acknowledged(
    workdir: Path, figure
) -> None:
    """Compactions every few KiB while 8 clients pipeline writes; SIGKILL at random moments.
    After each restart every key holds the last value answered for it, or one sent later."""
    rng = random.Random(4)
    acknowledged: dict[bytes, int] = {}
    sent: dict[bytes, int] = {}
    compactions = 0
    for round_ in range(1, 6):
        service = key_value(workdir, APP_JOURNAL_MAX_BYTES="8192")
        compactions += service.log.count("compacted")
        if acknowledged:
            store = read_store(service, sorted(acknowledged))
            for key, value in acknowledged.items():
                assert value <= int(store[key].split(b" ")[0]) <= sent[key], (key, store[key])
        pipeline_sets(service, round_, rng.randrange(2_000, 8_000), acknowledged, sent)
        compactions += service.log.count("compacted")
    last = key_value(workdir, APP_JOURNAL_MAX_BYTES="8192")
    store = read_store(last, sorted(acknowledged))
    for key, value in acknowledged.items():
        assert value <= int(store[key].split(b" ")[0]) <= sent[key], (key, store[key])
    assert last.stop() == ExitCode.OK, last.log
    assert compactions >= 10, f"only {compactions} compactions: the test did not test them"
    figure(
        "compaction-under-load",
        f"kill -9 under load, 5 rounds with {compactions} compactions: every acknowledged"
        " write recovered",
    )


@posix_only
def test_a_failed_snapshot_answers_the_requests_queued_for_it_and_keeps_them(
    workdir: Path,
) -> None:
    """A compaction already due takes the requests queued since the last write into its
    snapshot instead of writing them to the old file first. When ``snapshot()`` raises, they
    are still queued: the journal as it is takes them, they are answered, the service serves
    on, and a restart replays them. The batch here is queued before the writer's round, as
    when it arrives before the writer task runs; one client, which waits for its replies, and
    ``never``, under which no fsync timer wakes the writer: if the failure left the batch
    queued and did not wake the writer again, nothing would, and the client would wait for
    ever."""
    service = key_value(
        workdir, APP_JOURNAL_MAX_BYTES="8192", APP_JOURNAL_FSYNC="never", SNAPSHOT_RAISES="1"
    )
    acknowledged: dict[bytes, bytes] = {}
    with connect(service) as sock:
        stream = sock.makefile("rb")
        for batch in range(50):  # 400 SETs of about 120 bytes: the bound is passed at once
            pairs = [(b"k%d" % (batch * 8 + n), b"%d-%s" % (batch, b"x" * 100)) for n in range(8)]
            sock.sendall(b"".join(b"SET %s %s\n" % pair for pair in pairs))
            for key, value in pairs:
                assert stream.readline() == b"OK\n"
                acknowledged[key] = value
    assert "cannot compact" in service.log, service.log
    queued = [int(n) for n in re.findall(r"compaction with (\d+) queued", service.log)]
    assert len(queued) == 1, service.log  # tried once: compaction is off after it failed
    assert queued[0] > 0, service.log
    assert service.stop() == ExitCode.OK, service.log
    again = key_value(workdir, APP_JOURNAL_MAX_BYTES="0")  # snapshot() would refuse the start
    assert read_store(again, sorted(acknowledged)) == acknowledged
    assert again.stop() == ExitCode.OK, again.log


def file_sizes(folder: Path) -> list[int]:
    """The sizes of the journal's files on disk now. A reply no longer waits for the rotation
    its batch started, so a file may be renamed between the listing and its stat: it is then
    counted under its new name, or at the next look."""
    sizes = []
    for path in folder.glob("journal.log*"):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(path.stat().st_size)
    return sizes


@posix_only
def test_disk_use_stays_bounded_for_the_echo(
    start_service: StartService, workdir: Path, figure
) -> None:
    """A protocol without state: past APP_JOURNAL_MAX_BYTES the journal is rotated, and only
    two old files are kept, however much is sent."""
    skip_if_the_journal_rebuilds_state()
    limit = 64 * 1024
    service = start_service(APP_JOURNAL_MAX_BYTES=str(limit))
    folder = service.journal.parent
    most = largest = 0
    line = b"e" * 200 + b"\n"
    with connect(service) as sock:
        stream = sock.makefile("rb")
        for _ in range(200):  # 200 x 64 lines: 2.6 MB, 40 times the bound
            sock.sendall(line * 64)
            for _ in range(64):
                assert is_reply(stream.readline())  # whatever the protocol answers
            sizes = file_sizes(folder)
            most, largest = max(most, sum(sizes)), max(largest, *sizes)
    assert service.stop() == ExitCode.OK, service.log
    names = sorted(path.name for path in folder.glob("journal.log*"))
    assert names == ["journal.log", "journal.log.1", "journal.log.2"], names
    # The client waits for each group's replies: a file passes the bound by one group at most
    # (a group that came before the writer had rotated goes to the new file).
    group = 64 * (len(line) + 9)
    assert largest <= limit + group + len(JOURNAL_HEADER), f"a file of {largest} bytes"
    assert most <= 3 * (limit + group), f"{most} bytes on disk, bound {3 * (limit + group)}"
    assert journal_requests(folder / "journal.log.1").count(b"\n") > 0
    figure(
        "journal-bounded",
        f"echo, 2.6 MB through a 64 KiB bound: at most {most:,} bytes on disk (3 files)",
    )


@posix_only
def test_disk_use_stays_bounded_for_a_key_value_store(workdir: Path, figure) -> None:
    """A protocol with snapshot(): the journal is compacted past its bound, and a restart
    still answers every key."""
    limit = 64 * 1024
    service = key_value(workdir, APP_JOURNAL_MAX_BYTES=str(limit))
    folder = service.journal.parent
    most = 0
    expected: dict[bytes, bytes] = {}
    with connect(service) as sock:
        stream = sock.makefile("rb")
        for batch in range(200):  # 2.6 MB of SETs on 50 keys
            lines = [b"SET k%d %d-%s" % (n % 50, batch, b"v" * 180) for n in range(64)]
            sock.sendall(b"\n".join(lines) + b"\n")
            for request in lines:
                assert stream.readline() == b"OK\n"
                _, key, value = request.split(b" ", 2)
                expected[key] = value
            most = max(most, sum(file_sizes(folder)))
    assert service.stop() == ExitCode.OK, service.log
    assert service.log.count("compacted") >= 10, service.log
    state = 50 * 220
    bound = max(limit, 2 * state) + 64 * 220 + state  # the journal, a batch, a compaction file
    assert most <= bound, f"{most} bytes on disk, bound {bound}"
    again = key_value(workdir, APP_JOURNAL_MAX_BYTES=str(limit))
    assert read_store(again, sorted(expected)) == expected
    assert again.stop() == ExitCode.OK
    figure(
        "journal-bounded",
        f"key-value store, 2.6 MB of SETs through a 64 KiB bound: at most {most:,} bytes on"
        " disk, every key answered after a restart",
    )


@posix_only
@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")
def test_changing_app_workers_keeps_every_acknowledged_request(workdir: Path, figure) -> None:
    """1 -> 2 -> 3 -> 2 -> 1 workers: the files of workers that no longer exist are merged
    into the others' (the log says so), so the last run, one process, sees every SET."""
    acknowledged: dict[bytes, bytes] = {}
    for run, workers in enumerate((1, 2, 3, 2, 1)):
        service = key_value(workdir, APP_WORKERS=str(workers))
        for n in range(30):
            with connect(service) as sock:  # new connections: spread over the workers
                key = b"run%d-%d" % (run, n)
                assert ask(sock, b"SET %s %d\n" % (key, run)) == b"OK\n"
                acknowledged[key] = b"%d" % run
        assert service.stop() == ExitCode.OK, service.log
        folder = workdir / "data"
        names = sorted(path.name for path in folder.glob("journal*.log"))
        expected = (
            ["journal.log"]
            if workers == 1
            else [f"journal.worker-{i}.log" for i in range(1, workers + 1)]
        )
        assert names == expected, (names, service.log)
        if run == 1:
            assert "merged 30 record(s) of data/journal.log" in service.log, service.log
        if run == 3:
            assert "of data/journal.worker-3.log, the journal of a worker that no longer" in (
                service.log
            )
    last = key_value(workdir)
    assert read_store(last, sorted(acknowledged)) == acknowledged
    assert last.stop() == ExitCode.OK, last.log
    figure(
        "workers-change",
        f"APP_WORKERS 1, 2, 3, 2, 1: all {len(acknowledged)} acknowledged SETs seen by the last"
        " run (orphaned worker journals merged, each merge logged)",
    )


@posix_only
def test_kill_9_at_every_step_of_a_merge_keeps_every_request_once(workdir: Path) -> None:
    """Two workers' journals merged into the single process's: SIGKILL before each os call
    of the merges in turn; the next start must see every request exactly once."""
    folder = workdir / "data"
    folder.mkdir(mode=0o700)
    files = {
        "journal.log": [b"SET a 1", b"SET b 1"],
        "journal.worker-1.log": [b"SET a 2", b"SET c 1"],
        "journal.worker-2.log": [b"SET b 2", b"SET d 1", b"SET d 2"],
    }
    expected = {b"a": b"2", b"b": b"2", b"c": b"1", b"d": b"2"}
    (workdir / "kv").mkdir()
    (workdir / "kv" / "__main__.py").write_text(KEY_VALUE)
    steps = 0
    for kill_at in range(1, 200):
        for path in folder.iterdir():
            path.unlink()
        for name, requests in files.items():
            (folder / name).write_bytes(JOURNAL_HEADER + b"".join(map(journal_record, requests)))
            (folder / name).chmod(0o600)
        env = service_env(
            APP_PORT="0",
            APP_JOURNAL_PATH="data/journal.log",
            KILL_AT=str(kill_at),
            KILL_IN="_merge",
        )
        STARTED.append(cut := Process([sys.executable, "-m", "kv"], workdir, env))
        line = cut.wait_for(r"killed at step|listening on")
        if "listening on" in line[0]:
            assert cut.stop() == ExitCode.OK, cut.log
            break
        assert cut.wait() == -signal.SIGKILL
        steps += 1
        after = key_value(workdir, APP_JOURNAL_MAX_BYTES="0")  # no compaction: records stay
        assert read_store(after, sorted(expected)) == expected, (kill_at, after.log)
        assert after.stop() == ExitCode.OK, after.log
        journaled = journal_requests(folder / "journal.log").splitlines()
        replayed = [line for line in journaled if line.startswith(b"SET")]  # not our GETs
        assert sorted(replayed) == sorted(r for rs in files.values() for r in rs), kill_at
        assert sorted(path.name for path in folder.iterdir()) == ["journal.log"], kill_at
    assert steps >= 20, f"only {steps} kill points in two merges"


# --- Replay order is the order requests took effect ---------------------------------------------

GATED_KEY_VALUE = textwrap.dedent(
    """
    import asyncio, logging, runpy
    from app import protocol

    store = {}
    gate = asyncio.Event()

    def apply(request):
        parts = request.split(b" ", 2)
        if parts[0] in (b"SET", b"GATED-SET") and len(parts) == 3:
            store[parts[1]] = parts[2]

    async def handle(request):
        parts = request.split(b" ", 2)
        if parts[0] == b"GET":
            return store.get(parts[1], b"(none)")
        if parts[0] == b"OPEN":
            gate.set()
            return b"OK"
        if parts[0] == b"GATED-SET":
            logging.getLogger("gated").warning("gated: waiting for OPEN")
            await gate.wait()
        apply(request)  # after the last await, as docs/protocol.md asks
        return b"OK"

    def recover(request):
        apply(request)

    def needs_journal(request):
        return not request.startswith((b"GET", b"OPEN"))

    protocol.handle, protocol.recover = handle, recover
    protocol.needs_journal = needs_journal
    runpy.run_module("app", run_name="__main__")
    """
)


def test_a_restart_rebuilds_what_clients_read_when_handle_awaits_before_it_writes(
    workdir: Path, figure
) -> None:
    """Two clients set one key; the first to arrive awaits in ``handle`` and takes effect
    last. A client read the later value before a ``kill -9``: the restart must rebuild that
    value, so the journal must hold the two in the order they took effect, not arrived."""
    (workdir / "gated").mkdir()
    (workdir / "gated" / "__main__.py").write_text(GATED_KEY_VALUE)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="data/journal.log")
    STARTED.append(service := Service(workdir, env, args=["-m", "gated"]))
    with connect(service) as first, connect(service) as second:
        first.sendall(b"GATED-SET k from-first\n")
        service.wait_for("gated: waiting for OPEN")  # it arrived first, and waits
        assert ask(second, b"SET k from-second\n") == b"OK\n"
        assert ask(second, b"OPEN\n") == b"OK\n"
        assert ask(first, b"") == b"OK\n"  # the gated SET's reply: it took effect last
        assert ask(second, b"GET k\n") == b"from-first\n"  # what a client read
    service.popen.kill()
    service.wait()
    STARTED.append(after := Service(workdir, env, args=["-m", "gated"]))
    assert read_store(after, [b"k"]) == {b"k": b"from-first"}, journal_lines(service.journal)
    assert after.stop() == ExitCode.OK, after.log
    figure(
        "replay-order",
        "a handle that awaits before it writes, overtaken by another client's SET: after"
        " kill -9 the restart rebuilds the value clients read (journal in effect order)",
    )
