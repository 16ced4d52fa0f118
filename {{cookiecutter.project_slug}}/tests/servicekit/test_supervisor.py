"""Multi-worker mode (APP_WORKERS > 1) in real processes: replacement after a crash, a
graceful stop of every worker with nothing lost, and startup failures that stop it all.

Which worker holds a connection is read from Linux's /proc (the socket's inode in the
worker's file table), so the kill test knows which connections must die with the killed
worker and which must carry on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    SHUTTING_DOWN,
    Process,
    Service,
    StartService,
    ask,
    connect,
    is_reply,
    read_to_end,
    service_env,
    talk_through_sigterm,
)
from conftest import (
    journal_lines as journal_lines_of,
)

from servicekit import supervisor
from servicekit.config import Settings
from servicekit.exitcodes import ExitCode

reuse_port_only = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="workers share a port with SO_REUSEPORT"
)
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads socket owners from /proc"
)
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


@pytest.fixture
def start_workers(start_service: StartService) -> Iterator[StartService]:
    """``start_service``, plus cleanup of the workers: they run in their own process group,
    so a supervisor killed by a failing test would leave them running."""
    services: list[Service] = []

    def start(*args: str, **settings: str) -> Service:
        service = start_service(*args, **settings)
        services.append(service)
        return service

    yield start
    for service in services:
        if service.popen.poll() is None:
            service.popen.kill()
            service.popen.wait()
        for pid in {int(m[2]) for m in STARTED.finditer(service.log)}:
            if not gone(pid):  # left behind by a killed supervisor
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def started_workers(service: Service) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's log."""
    return {int(m[1]): int(m[2]) for m in STARTED.finditer(service.log)}


def socket_inodes(pid: int) -> set[str]:
    folder = Path(f"/proc/{pid}/fd")
    links = set()
    for fd in folder.iterdir():
        try:
            links.add(os.readlink(fd))
        except OSError:
            continue  # closed since the listing
    return links


def server_side_inode(client: socket.socket) -> str:
    """The inode of the server's end of ``client``'s connection, from /proc/net/tcp(6)."""
    client_port = client.getsockname()[1]
    server_port = client.getpeername()[1]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                return f"socket:[{inode}]"
    raise AssertionError(f"no server socket for client port {client_port}")


def owner(client: socket.socket, pids: list[int]) -> int:
    """The pid of the worker that accepted ``client`` (call after it answered once)."""
    inode = server_side_inode(client)
    owners = [pid for pid in pids if inode in socket_inodes(pid)]
    assert len(owners) == 1, (inode, owners)
    return owners[0]


def journal_lines(folder: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(folder.glob("journal.worker-*.log")):
        lines += journal_lines_of(path)
    return lines


def test_worker_journal_names() -> None:
    assert supervisor.worker_journal(Path("data/journal.log"), 2) == Path(
        "data/journal.worker-2.log"
    )
    assert supervisor.worker_journal(Path("/data/journal"), 1) == Path("/data/journal.worker-1")


def test_restart_delay_doubles_up_to_a_cap() -> None:
    delays = [supervisor.restart_delay(n) for n in range(1, 12)]
    assert delays[:3] == [supervisor.BACKOFF_FIRST, 2 * supervisor.BACKOFF_FIRST, 4 * 0.5]
    assert delays == sorted(delays)
    assert delays[-1] == supervisor.BACKOFF_MAX


def test_without_so_reuseport_workers_are_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)  # as on Windows
    assert supervisor.main(Settings(workers=3)) == ExitCode.CONFIG
    error = capsys.readouterr().err
    assert error.startswith("error: APP_WORKERS=3: ")
    assert "SO_REUSEPORT" in error


@linux_only
def test_killed_worker_is_replaced_while_the_others_keep_serving(
    start_workers: StartService,
) -> None:
    service = start_workers(APP_WORKERS="2")
    assert service.log.count("listening on") == 1, service.log
    pids = started_workers(service)
    assert sorted(pids) == [1, 2]

    clients = [connect(service) for _ in range(8)]
    for n, client in enumerate(clients):
        assert is_reply(ask(client, b"before %d\n" % n))
    owners = [owner(client, list(pids.values())) for client in clients]
    victim = owners[0]  # the worker holding the first connection: it has at least one
    index = next(i for i, pid in pids.items() if pid == victim)

    os.kill(victim, signal.SIGKILL)
    service.wait_for(rf"worker {index} exited with SIGKILL, restarting in \d")
    for n, (client, pid) in enumerate(zip(clients, owners, strict=True)):
        line = b"after %d\n" % n
        if pid == victim:  # died with its worker: closed or reset, never answered
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                assert ask(client, line) == b""
        else:  # on a surviving worker: untouched
            assert is_reply(ask(client, line))
        client.close()
    for n in range(4):  # while the slot is empty, new connections go to the others
        with connect(service) as client:
            assert is_reply(ask(client, b"meanwhile %d\n" % n))

    started = service.wait_for(rf"worker {index} started \(pid (?!{victim}\))(\d+)\)")
    replacement = int(started[1])
    service.wait_for(rf"worker {index} ready \(pid {replacement}\)")
    survivors = [pid for pid in pids.values() if pid != victim]
    for n in range(100):  # the kernel spreads new connections: the replacement gets some
        with connect(service) as client:
            assert is_reply(ask(client, b"again %d\n" % n))
            if owner(client, [*survivors, replacement]) == replacement:
                break
    else:
        pytest.fail("100 connections and none reached the replacement worker")

    assert service.stop() == ExitCode.OK, service.log
    assert "Traceback" not in service.log


