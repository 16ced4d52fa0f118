"""Reliability under load, hostile clients and stuck work: nothing lost, nothing crashes.

Figures worth publishing (load held, peak memory, ...) are handed to the ``figure`` fixture,
which writes them where ``RELIABILITY_FIGURES`` points, so the README's table comes from a
real run instead of being typed by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import struct
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import HANG_GUARD, Process, Service, StartService, connect, echo, service_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.exitcodes import ExitCode

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

    Every line the service answered must reach the client before a clean end of stream (no
    reset), and the journal must hold exactly those lines.
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

    replies = asyncio.run(asyncio.wait_for(scenario(), HANG_GUARD))
    assert service.wait() == ExitCode.OK, service.log
    assert all(reply.endswith(b"\n") for reply in replies)
    assert replies == lines[: len(replies)], "replies out of order or altered"
    assert service.journal.read_bytes().splitlines(keepends=True) == replies
    figure(
        "pipelined",
        "20,000 lines in flight across SIGTERM: all answered lines arrive, clean EOF, 0 lost",
    )


def echo_once(service: Service, line: bytes) -> bytes:
    with connect(service) as sock:
        return echo(sock, line)


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
    replies: list[list[bytes]] = [[] for _ in range(connections)]
    sent: list[int] = [0] * connections

    async def talk(client: int, signalled: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        try:
            while True:
                writer.write(b"%d:%d:%s\n" % (client, sent[client], b"x" * rng.randrange(64)))
                sent[client] += 1
                reply = await reader.readuntil(b"\n")
                if reply == b"error: shutting down\n":
                    break  # connected just as the drain began: refused, nothing echoed
                replies[client].append(reply)
                if sum(map(len, replies)) == signal_after:
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
    journal = service.journal.read_bytes().splitlines(keepends=True)
    answered = [line for per_client in replies for line in per_client]
    assert len(journal) == len(set(journal)), "a line was journaled twice"
    assert sorted(journal) == sorted(answered), "journal and replies differ"
    for client in range(connections):  # ping-pong: at most the last line can be unanswered
        assert sent[client] - len(replies[client]) <= 1
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
    assert replies.count(b"hello\n") == limit
    assert replies.count(b"error: too many connections\n") == attempts - limit
    rss = peak_rss_mib(service.popen.pid)
    assert rss < 200, f"peak RSS {rss:.0f} MiB"
    assert echo_once(service, b"after the storm\n") == b"after the storm\n"
    figure(
        "connections", f"{attempts} attempted, {limit} served, rest refused; peak RSS {rss:.0f} MiB"
    )


@linux_only
def test_client_that_never_reads_is_dropped(start_service: StartService, figure) -> None:
    service = start_service(APP_IDLE_TIMEOUT="1")
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
    assert echo_once(service, b"bystander\n") == b"bystander\n"
    flooder.join(HANG_GUARD)
    stop.set()
    hog.close()
    assert not flooder.is_alive(), "the service never dropped the client that does not read"
    rss = peak_rss_mib(service.popen.pid)
    assert rss < 200, f"peak RSS {rss:.0f} MiB after {pushed >> 20} MiB pushed"
    assert echo_once(service, b"still fine\n") == b"still fine\n"
    figure(
        "non-reader", f"client that never reads: dropped after idle timeout, peak RSS {rss:.0f} MiB"
    )


def test_half_line_then_silence_hits_the_idle_timeout(start_service: StartService, figure) -> None:
    service = start_service(APP_IDLE_TIMEOUT="0.5")
    with connect(service) as sock:
        sock.sendall(b"half a li")
        assert sock.recv(100) == b"", "the silent connection should have been closed"
    assert echo_once(service, b"next\n") == b"next\n"
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
    assert reply == b"error: line longer than 65536 bytes\n"
    rss = peak_rss_mib(service.popen.pid)
    assert rss - before < 5, f"peak RSS grew {rss - before:.1f} MiB: the line was buffered"
    assert echo_once(service, b"ok\n") == b"ok\n"
    figure("long-line", f"10 MB line: refused at 64 KiB, peak RSS {rss:.0f} MiB")


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the service closes the connection after refusing
        sock.sendall(data)


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("shared")
    env = service_env(APP_HOST="127.0.0.1", APP_PORT="0", APP_JOURNAL_PATH="journal.log")
    service = Service(folder, env)
    yield service
    service.popen.kill()
    service.popen.wait()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000).map(lambda b: b.replace(b"\n", b"")))
def test_any_bytes_are_echoed_verbatim(shared_service: Service, payload: bytes) -> None:
    assert echo_once(shared_service, payload + b"\n") == payload + b"\n"


def test_abrupt_resets_mid_line_do_not_disturb_others(start_service: StartService, figure) -> None:
    service = start_service()
    with connect(service) as bystander:
        for _ in range(50):
            sock = connect(service)
            sock.sendall(b"\x00\xff half")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # linger 0: the peer gets a reset
        bystander.sendall(b"unbothered\n")
        assert bystander.recv(100) == b"unbothered\n"
    assert service.stop() == ExitCode.OK
    assert "Traceback" not in service.log
    figure("resets", "50 resets mid-line, NUL and invalid UTF-8: others unaffected")


STUBBORN = textwrap.dedent(
    """
    import asyncio, sys
    from app import __main__ as entry
    from app.service import EchoService

    async def stubborn_worker():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # the bug under test: it swallows its cancellation

    class ServiceWithStuckWork(EchoService):
        async def serve(self):
            await super().serve()
            asyncio.get_running_loop().create_task(stubborn_worker(), name="stubborn-worker")

    entry.EchoService = ServiceWithStuckWork
    sys.exit(entry.main())
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


@posix_only
def test_second_sigint_forces_exit_130(workdir: Path, figure) -> None:
    (workdir / "stuck.py").write_text(STUBBORN)
    env = service_env(APP_PORT="0", APP_SHUTDOWN_TIMEOUT="60", APP_JOURNAL_PATH="journal.log")
    service = Service(workdir, env, args=["stuck.py"])
    first = time.monotonic()
    service.send(signal.SIGINT)
    service.wait_for("shutdown: cancelling")
    # The same signal again within 100 ms is the same request (the runtime merges duplicates).
    time.sleep(max(0.0, first + 0.5 - time.monotonic()))
    started = time.monotonic()
    assert service.stop(signal.SIGINT) == 130
    assert time.monotonic() - started < 5
    assert "stubborn_worker" in service.log
    figure(
        "second-signal", "second SIGINT during a stuck shutdown: exit 130 at once, stacks logged"
    )


CRASHING = textwrap.dedent(
    """
    import asyncio, sys
    from app import __main__ as entry
    from app.service import EchoService

    async def crashing_worker():
        await asyncio.sleep(0)
        raise RuntimeError("the bug under test")

    class ServiceWithABug(EchoService):
        async def serve(self):
            await super().serve()
            asyncio.get_running_loop().create_task(crashing_worker(), name="crashing-worker")

    entry.EchoService = ServiceWithABug
    sys.exit(entry.main())
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
    assert echo_once(service, b"doomed\n") == b"doomed\n"
    assert service.wait() == ExitCode.JOURNAL_UNWRITABLE, service.log
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
