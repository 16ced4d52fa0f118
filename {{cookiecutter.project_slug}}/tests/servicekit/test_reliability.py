"""Reliability under load, hostile clients and stuck work: nothing lost, nothing crashes.

Protocol-agnostic: a reply is any one line, and the invariant is that every request a client
got a reply for is in the journal, in order, exactly once.

Figures worth publishing (load held, peak memory, ...) are handed to the ``figure`` fixture,
which writes them where ``RELIABILITY_FIGURES`` points, so the README's table comes from a
real run instead of being typed by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import signal
import socket
import struct
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    SHUTTING_DOWN,
    Process,
    Service,
    StartService,
    ask,
    assert_journaled,
    connect,
    is_reply,
    journal_of,
    journal_record,
    journal_requests,
    read_line,
    read_to_end,
    service_env,
    talk_through_sigterm,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from servicekit.exitcodes import ExitCode

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc for memory")


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    """The process's peak resident memory so far (or ``VmRSS``: right now), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc status")


def loop_setting(loop: str) -> dict[str, str]:
    """Service settings that pick the event loop; skips uvloop where it is not installed."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    return {"APP_USE_UVLOOP": "1" if loop == "uvloop" else "0"}


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_drain_answers_every_buffered_line_and_closes_cleanly(
    start_service: StartService, figure, loop: str
) -> None:
    """A client pipelines thousands of lines and reads slowly while SIGTERM arrives.

    Every reply must reach the client, then the refusal of the rest (SHUTTING_DOWN), then
    a clean end of stream (no reset); the journal must hold exactly the answered requests.
    """
    service = start_service(**loop_setting(loop))
    lines = [b"pipelined line %06d %s\n" % (n, b"p" * 100) for n in range(20_000)]

    async def scenario() -> list[bytes]:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        writer.write(b"".join(lines))  # buffered by the client transport, not awaited
        replies = [await reader.readuntil(b"\n")]
        service.send(signal.SIGTERM)
        service.wait_for("draining 1 connection")
        while reply := await reader.readline():  # raises ConnectionResetError on a reset
            replies.append(reply)
        writer.close()
        return replies

    *replies, last = asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD))
    assert service.wait() == ExitCode.OK, service.log
    assert last == SHUTTING_DOWN
    assert all(map(is_reply, replies))
    assert journal_of(service) == lines[: len(replies)]
    figure(
        "pipelined",
        "20,000 lines in flight across SIGTERM: all answered lines arrive, the rest refused "
        "with one line, clean EOF, 0 lost",
    )


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_sending_through_the_drain_sees_a_reply_or_the_refusal_for_each_request(
    start_service: StartService, loop: str
) -> None:
    """A client keeps sending while SIGTERM arrives: requests that reach the service while
    it closes the connection must not vanish. The client sees replies, then exactly one
    ``error: shutting down`` line, then a clean end of stream: every request it sent was
    answered or refused, and the journal holds exactly the answered ones."""
    service = start_service(**loop_setting(loop))
    sent: list[bytes] = []

    async def scenario() -> list[bytes]:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        over = asyncio.Event()

        async def keep_sending() -> None:
            with contextlib.suppress(ConnectionError):
                while not over.is_set():
                    batch = [b"through the drain %06d\n" % (len(sent) + n) for n in range(16)]
                    sent.extend(batch)
                    writer.write(b"".join(batch))
                    await writer.drain()
                    await asyncio.sleep(0)  # drain() need not yield: let the reader read

        sender = asyncio.create_task(keep_sending())
        lines: list[bytes] = []
        try:
            while line := await reader.readline():  # raises ConnectionResetError on a reset
                lines.append(line)
                if len(lines) == 2000:
                    service.send(signal.SIGTERM)
                if not is_reply(line):
                    over.set()  # the client stops sending once it is refused
        finally:
            over.set()
            await sender
        writer.close()
        return lines

    lines = asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD))
    assert service.wait() == ExitCode.OK, service.log
    *replies, last = lines
    assert last == SHUTTING_DOWN, lines[-3:]
    assert all(map(is_reply, replies)), "a line after the refusal, or a refusal among replies"
    assert len(replies) < len(sent), "the client kept sending: some requests must be refused"
    assert journal_of(service) == sent[: len(replies)]


def reply_to(service: Service, line: bytes) -> bytes:
    with connect(service) as sock:
        return ask(sock, line)


@posix_only
@pytest.mark.parametrize(("seed", "loop"), [(1, "uvloop"), (2, "asyncio"), (3, "uvloop")])
def test_sigterm_at_a_random_moment_under_load(
    start_service: StartService, figure, seed: int, loop: str
) -> None:
    """500 connections talking; SIGTERM after a random number of replies; nothing lost."""
    rng = random.Random(seed)
    connections = 500
    signal_after = rng.randrange(connections, connections * 8)
    service = start_service(**loop_setting(loop))
    answered: list[list[bytes]] = [[] for _ in range(connections)]
    sent: list[int] = [0] * connections

    async def talk(client: int, signalled: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        try:
            while True:
                request = b"%d:%d:%s\n" % (client, sent[client], b"x" * rng.randrange(64))
                writer.write(request)
                sent[client] += 1
                reply = await reader.readuntil(b"\n")
                if reply == SHUTTING_DOWN:
                    break  # connected just as the drain began: refused, nothing handled
                answered[client].append(request)
                if sum(map(len, answered)) == signal_after:
                    service.send(signal.SIGTERM)
                    signalled.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the service closed the connection while draining
        finally:
            writer.close()

    async def scenario() -> None:
        signalled = asyncio.Event()
        talkers = [asyncio.create_task(talk(c, signalled)) for c in range(connections)]
        await asyncio.wait_for(asyncio.gather(*talkers), HANG_GUARD * 3)
        assert signalled.is_set()

    asyncio.run(scenario())
    assert service.wait() == ExitCode.OK, service.log
    assert "Traceback" not in service.log
    journal = journal_of(service)
    assert_journaled(journal, answered)
    assert len(journal) == sum(map(len, answered)), "journaled without an answer"
    for client in range(connections):  # ping-pong: at most the last line can be unanswered
        assert sent[client] - len(answered[client]) <= 1
    figure("load", f"{connections} connections, SIGTERM at random moments: 0 lines lost")


@linux_only
def test_connection_limit_keeps_memory_bounded(start_service: StartService, figure) -> None:
    import resource  # POSIX only

    limit, attempts = 500, 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * attempts + 100:
        pytest.skip(f"needs {2 * attempts + 100} open files, the hard limit is {hard}")
    # Both ends of every connection live on this machine; the service inherits the limit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * attempts + 100), hard))
    service = start_service(APP_MAX_CONNECTIONS=str(limit))

    async def attempt() -> bytes:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        writer.write(b"hello\n")
        reply = await reader.readline()
        return reply, writer

    async def scenario() -> list[bytes]:
        results = await asyncio.wait_for(
            asyncio.gather(*(attempt() for _ in range(attempts))), HANG_GUARD * 3
        )
        for _, writer in results:
            writer.close()
        return [reply for reply, _ in results]

    replies = asyncio.run(scenario())
    assert sum(map(is_reply, replies)) == limit
    assert replies.count(b"\x15error: too many connections\n") == attempts - limit
    rss = peak_rss_mib(service.popen.pid)
    assert rss < 200, f"peak RSS {rss:.0f} MiB"
    assert is_reply(reply_to(service, b"after the storm\n"))
    figure(
        "connections", f"{attempts} attempted, {limit} served, rest refused; peak RSS {rss:.0f} MiB"
    )


@linux_only
def test_client_that_never_reads_is_dropped(start_service: StartService, figure) -> None:
    # What it sends is journaled until it is dropped: keep those hundreds of MB off the disk.
    service = start_service(APP_IDLE_TIMEOUT="1", APP_JOURNAL_PATH=os.devnull)
    hog = connect(service)
    hog.settimeout(None)
    pushed = 0
    stop = threading.Event()

    def flood() -> None:
        nonlocal pushed
        line = b"z" * 1023 + b"\n"
        try:
            while not stop.is_set() and pushed < 200 * 1024 * 1024:
                hog.sendall(line)
                pushed += len(line)
        except OSError:
            pass  # the service dropped us: what should happen

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    assert is_reply(reply_to(service, b"bystander\n"))
    flooder.join(HANG_GUARD)
    stop.set()
    hog.close()
    assert not flooder.is_alive(), "the service never dropped the client that does not read"
    rss = peak_rss_mib(service.popen.pid)
    assert rss < 200, f"peak RSS {rss:.0f} MiB after {pushed >> 20} MiB pushed"
    assert is_reply(reply_to(service, b"still fine\n"))
    figure(
        "non-reader", f"client that never reads: dropped after idle timeout, peak RSS {rss:.0f} MiB"
    )


def test_half_line_then_silence_hits_the_idle_timeout(start_service: StartService, figure) -> None:
    service = start_service(APP_IDLE_TIMEOUT="0.5")
    with connect(service) as sock:
        sock.sendall(b"half a li")
        assert sock.recv(100) == b"", "the silent connection should have been closed"
    assert is_reply(reply_to(service, b"next\n"))
    figure("half-line", "half a line, then silence: closed at the idle timeout")


@linux_only
def test_ten_megabyte_line_is_refused_without_buffering_it(start_service: StartService, figure):
    service = start_service()
    before = peak_rss_mib(service.popen.pid, "VmRSS")
    with connect(service) as sock:
        sender = threading.Thread(
            target=lambda: _send_quietly(sock, b"a" * (10 * 1024 * 1024) + b"\n"), daemon=True
        )
        sender.start()
        reply = sock.recv(200)
        sender.join(HANG_GUARD)
    assert reply == b"\x15error: line longer than 65536 bytes\n"
    rss = peak_rss_mib(service.popen.pid)
    assert rss - before < 5, f"peak RSS grew {rss - before:.1f} MiB: the line was buffered"
    assert is_reply(reply_to(service, b"ok\n"))
    figure("long-line", f"10 MB line: refused at 64 KiB, peak RSS {rss:.0f} MiB")


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the service closes the connection after refusing
        sock.sendall(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=2000).map(lambda b: b.replace(b"\n", b"_")))
def test_any_bytes_are_a_request_journaled_before_its_reply(
    shared_service: Service, payload: bytes
) -> None:
    from app import protocol

    assume(getattr(protocol, "needs_journal", lambda request: True)(payload))
    reply = reply_to(shared_service, payload + b"\n")
    assert reply.endswith(b"\n")
    assert reply.count(b"\n") == 1
    journal = b"\n" + journal_requests(shared_service.journal)
    assert journal.endswith(b"\n" + payload + b"\n"), "replied before it was journaled"


def test_abrupt_resets_mid_line_do_not_disturb_others(start_service: StartService, figure) -> None:
    service = start_service()
    with connect(service) as bystander:
        for _ in range(50):
            sock = connect(service)
            sock.sendall(b"\x00\xff half")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # linger 0: the peer gets a reset
        assert is_reply(ask(bystander, b"unbothered\n"))
    assert service.stop() == ExitCode.OK
    assert "Traceback" not in service.log
    figure("resets", "50 resets mid-line, NUL and invalid UTF-8: others unaffected")


STUBBORN = textwrap.dedent(
    """
    import asyncio, runpy, sys
    from app import protocol
    from servicekit import main as entry
    from servicekit.service import Service

    async def stubborn_worker():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # the bug under test: it swallows its cancellation

    class ServiceWithStuckWork(Service):
        async def serve(self):
            await super().serve()
            asyncio.get_running_loop().create_task(stubborn_worker(), name="stubborn-worker")

    entry.Service = ServiceWithStuckWork
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