@reuse_port_only
def test_sigterm_stops_every_worker_gracefully_and_the_journals_are_complete(
    start_workers: StartService, workdir: Path
) -> None:
    """Clients keep talking while SIGTERM arrives: each reply is journaled once, by one worker."""
    service = start_workers(APP_WORKERS="2")
    clients = 12
    answered = talk_through_sigterm(service, clients)
    assert service.wait() == ExitCode.OK, service.log
    for index in (1, 2):
        assert re.search(rf"\[worker {index}\] .*journal flushed", service.log), service.log
        assert re.search(rf"\[worker {index}\] .*shutdown: complete", service.log), service.log
    assert "restarting" not in service.log
    assert "Traceback" not in service.log

    journal = journal_lines(workdir / "data")
    assert len(journal) == len(set(journal)), "a line was journaled twice"
    assert sorted(journal) == sorted(answered)
    assert len(answered) > clients * 10
    assert not (workdir / "data" / "journal.log").exists(), "workers write their own files"


@reuse_port_only
def test_worker_failing_at_start_stops_the_service_with_its_status(run_app, workdir) -> None:
    (workdir / "blocker").write_text("a file where a folder should be")
    result = run_app(APP_PORT="0", APP_WORKERS="2", APP_JOURNAL_PATH="blocker/journal.log")
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert "before the service was ready" in result.stderr
    assert "restarting" not in result.stderr
    assert "listening on" not in result.stderr
    assert "Traceback" not in result.stderr


@reuse_port_only
def test_port_taken_exits_69_before_any_worker_starts(run_app) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_app(APP_PORT=str(taken.getsockname()[1]), APP_WORKERS="2")
    assert result.returncode == ExitCode.ADDRESS_IN_USE, result.stderr
    assert "cannot listen on 127.0.0.1:" in result.stderr
    assert "started" not in result.stderr


@reuse_port_only
def test_sigint_reaches_each_worker_once(start_workers: StartService) -> None:
    """Workers are in their own process group: only the supervisor's forward reaches them."""
    service = start_workers(APP_WORKERS="2")
    assert service.stop(signal.SIGINT) == ExitCode.OK, service.log
    for index in (1, 2):
        received = re.findall(rf"\[worker {index}\] .*shutdown: SIGINT received", service.log)
        assert len(received) == 1, service.log


@reuse_port_only
def test_second_signal_is_forwarded_and_its_status_is_the_exit_status(
    start_workers: StartService,
) -> None:
    """A client that never reads its replies holds one worker in its drain; a second SIGTERM
    makes that worker force-exit with 128 + 15, and the supervisor reports that status."""
    service = start_workers(APP_WORKERS="2", APP_SHUTDOWN_TIMEOUT="30")
    with connect(service) as stubborn:
        # A reply proves a worker accepted it; full buffers alone do not, and a connection
        # still in the accept queue at the SIGTERM is never drained.
        assert is_reply(ask(stubborn, b"accepted?\n"))
        stubborn.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # until both sides' buffers are full
                stubborn.send(b"never read\n" * 4096)
        service.send(signal.SIGTERM)
        service.wait_for(r"\[worker \d\] .*draining 1 connection")
        service.send_again(signal.SIGTERM)
        assert service.wait() == 128 + signal.SIGTERM, service.log
    assert "SIGTERM received again" in service.log


@reuse_port_only
def test_worker_outliving_the_budget_is_killed_and_reported(start_workers: StartService) -> None:
    """A frozen worker (SIGSTOP) cannot shut down; after APP_SHUTDOWN_TIMEOUT + the margin
    the supervisor kills it and exits 75, the status for abandoned work."""
    service = start_workers(APP_WORKERS="2", APP_SHUTDOWN_TIMEOUT="0.5")
    frozen = started_workers(service)[1]
    os.kill(frozen, signal.SIGSTOP)
    assert service.stop() == ExitCode.SHUTDOWN_TIMEOUT, service.log
    assert re.search(
        rf"worker 1 \(pid {frozen}\) still running after [\d.]+s: killing", service.log
    )
    assert re.search(r"\[worker 2\] .*shutdown: complete", service.log)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until_gone(pids: list[int]) -> None:
    """Poll /proc until every pid has exited: they are not our children, nothing to wait on."""
    deadline = time.monotonic() + HANG_GUARD
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not gone(p)]}"
        time.sleep(0.05)