@posix_only
def test_stuck_task_ends_at_the_shutdown_timeout(workdir: Path, figure) -> None:
    (workdir / "stuck.py").write_text(STUBBORN)
    env = service_env(APP_PORT="0", APP_SHUTDOWN_TIMEOUT="2", APP_JOURNAL_PATH="journal.log")
    service = Service(workdir, env, args=["stuck.py"])
    started = time.monotonic()
    assert service.stop(signal.SIGTERM) == ExitCode.SHUTDOWN_TIMEOUT
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 3, f"took {elapsed:.1f}s"
    assert "stubborn-worker" in service.log
    assert "stubborn_worker" in service.log  # its stack, down to the coroutine
    figure(
        "stuck",
        f"task swallowing cancellation: abandoned after {elapsed:.1f}s (budget 2 s), exit 75",
    )


@pytest.mark.quick
@posix_only
def test_second_sigint_forces_exit_130(workdir: Path, figure) -> None:
    (workdir / "stuck.py").write_text(STUBBORN)
    env = service_env(APP_PORT="0", APP_SHUTDOWN_TIMEOUT="60", APP_JOURNAL_PATH="journal.log")
    service = Service(workdir, env, args=["stuck.py"])
    service.send(signal.SIGINT)
    service.wait_for("shutdown: cancelling")
    started = time.monotonic()
    service.send_again(signal.SIGINT)
    assert service.wait() == 130
    assert time.monotonic() - started < 5
    assert "stubborn_worker" in service.log
    figure(
        "second-signal", "second SIGINT during a stuck shutdown: exit 130 at once, stacks logged"
    )


CRASHING = textwrap.dedent(
    """
    import asyncio, runpy, sys
    from app import protocol
    from servicekit import main as entry
    from servicekit.service import Service

    async def crashing_worker():
        await asyncio.sleep(0)
        raise RuntimeError("the bug under test")

    class ServiceWithABug(Service):
        async def serve(self):
            await super().serve()
            asyncio.get_running_loop().create_task(crashing_worker(), name="crashing-worker")

    entry.Service = ServiceWithABug
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


@posix_only
def test_unhandled_error_stops_gracefully_with_status_1(workdir: Path, figure) -> None:
    (workdir / "crash.py").write_text(CRASHING)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="journal.log")
    process = Process([sys.executable, "crash.py"], workdir, env)
    assert process.wait() == ExitCode.ERROR, process.log
    assert process.log.count("Traceback") == 1, process.log
    assert "RuntimeError: the bug under test" in process.log
    assert "stopped accepting connections" in process.log
    assert "shutdown: complete" in process.log
    figure("crash", "a crashing task: graceful shutdown, exit 1, one traceback")


@linux_only
def test_journal_that_cannot_be_written_stops_the_service_with_73(
    start_service: StartService, figure
) -> None:
    service = start_service(APP_JOURNAL_PATH="/dev/full")  # every write fails: disk full
    assert reply_to(service, b"doomed\n") == SHUTTING_DOWN, "not journaled: refused, not answered"
    assert service.wait() == ExitCode.JOURNAL_UNWRITABLE, service.log
    assert "1 request(s) could not be journaled" in service.log
    assert "cannot write journal: [Errno 28] No space left on device" in service.log
    assert "Traceback" not in service.log
    assert "shutdown: complete" in service.log
    figure("disk-full", "journal on a full disk: the service stops, exit 73, one line")


@linux_only
def test_systemd_notification(start_service: StartService, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        address = str(tmp_path / "notify.sock")
        systemd.bind(address)
        systemd.settimeout(HANG_GUARD)
        service = start_service(NOTIFY_SOCKET=address)
        assert systemd.recv(100) == b"READY=1"
        service.send(signal.SIGTERM)
        assert systemd.recv(100) == b"STOPPING=1"
        assert service.wait() == ExitCode.OK


@linux_only
def test_no_reply_before_its_request_is_journaled_and_a_slow_journal_bounds_memory(
    start_service: StartService, workdir: Path, figure
) -> None:
    """The journal is a FIFO that nobody reads at first: once the pipe is full, the journal
    cannot take more, so no more replies may come, and the service must stop reading
    instead of queueing what a fast client sends. Then the FIFO is read: everything
    answered is in it, in order."""
    import fcntl  # POSIX only

    fifo = workdir / "journal.fifo"
    os.mkfifo(fifo)
    journal_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the service's open() needs it
    service = start_service(APP_JOURNAL_PATH=str(fifo), APP_USE_UVLOOP="0")
    capacity = fcntl.fcntl(journal_end, 1032)  # F_GETPIPE_SZ: bytes the pipe holds
    line = b"%08d " + b"j" * 1014 + b"\n"  # 1 KiB per request
    most_answerable = capacity // len(line % 0) + 1
    sock = connect(service)
    sock.setblocking(False)
    sent = 0
    replies = 0
    received: list[bytes] = []

    def read_replies() -> None:
        nonlocal replies
        while True:
            select.select([sock], [], [])
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return
            received.append(chunk)
            replies += chunk.count(b"\n")

    reader = threading.Thread(target=read_replies, daemon=True)
    reader.start()
    pushed = 0
    while pushed < 200 * 1024 * 1024:  # until the service stops reading, or 200 MiB
        _, writable, _ = select.select([], [sock], [], 1.0)
        if not writable:
            break  # blocked for a second: the service pushes back
        try:
            pushed += sock.send(b"".join(line % (sent + n) for n in range(64)))
        except BlockingIOError:
            continue
        sent += 64
    rss = peak_rss_mib(service.popen.pid)
    answered_while_blocked = replies
    journaled = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(journal_end, 1 << 20):
            journaled += chunk
    assert answered_while_blocked <= most_answerable, (
        f"{answered_while_blocked} replies, but the journal held at most {most_answerable}"
    )
    assert pushed < 100 * 1024 * 1024, "the service kept reading while its journal was stuck"
    assert rss < 256, f"peak RSS {rss:.0f} MiB with a stuck journal"
    os.set_blocking(journal_end, True)
    chunks = [journaled]

    def read_journal() -> None:
        while chunk := os.read(journal_end, 1 << 20):
            chunks.append(chunk)

    drained = threading.Thread(target=read_journal, daemon=True)
    sock.shutdown(socket.SHUT_WR)
    service.send(signal.SIGTERM)
    drained.start()
    reader.join(HANG_GUARD)
    assert service.wait() == ExitCode.OK, service.log
    drained.join(HANG_GUARD)
    os.close(journal_end)
    records = b"".join(chunks).split(b"\n")[:-1]  # a FIFO gets records, no header
    journal = [record[:-9] + b"\n" for record in records]
    assert [journal_record(line[:-1]) for line in journal] == [r + b"\n" for r in records]
    if b"".join(received).endswith(b"\n" + SHUTTING_DOWN):  # the drain ended it
        replies -= 1
    answered = [line % n for n in range(replies)]
    assert_journaled(journal, [answered])
    assert replies > answered_while_blocked, "the replies never came"
    figure("slow-journal", f"journal stuck: clients pushed back, peak RSS {rss:.0f} MiB")


@linux_only
def test_clients_that_never_read_cannot_exhaust_memory(start_service: StartService, figure):
    """300 clients each send as much as the service takes (up to 16 MiB) and never read a
    reply."""
    clients = 300
    # Loopback buffers autotune up to tcp_rmem's maximum (32 MiB here), so the requests taken
    # before every client is blocked can reach gigabytes: journal them nowhere. The cap per
    # client keeps a protocol with short replies (many more requests fit in the buffers before
    # a client blocks) from turning this into minutes of pipelining; the echo blocks first.
    cap = 16 << 20
    service = start_service(APP_MAX_CONNECTIONS="400", APP_JOURNAL_PATH=os.devnull)
    line = b"n" * 1023 + b"\n"
    socks = [connect(service) for _ in range(clients)]
    for sock in socks:
        sock.setblocking(False)
    sent = dict.fromkeys(socks, 0)
    open_ = set(socks)
    while open_:  # round-robin until every client is blocked for a second, or sent its cap
        _, writable, _ = select.select([], list(open_), [], 1.0)
        if not writable:
            break
        for sock in writable:
            try:
                sent[sock] += sock.send(line * 64)
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(sock)
            if sent[sock] >= cap:
                open_.discard(sock)
    rss = peak_rss_mib(service.popen.pid)
    bystander = reply_to(service, b"\n")
    for sock in socks:
        sock.close()
    assert bystander == b"\n"
    assert rss < 256, f"peak RSS {rss:.0f} MiB with {clients} clients that never read"
    figure("non-readers", f"{clients} clients that never read: peak RSS {rss:.0f} MiB")


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_flooding_client_does_not_stall_a_bystander(
    start_service: StartService, figure, loop: str
) -> None:
    service = start_service(**loop_setting(loop))
    flood = b"\n" * 2**20
    stop = threading.Event()
    flooder = connect(service)

    def send() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                flooder.sendall(flood)

    def drain() -> None:
        with contextlib.suppress(OSError):
            while flooder.recv(1 << 20) and not stop.is_set():
                pass

    threads = [
        threading.Thread(target=send, daemon=True),
        threading.Thread(target=drain, daemon=True),
    ]
    for thread in threads:
        thread.start()
    times = []
    with connect(service) as bystander:
        assert ask(bystander, b"\n") == b"\n"
        for _ in range(200):
            started = time.perf_counter()
            assert ask(bystander, b"\n") == b"\n"
            times.append(time.perf_counter() - started)
    stop.set()
    flooder.close()
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    assert p99 < 0.1, f"bystander p99 {p99 * 1000:.0f} ms under a flood"
    figure(f"flood-{loop}", f"client flooding empty lines: bystander p99 {p99 * 1000:.1f} ms")


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_running_out_of_file_descriptors_is_survived(workdir: Path, figure, loop: str) -> None:
    """Under a 64-descriptor limit, 100 clients: accepting pauses and is logged, once; the
    connections it could accept are served; when they leave, the others are; SIGTERM is 0."""
    settings = {"APP_PORT": "0", "APP_JOURNAL_PATH": "journal.log", **loop_setting(loop)}
    (workdir / "limited.py").write_text(LIMITED)
    service = Service(workdir, service_env(**settings), args=["limited.py"])
    clients = [connect(service) for _ in range(100)]
    for sock in clients:
        sock.sendall(b"\n")
    service.wait_for("cannot accept connections")
    served = _answered(clients)
    assert served, "no client was served"
    assert len(served) < len(clients), "every client was served: the limit did not bite"
    for sock in served:
        sock.close()
    waiting = [sock for sock in clients if sock not in served]
    for sock in waiting[:20]:  # fds are free again: these are accepted and answered
        assert ask(sock, b"") == b"\n"
    for sock in waiting:
        sock.close()
    assert service.stop() == ExitCode.OK, service.log
    assert service.log.count("cannot accept connections") <= 3, service.log
    assert "Traceback" not in service.log
    figure(f"fds-{loop}", "out of file descriptors: accepting pauses, serving goes on, exit 0")


LIMITED = textwrap.dedent(
    """
    import resource, runpy
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    runpy.run_module("app", run_name="__main__")
    """
)


def _answered(clients: list[socket.socket]) -> list[socket.socket]:
    """The clients whose ping is answered; the others get nothing for a second."""
    answered: list[socket.socket] = []
    while True:
        ready, _, _ = select.select([s for s in clients if s not in answered], [], [], 1.0)
        if not ready:
            return answered
        for sock in ready:
            assert sock.recv(1) == b"\n"
            answered.append(sock)


def test_a_slow_loris_cannot_hold_connections(start_service: StartService, figure) -> None:
    """Clients that send a byte at a time fill the connection limit; each is dropped at the
    line timeout, well before the idle timeout, so the service is free again."""
    service = start_service(APP_MAX_CONNECTIONS="20", APP_LINE_TIMEOUT="1")
    lorises = [connect(service) for _ in range(20)]
    stop = threading.Event()

    def dribble(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                sock.sendall(b"x")
                stop.wait(0.1)  # the attack's pace, not a synchronisation

    threads = [threading.Thread(target=dribble, args=(s,), daemon=True) for s in lorises]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    for sock in lorises:
        stream = sock.makefile("rb")
        assert stream.readline() == b"\x15error: line not completed within 1s\n"
        assert stream.read() == b""
    elapsed = time.monotonic() - started
    stop.set()
    for sock in lorises:
        sock.close()
    assert reply_to(service, b"\n") == b"\n"
    assert elapsed < HANG_GUARD
    figure("slow-loris", f"20 byte-a-time clients: dropped at the line timeout ({elapsed:.1f}s)")


def test_a_client_that_sends_everything_then_half_closes_gets_every_reply(
    start_service: StartService,
) -> None:
    """Like ``nc -q``: all requests, then EOF, then it reads. The EOF may arrive while the
    service waits for the client to read; the requests it had received must still be answered."""
    service = start_service()
    requests = [b"request %06d %s\n" % (n, b"r" * 200) for n in range(20_000)]
    with connect(service) as sock:

        def send() -> None:
            sock.sendall(b"".join(requests))
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        stream = sock.makefile("rb")
        replies = [reply for reply in iter(stream.readline, b"")]
        sender.join(HANG_GUARD)
    assert len(replies) == len(requests)
    assert all(map(is_reply, replies))
    assert service.stop() == ExitCode.OK
    assert journal_of(service) == requests


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_drain_ends_talking_clients_promptly(start_service: StartService, loop: str) -> None:
    """Clients talking when SIGTERM arrives get their replies, the refusal and an end of
    stream, and close; the service must see that and exit at once, not wait out the linger
    deadline (LINGER_SECONDS, 2 s) of connections that were already saying goodbye."""
    service = start_service(**loop_setting(loop))
    talk_through_sigterm(service, clients=20)
    assert service.wait() == ExitCode.OK, service.log
    took = time.monotonic() - service.last_signal
    assert took < 1.0, f"{took:.2f}s from SIGTERM to exit:\n{service.log}"


SLOW_READ_RATE = 20_000
"""Bytes per second of a client that reads steadily but slowly (issue 20, item 1)."""


def _read_at(sock: socket.socket, rate: int, seconds: float) -> bytes:
    """Read what arrives, at most ``rate`` bytes per second, for ``seconds``: a slow reader."""
    received = b""
    step = 0.05  # the reader's pace, not a synchronisation
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        started = time.monotonic()
        readable, _, _ = select.select([sock], [], [], step)  # no timeout on the socket:
        if readable:  # the sender thread shares it
            received += sock.recv(int(rate * step))
        time.sleep(max(0.0, step - (time.monotonic() - started)))
    return received


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_reads_slowly_but_steadily_gets_every_reply(
    start_service: StartService, figure, loop: str
) -> None:
    """A pipelining client reads its replies at 20 kB/s. The service stops reading it while
    its replies wait (backpressure), often with half a line read: that half line is not
    late, the service is the one not reading it, so the line timeout must not end the
    connection. Every request gets its reply, in order, then a clean end of stream."""
    service = start_service(APP_LINE_TIMEOUT="1", **loop_setting(loop))
    requests = [b"slow reader %06d %s\n" % (n, b"s" * 1000) for n in range(6000)]
    sock = connect(service)

    def send() -> None:
        with contextlib.suppress(OSError):  # the old code resets: the reader reports it
            sock.sendall(b"".join(requests))
            sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = _read_at(sock, SLOW_READ_RATE, seconds=4.0)  # the line timeout 4 times over
    try:
        received += read_to_end(sock)
    except ConnectionResetError:
        pytest.fail(f"reset after {len(received.splitlines())} replies")
    finally:
        sender.join(HANG_GUARD)
        sock.close()
    replies = received.splitlines(keepends=True)
    assert len(replies) == len(requests), replies[-1][:80]
    assert all(map(is_reply, replies))
    assert service.stop() == ExitCode.OK, service.log
    assert journal_of(service) == requests
    figure(
        f"slow-reader-{loop}",
        "pipelining client reading at 20 kB/s, line timeout 1 s: every reply, clean EOF",
    )


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_half_a_line_is_not_late_while_the_journal_holds_its_batch(
    start_service: StartService, workdir: Path, loop: str, figure
) -> None:
    """Two lines and half a third arrive in one read; the journal cannot take the two yet (a
    FIFO nobody reads, already full). While their batch waits, the service reads nothing, so
    the half line's clock must not run: once the journal takes the batch, both replies go
    out, and only then, after a whole line timeout of reading, is the half line refused."""
    fifo = workdir / "journal.fifo"
    os.mkfifo(fifo)
    journal_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the service's open() needs it
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(filler, b"f" * 4096)  # until the pipe is full
    os.close(filler)
    service = start_service(
        APP_JOURNAL_PATH=str(fifo), APP_LINE_TIMEOUT="0.5", **loop_setting(loop)
    )
    chunks: list[bytes] = []
    with connect(service) as sock:
        sock.sendall(b"first\nsecond\nhalf a li")
        quiet, _, _ = select.select([sock], [], [], 1.5)  # three line timeouts
        assert not quiet, "something came back while the journal held the requests"
        os.set_blocking(journal_end, True)

        def read_journal() -> None:
            while chunk := os.read(journal_end, 1 << 16):
                chunks.append(chunk)

        reader = threading.Thread(target=read_journal, daemon=True)
        reader.start()
        received = read_to_end(sock)  # a reset raises
    *replies, last = received.splitlines(keepends=True)
    assert len(replies) == 2, received
    assert all(map(is_reply, replies)), received
    assert last == b"\x15error: line not completed within 0.5s\n"
    assert service.stop() == ExitCode.OK, service.log
    reader.join(HANG_GUARD)
    os.close(journal_end)
    journaled = b"".join(chunks)
    assert b"first" in journaled, journaled[-200:]
    assert b"second" in journaled, journaled[-200:]
    assert "Traceback" not in service.log, service.log
    figure(
        "journal-wait",
        "half a line while the journal held its batch (a full FIFO): no line timeout until"
        " the service reads again; both replies, then the refusal",
    )


READS_FREE = textwrap.dedent(
    """
    import sys
    from app import protocol
    from servicekit import main as entry

    store = {}

    async def handle(request):
        command, _, rest = request.partition(b" ")
        if command == b"SET":
            key, _, value = rest.partition(b" ")
            store[key] = value
            return b"OK"
        return store.get(rest, b"(none)")

    def needs_journal(request):
        return not request.startswith(b"GET ")

    def recover(request):
        if request.startswith(b"SET "):
            key, _, value = request[4:].partition(b" ")
            store[key] = value

    protocol.handle, protocol.recover, protocol.needs_journal = handle, recover, needs_journal
    sys.exit(entry.main(protocol))
    """
)


@posix_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_request_that_needs_no_journal_never_reveals_what_is_not_journaled(
    workdir: Path, loop: str
) -> None:
    """``needs_journal`` says a GET changes nothing: it is answered without a journal write,
    so at once even while the journal is stuck (a full FIFO). But a GET that reads what a SET
    not yet journaled wrote must wait for that write: a reply a client saw must survive a
    ``kill -9``, whoever's request it reveals."""
    fifo = workdir / "journal.fifo"
    os.mkfifo(fifo)
    journal_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(filler, b"f" * 4096)  # until the pipe is full: no write gets through
    os.close(filler)
    (workdir / "reads_free.py").write_text(READS_FREE)
    settings = {"APP_PORT": "0", "APP_JOURNAL_PATH": str(fifo), **loop_setting(loop)}
    service = Service(workdir, service_env(**settings), args=["reads_free.py"])
    chunks: list[bytes] = []
    with connect(service) as reader, connect(service) as writer:
        assert ask(reader, b"GET k\n") == b"(none)\n", "a GET waited for the journal"
        writer.sendall(b"SET k v\n")  # handled at once, but its journal write cannot go out
        while True:  # until a GET comes after the SET: then it must wait for the SET's write
            reader.sendall(b"GET k\n")
            answered, _, _ = select.select([reader, writer], [], [], 1.0)
            if not answered:
                break
            assert reader in answered, "the SET was answered before it was journaled"
            reply = ask(reader, b"")  # sends nothing: reads the reply to the GET just sent
            assert reply == b"(none)\n", "a GET revealed a SET not yet journaled"
        os.set_blocking(journal_end, True)

        def read_journal() -> None:
            while chunk := os.read(journal_end, 1 << 16):
                chunks.append(chunk)

        drained = threading.Thread(target=read_journal, daemon=True)
        drained.start()
        assert writer.makefile("rb").readline() == b"OK\n"
        assert reader.makefile("rb").readline() == b"v\n"
    assert service.stop() == ExitCode.OK, service.log
    drained.join(HANG_GUARD)
    os.close(journal_end)
    journaled = b"".join(chunks)
    assert b"SET k v" in journaled, journaled[-200:]
    assert b"GET" not in journaled, "a request that needs no journal was journaled"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_needs_journal_that_raises_journals_the_request_and_serves_on(
    workdir: Path, loop: str
) -> None:
    """Seen failing: a ``needs_journal`` that raised on one client's request stopped the
    service (exit 1): that client got none of the replies of its batch, only EOF, and every
    other client a refusal. A request ``needs_journal`` cannot judge is journaled (the safe
    answer: it may change state), the error is logged with its traceback, and the request is
    handled as any other."""
    judge = "def needs_journal(request):\n"
    odd = (
        judge + "    if request.startswith(b'ODD'):\n        raise ValueError('cannot judge it')\n"
    )
    (workdir / "reads_free.py").write_text(READS_FREE.replace(judge, odd))
    journal = workdir / "journal.log"
    settings = {"APP_PORT": "0", "APP_JOURNAL_PATH": str(journal), **loop_setting(loop)}
    service = Service(workdir, service_env(**settings), args=["reads_free.py"])
    with connect(service) as client, connect(service) as bystander:
        client.sendall(b"SET a 1\nGET a\nODD a\nGET a\n")  # one batch
        replies = [read_line(client) for _ in range(4)]
        assert replies == [b"OK\n", b"1\n", b"1\n", b"1\n"], service.log
        assert ask(bystander, b"SET b 2\n") == b"OK\n"
        assert ask(client, b"ODD b\n") == b"2\n"  # a batch of its own: the same
    assert service.stop() == ExitCode.OK, service.log
    assert service.log.count("needs_journal() failed") == 2, service.log
    assert "ValueError: cannot judge it" in service.log
    assert journal_requests(journal) == b"SET a 1\nODD a\nSET b 2\nODD b\n"


def stop_from_a_batch(
    workdir: Path, loop: str, source: str, batch: bytes
) -> tuple[bytes, Service, Path]:
    """Run the protocol script ``source``; once a bystander's ``SET b 2`` is answered, a
    client sends ``batch`` in one write, and something in it stops the service with status 3.
    The bystander is drained with the refusal and nothing prints a traceback. Returns what
    the client read to its end, the stopped service and its journal."""
    (workdir / "stops_itself.py").write_text(source)
    journal = workdir / "journal.log"
    settings = {
        "APP_PORT": "0",
        "APP_JOURNAL_PATH": str(journal),
        "APP_SHUTDOWN_TIMEOUT": str(3 * HANG_GUARD),  # a drain that waits shows as a hang
        **loop_setting(loop),
    }
    service = Service(workdir, service_env(**settings), args=["stops_itself.py"])
    with connect(service) as client, connect(service) as bystander:
        assert ask(bystander, b"SET b 2\n") == b"OK\n"
        client.sendall(batch)
        read = read_to_end(client)
        assert read_to_end(bystander) == SHUTTING_DOWN, service.log
    assert service.wait() == 3, service.log
    assert "Traceback" not in service.log, service.log
    return read, service, journal


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_needs_journal_that_raises_system_exit_stops_the_service_gracefully(
    workdir: Path, loop: str
) -> None:
    """Seen failing (a helper's attack): ``sys.exit()`` in ``needs_journal`` stopped the
    service with the status asked for, but out of the read's callback: uvloop logged a fatal
    error on the transport and that client got EOF and no reason. It stops as ``sys.exit()``
    in ``handle`` does. ``needs_journal`` judges a batch before any of it is handled, so
    nothing of that batch is: the client gets ``error: shutting down``, the others are
    drained, and the exit status is the one asked for."""
    judge = "def needs_journal(request):\n"
    exits = judge + "    if request == b'EXIT':\n        raise SystemExit(3)\n"
    read, service, journal = stop_from_a_batch(
        workdir, loop, READS_FREE.replace(judge, exits), b"SET a 1\nGET a\nEXIT\n"
    )
    assert read == SHUTTING_DOWN, service.log
    assert "Fatal error" not in service.log, service.log
    assert journal_requests(journal) == b"SET b 2\n"


def stops_itself() -> str:
    """READS_FREE whose ``handle`` raises SystemExit(3) for EXIT, and after an await for
    AWAIT-EXIT (the rest of its batch then runs in a task)."""
    handle = 'async def handle(request):\n    command, _, rest = request.partition(b" ")\n'
    exits = (
        '    if command == b"AWAIT-EXIT":\n        await asyncio.sleep(0)\n'
        "        raise SystemExit(3)\n"
        '    if command == b"EXIT":\n        raise SystemExit(3)\n'
    )
    assert handle in READS_FREE
    return READS_FREE.replace("import sys\n", "import asyncio\nimport sys\n").replace(
        handle, handle + exits
    )


@pytest.mark.parametrize("exit_request", [b"EXIT", b"AWAIT-EXIT"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_handle_that_raises_system_exit_stops_the_service_gracefully(
    workdir: Path, loop: str, exit_request: bytes
) -> None:
    """Seen failing: ``sys.exit()`` in ``handle`` stopped the service, but the client whose
    request raised it got only EOF: not the replies to the requests of its batch handled
    before it, nor the refusal that says the rest was not. On asyncio the drain also waited
    for that connection until its deadline. Now the requests handled before it are journaled
    and answered, the rest refused, and the service exits with the status asked for."""
    batch = b"SET a 1\nGET a\n" + exit_request + b"\nSET c 3\n"
    read, service, journal = stop_from_a_batch(workdir, loop, stops_itself(), batch)
    assert read == b"OK\n1\n" + SHUTTING_DOWN, service.log
    assert journal_requests(journal) == b"SET b 2\nSET a 1\n"  # GETs need none