@reuse_port_only
def test_second_supervisor_on_the_same_port_and_folder_refuses_with_69(
    start_workers: StartService, workdir: Path
) -> None:
    first = start_workers(APP_WORKERS="2")
    env = service_env(
        APP_HOST="127.0.0.1",
        APP_PORT=str(first.port),
        APP_WORKERS="2",
        APP_JOURNAL_PATH="data/journal.log",
    )
    second = Process([sys.executable, "-m", "app"], workdir, env)
    assert second.wait() == ExitCode.ADDRESS_IN_USE, second.log
    [line] = second.lines
    assert "cannot listen on 127.0.0.1:" in line
    assert first.stop() == ExitCode.OK, first.log


@linux_only
def test_two_supervisors_starting_together_on_one_port_do_not_share_it(workdir: Path) -> None:
    """Until its workers listen, a supervisor's port looks free; a second supervisor started
    in that window (a deploy script run twice, from another folder) joined the port through
    SO_REUSEPORT, and two services answered on it, each with half the connections.

    The first supervisor is held in that window: its workers block reading a ``.env`` that
    is a FIFO nobody writes, before they bind.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    os.mkfifo(workdir / ".env")
    env = service_env(APP_HOST="127.0.0.1", APP_PORT=port, APP_WORKERS="2")
    first = Process([sys.executable, "-m", "app"], workdir, env)
    try:
        with open(workdir / ".env", "w"):  # the supervisor's own read: an empty .env
            pass
        first.wait_for(r"worker 2 started")  # both workers are now stuck reading .env
        elsewhere = workdir / "elsewhere"
        elsewhere.mkdir()
        second = Process([sys.executable, "-m", "app"], elsewhere, env)
        assert second.wait() == ExitCode.ADDRESS_IN_USE, second.log
        [line] = second.lines
        assert f"port {port} is taken by another supervisor" in line, line
    finally:
        first.send(signal.SIGTERM)  # forwarded: kills the workers, which have no handler yet
        first.wait()


@reuse_port_only
def test_second_supervisor_in_the_same_folder_refuses_with_69(
    start_workers: StartService, workdir: Path
) -> None:
    """Another port, but the same journals: the second must not write them too."""
    first = start_workers(APP_WORKERS="2")
    env = service_env(
        APP_HOST="127.0.0.1", APP_PORT="0", APP_WORKERS="2", APP_JOURNAL_PATH="data/journal.log"
    )
    second = Process([sys.executable, "-m", "app"], workdir, env)
    assert second.wait() == ExitCode.ADDRESS_IN_USE, second.log
    [line] = second.lines
    assert re.search(r"data/journal\.log.* in use by another supervisor \(pid \d+\)", line), line
    assert first.stop() == ExitCode.OK, first.log


@linux_only
@pytest.mark.parametrize("how", ["SIGKILL", "SIGHUP"])
def test_workers_of_a_vanished_or_hung_up_supervisor_drain_and_exit(
    start_workers: StartService, workdir: Path, how: str
) -> None:
    """``kill -9`` of the supervisor (or SIGHUP, a closed terminal) must not leave orphans
    serving: each worker drains its clients gracefully and exits."""
    service = start_workers(APP_WORKERS="2")
    pids = list(started_workers(service).values())
    clients = [connect(service) for _ in range(6)]
    for n, client in enumerate(clients):
        assert is_reply(ask(client, b"before %d\n" % n))
    service.send(getattr(signal, how))
    code = service.wait()
    if how == "SIGHUP":
        assert code == ExitCode.OK, service.log
    for client in clients:  # told, then a graceful end of stream; not a reset, not silence
        with client:
            assert read_to_end(client) == SHUTTING_DOWN
    wait_until_gone(pids)
    lines = journal_lines(workdir / "data")
    assert sorted(lines) == sorted(b"before %d\n" % n for n in range(6))


@reuse_port_only
def test_supervisor_under_nohup_ignores_sighup(start_workers: StartService) -> None:
    """``nohup python -m app`` asks for SIGHUP to be ignored, so that logging out does not
    stop the service; the single process honours that, the supervisor must too."""
    nohup = (
        "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN);"
        " os.execv(sys.executable, [sys.executable, '-m', 'app'])"
    )
    service = start_workers("-c", nohup, APP_WORKERS="2")
    service.send(signal.SIGHUP)  # if heard, it is logged whether it comes first or second
    service.send(signal.SIGTERM)
    assert service.wait() == ExitCode.OK, service.log
    assert "stopping 2 worker(s): SIGTERM received" in service.log
    assert "SIGHUP" not in service.log


@linux_only
def test_sigstopped_worker_misses_its_heartbeat_and_is_replaced(
    start_workers: StartService,
) -> None:
    service = start_workers(APP_WORKERS="2", APP_HEARTBEAT_TIMEOUT="2")
    frozen = started_workers(service)[1]
    os.kill(frozen, signal.SIGSTOP)
    service.wait_for(rf"worker 1 \(pid {frozen}\) missed its heartbeat for [\d.]+ s: killing it")
    started = service.wait_for(rf"worker 1 started \(pid (?!{frozen}\))(\d+)\)")
    service.wait_for(rf"worker 1 ready \(pid {started[1]}\)")
    for n in range(20):  # the frozen worker's queue is gone with it: nobody is stuck there
        with connect(service) as client:
            assert is_reply(ask(client, b"after %d\n" % n))
    assert service.stop() == ExitCode.OK, service.log
