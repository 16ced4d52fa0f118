"""The service as its users see it: graceful stop, the journal, refusals, exit statuses.

Protocol-agnostic: what a reply says is ``tests/test_protocol.py``'s business; here a reply
is any one line, and the journal must hold every request that got one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    JOURNAL_HEADER,
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
    read_to_end,
    service_env,
    talk_through_sigterm,
)

from app import protocol
from servicekit.config import Settings
from servicekit.exitcodes import ExitCode
from servicekit.logs import JsonFormatter
from servicekit.server import Server
from servicekit.service import does_nothing

SHUTDOWN_PHASES = (
    "stopped accepting connections",
    "draining",
    "journal flushed",
    "shutdown: complete",
)
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def exchange(service: Service, payload: bytes, expect: int) -> bytes:
    """Send bytes on a fresh connection and read until ``expect`` bytes or EOF."""
    with socket.create_connection((service.host, service.port), timeout=HANG_GUARD) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def reply_to(service: Service, line: bytes) -> bytes:
    """Send one line on a fresh connection and read one reply line."""
    with connect(service) as sock:
        return ask(sock, line)


def test_client_prints_one_reply_per_request(start_service: StartService, run_app) -> None:
    service = start_service()
    result = run_app("--port", str(service.port), "hello", "wörld", module="servicekit.client")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert service.stop() == ExitCode.OK
    assert journal_of(service) == [b"hello\n", "wörld\n".encode()]


def test_client_reads_requests_from_stdin(start_service: StartService, workdir: Path) -> None:
    service = start_service()
    requests = b"".join(b"request %d\n" % n for n in range(50))
    result = subprocess.run(
        [sys.executable, "-m", "servicekit.client", "--port", str(service.port)],
        input=requests,
        capture_output=True,
        cwd=workdir,
        env=service_env(),
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"\n") == 50
    assert service.stop() == ExitCode.OK
    assert journal_requests(service.journal) == requests


@posix_only
def test_client_reports_requests_refused_by_a_draining_service(
    start_service: StartService, workdir: Path
) -> None:
    """A request sent once the drain began gets SHUTTING_DOWN, not a reply: the client says
    it was refused and not handled (so it can be sent again) and exits 1."""
    service = start_service()
    client = subprocess.Popen(
        [sys.executable, "-m", "servicekit.client", "--port", str(service.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=service_env(),
    )
    assert client.stdin is not None
    assert client.stdout is not None
    client.stdin.write(b"before\n")
    client.stdin.flush()
    first = client.stdout.readline()  # answered: the connection is open and served
    service.send(signal.SIGTERM)
    service.wait_for("draining 1 connection")
    out, err = client.communicate(b"during\nafter\n", timeout=HANG_GUARD)
    assert client.returncode == 1, err
    assert is_reply(first)
    assert out == b"", "no reply after the drain began"
    assert err.decode() == (
        f"error: refused by 127.0.0.1:{service.port}: shutting down; "
        "request 2 and any after it were not handled\n"
    )
    assert service.wait() == ExitCode.OK, service.log
    assert journal_of(service) == [b"before\n"]


def test_client_reports_nothing_listening(run_app) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_app("--port", str(port), module="servicekit.client")
    assert result.returncode == 1
    assert result.stderr.startswith("error: nothing is listening on 127.0.0.1:")
    assert "Traceback" not in result.stderr


@pytest.mark.quick
@posix_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_with_phases_logged(start_service: StartService, signum) -> None:
    service = start_service()
    assert is_reply(reply_to(service, b"before the signal\n"))
    # Idle clients that keep their connections open and never close them must neither hold
    # the shutdown until its budget runs out (exit 75) nor be reset: each is told
    # SHUTTING_DOWN, then sees a clean end of stream.
    idle = [socket.create_connection((service.host, service.port)) for _ in range(3)]
    for sock in idle:
        sock.sendall(b"\n")
        assert sock.recv(1) == b"\n"
    assert service.stop(signum) == ExitCode.OK
    for sock in idle:
        with sock:
            assert read_to_end(sock) == SHUTTING_DOWN
    positions = [service.log.find(phase) for phase in SHUTDOWN_PHASES]
    assert -1 not in positions, service.log
    assert positions == sorted(positions), "phases out of order:\n" + service.log
    assert "Traceback" not in service.log
    assert journal_requests(service.journal) == b"before the signal\n"


@posix_only
def test_sighup_stops_gracefully_like_sigterm(start_service: StartService, figure) -> None:
    """A closed terminal or SSH session sends SIGHUP: drain, do not die."""
    service = start_service()
    assert is_reply(reply_to(service, b"before the hangup\n"))
    assert service.stop(signal.SIGHUP) == ExitCode.OK
    assert "shutdown: SIGHUP received" in service.log
    positions = [service.log.find(phase) for phase in SHUTDOWN_PHASES]
    assert -1 not in positions, service.log
    assert journal_requests(service.journal) == b"before the hangup\n"
    figure("sighup", "SIGHUP (a closed terminal): the same graceful stop as SIGTERM, exit 0")


def test_ephemeral_port_is_reported(start_service: StartService) -> None:
    service = start_service()
    assert service.port != 0
    assert exchange(service, b"\n", 1) == b"\n"


@pytest.mark.quick
@posix_only
def test_journal_holds_exactly_what_was_echoed(start_service: StartService) -> None:
    """Clients keep talking while SIGTERM arrives: every reply is journaled once, no more."""
    service = start_service()
    clients = 20
    replies = talk_through_sigterm(service, clients)
    assert service.wait() == ExitCode.OK, service.log
    journal = journal_of(service)
    assert_journaled(journal, [replies])
    assert sorted(journal) == sorted(replies), "journaled without an answer"
    assert len(replies) > clients * 10


@pytest.mark.quick
def test_over_limit_line_is_refused_and_others_are_unaffected(start_service: StartService) -> None:
    service = start_service(APP_MAX_LINE_BYTES="1024")
    with socket.create_connection((service.host, service.port), timeout=HANG_GUARD) as bystander:
        reply = exchange(service, b"y" * 4000 + b"\n", 10_000)
        assert reply == b"\x15error: line longer than 1024 bytes\n"
        assert is_reply(ask(bystander, b"still here\n"))
    longest = b"z" * 1023 + b"\n"  # the limit counts the newline
    assert is_reply(reply_to(service, longest))
    assert exchange(service, b"z" + longest, 1025).startswith(b"\x15error: line longer")
    assert service.stop() == ExitCode.OK
    assert journal_of(service) == [b"still here\n", longest]


def test_connections_past_the_limit_are_refused_politely(start_service: StartService) -> None:
    service = start_service(APP_MAX_CONNECTIONS="2")
    with (
        socket.create_connection((service.host, service.port), timeout=HANG_GUARD) as first,
        socket.create_connection((service.host, service.port), timeout=HANG_GUARD) as second,
    ):
        for sock in (first, second):  # both are accepted and served before the third comes
            assert ask(sock, b"\n") == b"\n"
        assert exchange(service, b"", 100) == b"\x15error: too many connections\n"
    assert exchange(service, b"\n", 1) == b"\n"


@pytest.mark.quick
def test_health_probe(start_service: StartService, run_app) -> None:
    service = start_service()
    assert run_app("--port", str(service.port), module="servicekit.health").returncode == 0
    assert service.stop() == ExitCode.OK
    failed = run_app("--port", str(service.port), module="servicekit.health")
    assert failed.returncode == 1
    assert failed.stderr.startswith("unhealthy: ")
    assert journal_requests(service.journal) == b"", "health pings must not be journaled"
    assert run_app("--port", "x", module="servicekit.health").returncode == 1  # never 2 (Docker's)


def test_busy_service_is_alive_but_not_ready(start_service: StartService, run_app) -> None:
    """At its connection limit the service should get no more traffic (readiness fails), yet
    it must not be restarted for being popular (liveness passes)."""
    service = start_service(APP_MAX_CONNECTIONS="1")
    with socket.create_connection((service.host, service.port), timeout=HANG_GUARD) as only:
        assert ask(only, b"\n") == b"\n"
        ready = run_app("--port", str(service.port), module="servicekit.health")
        assert ready.returncode == 1
        assert ready.stderr.startswith("not ready: ")
        assert "connection limit" in ready.stderr
        assert (
            run_app("--live", "--port", str(service.port), module="servicekit.health").returncode
            == 0
        )


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("host", ["::1", "::"])
def test_health_probe_follows_app_host(start_service: StartService, run_app, host: str) -> None:
    """The probe asks where the service listens: ::1 itself, and ::1 for the wildcard ::."""
    service = start_service(APP_HOST=host)
    probe = run_app("--port", str(service.port), module="servicekit.health", APP_HOST=host)
    assert probe.returncode == 0, probe.stderr
    assert service.stop() == ExitCode.OK


def test_client_reports_a_server_that_hangs_up_without_a_reply(run_app) -> None:
    with socket.create_server(("127.0.0.1", 0)) as mute:
        port = mute.getsockname()[1]
        answer = threading.Thread(target=lambda: _hang_up(mute), daemon=True)
        answer.start()
        result = run_app("--port", str(port), "hello", module="servicekit.client")
        answer.join(HANG_GUARD)
    assert result.returncode == 1
    assert result.stderr == f"error: 127.0.0.1:{port} closed the connection without a reply\n"


def test_client_reports_a_refusal(start_service: StartService, run_app) -> None:
    service = start_service(APP_MAX_CONNECTIONS="1")
    with connect(service) as only:
        assert ask(only, b"\n") == b"\n"
        result = run_app("--port", str(service.port), "hello", module="servicekit.client")
    assert result.returncode == 1
    assert result.stderr == (
        f"error: refused by 127.0.0.1:{service.port}: too many connections; "
        "request 1 and any after it were not handled\n"
    )


MIMIC = textwrap.dedent(
    """
    import sys
    from app import protocol
    from servicekit import main as entry

    MIMICKED = {
        b"drain": b"error: shutting down",
        b"full": b"error: too many connections",
        b"long": b"error: line longer than 16 bytes",
        b"slow": b"error: line not completed within 1s",
    }

    async def handle(request):
        return MIMICKED.get(request, request)

    protocol.handle = handle
    sys.exit(entry.main(protocol))
    """
)


@posix_only
def test_a_reply_that_reads_like_a_refusal_is_still_a_reply(workdir: Path, run_app, figure) -> None:
    """Whatever ``handle`` answers, a client can tell it from the server's refusal: a reply
    that says ``error: shutting down`` was handled and journaled, and must not be retried
    as if it had been refused. A real refusal (here of a line too long) is still one."""
    (workdir / "mimic.py").write_text(MIMIC)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="journal.log", APP_MAX_LINE_BYTES="16")
    service = Service(workdir, env, args=["mimic.py"])
    mimicked = ["drain", "full", "long", "slow"]
    with connect(service) as sock:
        for request in mimicked:
            assert is_reply(ask(sock, request.encode() + b"\n")), request
    port = str(service.port)
    answered = run_app("--port", port, *mimicked, module="servicekit.client")
    assert answered.returncode == 0, answered.stderr
    assert len(answered.stdout.splitlines()) == len(mimicked)
    refused = run_app("--port", port, "drain", "a line much too long", module="servicekit.client")
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr == (
        f"error: refused by 127.0.0.1:{port}: line longer than 16 bytes; "
        "request 2 and any after it were not handled\n"
    )
    with connect(service) as sock:
        assert ask(sock, b"\x15forged refusal\n") == FAILED, "a reply starting like a refusal"
        assert not is_reply(ask(sock, b"a line much too long\n"))
    assert service.stop() == ExitCode.OK, service.log
    assert service.log.count("which only refusals do") == 1, service.log
    assert journal_of(service) == [
        *(line.encode() + b"\n" for line in mimicked * 2 + ["drain"]),
        b"\x15forged refusal\n",
    ]
    figure(
        "refusal-marked",
        "replies that read like refusals (error: shutting down, ...) stay replies and are"
        " journaled; real refusals start with 0x15 (NAK), which no reply may",
    )


def _hang_up(server: socket.socket) -> None:
    connection, _ = server.accept()
    with connection:
        connection.recv(100)


def test_client_refuses_a_message_with_a_line_break(run_app) -> None:
    result = run_app("--port", "1", "two\nlines", module="servicekit.client")
    assert result.returncode == 2
    assert "a message is one line" in result.stderr


@pytest.mark.quick
@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"APP_PORT": "abc"}, "APP_PORT"),
        ({"APP_PORT": "70000"}, "APP_PORT"),
        ({"APP_SHUTDOWN_TIMEOUT": "-1"}, "APP_SHUTDOWN_TIMEOUT"),
        ({"APP_USE_UVLOOP": "maybe"}, "APP_USE_UVLOOP"),
        ({"APP_LOG_LEVEL": "LOUD"}, "APP_LOG_LEVEL"),
    ],
)
def test_bad_setting_exits_2_with_one_line(run_app, settings: dict[str, str], names: str) -> None:
    result = run_app(**settings)
    assert result.returncode == ExitCode.CONFIG
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {names}=")


FAKE_SECRET = "S3cr3tPassw0rd"
"""A stand-in password: it must never show up in anything the service prints."""


def test_malformed_env_file_exits_2(run_app, workdir, figure) -> None:
    (workdir / ".env").write_text(f"APP_PORT=1234\nthis line {FAKE_SECRET} is no assignment\n")
    result = run_app()
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.splitlines() == ["error: .env line 2: not KEY=VALUE"]
    figure("startup", "malformed .env or setting: one line, exit 2")


def test_malformed_env_line_names_the_key_never_the_value(run_app, workdir) -> None:
    """An unterminated quote in a setting the service uses: line and key, not the value."""
    (workdir / ".env").write_text(
        f'APP_PORT=1234\n\nAPP_JOURNAL_PATH="/srv/{FAKE_SECRET}/journal.log\n'
    )
    result = run_app()
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.splitlines() == [
        "error: .env line 3: APP_JOURNAL_PATH is not KEY=VALUE (check its quotes)"
    ]
    assert FAKE_SECRET not in result.stderr


def test_unclosed_quote_hiding_a_setting_is_an_error(run_app, workdir) -> None:
    """An unclosed quote runs on to the next quote, swallowing the settings in between."""
    (workdir / ".env").write_text(f'DATABASE_URL="{FAKE_SECRET}\nAPP_PORT="1"\n')
    result = run_app()
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.splitlines() == [
        "error: .env line 1: DATABASE_URL is not KEY=VALUE (check its quotes), which hides APP_PORT"
    ]


def test_malformed_env_line_for_a_foreign_key_only_warns(
    start_service: StartService, workdir
) -> None:
    """Someone else's secret in a shared .env, with a broken quote: warn without the value,
    and serve, with the settings on the lines around it read as usual."""
    (workdir / ".env").write_text(
        "APP_MAX_LINE_BYTES=8\n"
        f'DATABASE_URL="postgres://admin:{FAKE_SECRET}@db/prod\n'
        f"export  API_TOKEN='{FAKE_SECRET}\n"
    )
    service = start_service()
    assert ".env line 2: DATABASE_URL is not KEY=VALUE (check its quotes); ignored" in service.log
    assert ".env line 3: API_TOKEN is not KEY=VALUE (check its quotes); ignored" in service.log
    assert exchange(service, b"too long\n", 100).startswith(b"\x15error: line longer than 8")
    assert service.stop() == ExitCode.OK
    assert FAKE_SECRET not in service.log


def test_env_file_is_read_and_real_environment_wins(start_service: StartService, workdir) -> None:
    (workdir / ".env").write_text(
        "APP_PORT=1\nAPP_JOURNAL_PATH=from-dotenv.log\nexport APP_MAX_LINE_BYTES='8'\n"
    )
    service = start_service()  # APP_PORT=0 and the journal path come from the environment
    assert service.port != 1
    assert is_reply(reply_to(service, b"dotenv\n"))
    assert exchange(service, b"too long\n", 100).startswith(b"\x15error: line longer than 8")
    assert service.stop() == ExitCode.OK
    assert not (workdir / "from-dotenv.log").exists()


def test_unknown_setting_is_warned_about(start_service: StartService) -> None:
    service = start_service(APP_PROT="9999")
    assert "unknown setting APP_PROT ignored (did you mean APP_PORT?)" in service.log
    assert service.stop() == ExitCode.OK


def test_port_in_use_exits_69(run_app, figure) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_app(APP_PORT=str(taken.getsockname()[1]))
    assert result.returncode == ExitCode.ADDRESS_IN_USE, result.stderr
    [line] = result.stderr.splitlines()  # one line, nothing else
    assert line.endswith("Address already in use")
    assert "cannot listen on 127.0.0.1:" in line
    figure("startup", "port in use: one line, exit 69")


def test_unwritable_journal_exits_73(run_app, workdir, figure) -> None:
    (workdir / "blocker").write_text("a file where a folder should be")
    result = run_app(APP_PORT="0", APP_JOURNAL_PATH="blocker/journal.log")
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    [line] = result.stderr.splitlines()  # one line, nothing else
    assert "cannot write journal" in line
    figure("startup", "unwritable journal: one line, exit 73")


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux capabilities or a non-root user")
def test_low_port_without_permission_exits_77(workdir, figure) -> None:
    """A real EACCES: as root, drop CAP_NET_BIND_SERVICE with setpriv first."""
    unprivileged = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if unprivileged.exists() and int(unprivileged.read_text()) <= 1:
        pytest.skip("this kernel lets anyone bind port 1 (ip_unprivileged_port_start)")
    command = [sys.executable, "-m", "app"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop CAP_NET_BIND_SERVICE")
        command = [setpriv, "--bounding-set", "-net_bind_service", "--", *command]
    env = service_env(APP_HOST="127.0.0.1", APP_PORT="1", APP_JOURNAL_PATH="data/journal.log")
    process = Process(command, workdir, env)
    assert process.wait() == ExitCode.PERMISSION_DENIED, process.log
    [line] = process.lines  # one line, nothing else
    assert line.endswith("cannot listen on 127.0.0.1:1: Permission denied")
    figure("startup", "no permission for port 1: one line, exit 77")


def test_help_lists_every_setting_and_exit_status(run_app) -> None:
    """``--help`` is generated from the settings themselves: nothing can be left out."""
    result = run_app("--help")
    assert result.returncode == ExitCode.OK, result.stderr
    lines = result.stdout.splitlines()
    for field in dataclasses.fields(Settings):
        name = f"APP_{field.name.upper()}"
        [line] = [line for line in lines if line.split()[:1] == [name]]
        default = (field.metadata.get("shown") or str(field.default)).lower().removesuffix(".0")
        assert default in line.lower(), line
        assert len(line.lower().split(default, 1)[1].strip()) > 10, f"{name}: what does it do?"
    for code in ExitCode:
        assert any(line.split()[:1] == [str(code.value)] for line in lines), code
    assert result.stderr == ""


def test_unknown_argument_exits_2_with_one_line(run_app) -> None:
    result = run_app("--port", "9")
    assert result.returncode == ExitCode.CONFIG
    [line] = result.stderr.splitlines()
    assert line.startswith("error: unknown argument '--port'")
    assert "--help" in line


def test_json_log_is_one_object_per_line(start_service: StartService) -> None:
    service = start_service(APP_LOG_FORMAT="json")
    assert is_reply(reply_to(service, b"logged\n"))
    assert service.stop() == ExitCode.OK
    assert service.raw_lines, "nothing logged"
    assert len(service.records) == len(service.raw_lines), service.log  # every line is JSON
    for record in service.records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), record
    messages = [record["message"] for record in service.records]
    assert any(message.startswith("listening on ") for message in messages), messages
    assert any(message.startswith("shutdown: complete") for message in messages), messages


def test_json_log_carries_extra_fields_and_the_exception() -> None:
    """The formatter itself: every extra= field, and the traceback as one string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.json")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("the error under test")
        except ValueError:
            log.error("failed %s", "here", exc_info=True, extra={"phase": "drain", "count": 3})
    finally:
        log.removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "failed here"
    assert record["level"] == "ERROR"
    assert record["logger"] == "test.json"
    assert (record["phase"], record["count"]) == ("drain", 3)
    assert record["exception"].startswith("Traceback (most recent call last)")
    assert record["exception"].endswith("ValueError: the error under test")


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")
def test_json_log_of_workers_stays_one_object_per_line(start_service: StartService) -> None:
    service = start_service(APP_LOG_FORMAT="json", APP_WORKERS="2")
    assert service.stop() == ExitCode.OK
    assert len(service.records) == len(service.raw_lines), service.log
    workers = {record.get("worker") for record in service.records}
    assert {1, 2} <= workers, service.log
    ready = [r for r in service.records if r["message"].startswith("worker 1 ready")]
    assert ready[0]["worker_pid"] > 0


def test_startup_imports_only_what_this_start_needs(start_service: StartService) -> None:
    """Start-up time is import time: python-dotenv only with a .env file, the supervisor only
    with workers, difflib only for a warning (see bench/ for the time to 'listening on')."""
    service = start_service("-X", "importtime", "-m", "app")
    imported = {line.rsplit("|", 1)[1].strip() for line in service.lines if "import time:" in line}
    assert "servicekit.server" in imported, "no import times read"
    for module in ("dotenv", "servicekit.supervisor", "difflib"):
        assert module not in imported, f"{module} imported at start"
    assert service.stop() == ExitCode.OK


PROTOCOL_SWAP = textwrap.dedent(
    """
    import asyncio, runpy, sys
    from app import protocol
    from servicekit import main as entry

    original = protocol.handle

    async def handle(request):
        if request == b"boom":
            raise RuntimeError("the bug under test")
        if request.startswith(b"slow"):
            await asyncio.sleep(0.01)  # suspends: the rest of the batch goes on in a task
        if request.startswith(b"tag"):  # a reply that names its request, whatever the protocol
            if request.endswith(b"wait"):
                await asyncio.sleep(0.05)
            return b"for " + request
        return await original(request)

    recovered = []

    def recover(request):
        recovered.append(request)

    def report():
        print("recover() saw", len(recovered), "request(s)", file=sys.stderr, flush=True)

    protocol.handle, protocol.recover = handle, recover
    entry.Service.serve = (lambda serve: lambda self: (report(), serve(self))[1])(
        entry.Service.serve
    )
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


FAILED = b"error: internal error\n"


def swapped_service(workdir: Path) -> Service:
    (workdir / "swapped.py").write_text(PROTOCOL_SWAP)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="journal.log")
    return Service(workdir, env, args=["swapped.py"])


@posix_only
def test_an_error_in_handle_is_logged_once_and_the_connection_goes_on(workdir: Path) -> None:
    service = swapped_service(workdir)
    with connect(service) as sock:
        assert ask(sock, b"before\n").count(b"\n") == 1
        assert ask(sock, b"boom\n") == FAILED
        assert is_reply(ask(sock, b"after\n"))
        sock.sendall(b"boom\nslow 1\nboom\nslow 2\n")  # one batch: the error goes on in a task
        stream = sock.makefile("rb")
        replies = [stream.readline() for _ in range(4)]
        assert [reply == FAILED for reply in replies] == [True, False, True, False]
    assert service.stop() == ExitCode.OK
    assert service.log.count("RuntimeError: the bug under test") == 3, service.log
    assert service.log.count("Traceback") == 3
    assert journal_of(service) == [
        b"before\n",
        b"boom\n",
        b"after\n",
        b"boom\n",
        b"slow 1\n",
        b"boom\n",
        b"slow 2\n",
    ]


CANCELLING = textwrap.dedent(
    """
    import asyncio, sys
    from app import protocol
    from servicekit import main as entry

    async def handle(request):
        if request == b"cancel now":
            raise asyncio.CancelledError("raised by handle, not by a cancellation")
        if request == b"cancel later":
            await asyncio.sleep(0.01)  # suspends: it goes on in a task
            raise asyncio.CancelledError("raised by handle after an await")
        return b"answered"  # its own reply: the project's protocol may refuse other lines

    protocol.handle = handle
    sys.exit(entry.main(protocol))
    """
)


@posix_only
@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cancelled_error_raised_by_handle_is_that_requests_error(
    workdir: Path, loop: str, log_format: str, figure
) -> None:
    """``handle`` raising CancelledError, at once or after an await, is a bug in that request,
    not a cancellation of anything the server runs: the client gets FAILED, the connection
    goes on, the log has one record with the traceback, and the service stops cleanly."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    (workdir / "cancelling.py").write_text(CANCELLING)
    env = service_env(
        APP_PORT="0",
        APP_JOURNAL_PATH="journal.log",
        APP_USE_UVLOOP="1" if loop == "uvloop" else "0",
        APP_LOG_FORMAT=log_format,
    )
    service = Service(workdir, env, args=["cancelling.py"])
    with connect(service) as sock:
        assert ask(sock, b"cancel now\n") == FAILED
        assert is_reply(ask(sock, b"after now\n"))
        assert ask(sock, b"cancel later\n") == FAILED
        assert is_reply(ask(sock, b"after later\n"))
        sock.sendall(b"cancel later\nin the same batch\ncancel now\n")
        stream = sock.makefile("rb")
        replies = [stream.readline() for _ in range(3)]
        assert [reply == FAILED for reply in replies] == [True, False, True]
    assert service.stop() == ExitCode.OK, service.log
    assert service.log.count("CancelledError: raised by handle") == 4, service.log
    assert service.log.count("Traceback") == 4, service.log
    if log_format == "json":
        assert len(service.records) == len(service.raw_lines), service.log
    assert journal_of(service) == [
        b"cancel now\n",
        b"after now\n",
        b"cancel later\n",
        b"after later\n",
        b"cancel later\n",
        b"in the same batch\n",
        b"cancel now\n",
    ]
    figure(
        "cancelled-error",
        "CancelledError raised by handle, at once or after an await: that request's error,"
        " the connection goes on, one traceback each, exit 0 at SIGTERM",
    )


@posix_only
def test_requests_that_suspend_get_their_own_replies_and_hold_up_no_one(workdir: Path) -> None:
    """A request whose handle suspends is finished in a task, which takes the server's driver
    along; the next requests, on every connection, are answered by a fresh one meanwhile."""
    service = swapped_service(workdir)
    with connect(service) as a, connect(service) as b, connect(service) as c:
        a.sendall(b"tag a1 wait\ntag a2\n")  # the second follows the first in its task
        c.sendall(b"tag c1 wait\n")
        assert ask(b, b"tag b1\n") == b"for tag b1\n"
        assert ask(b, b"tag b2 wait\n") == b"for tag b2 wait\n"
        with connect(service) as gone:
            gone.sendall(b"tag gone wait\n")  # leaves while its request waits
        assert ask(b, b"tag b3\n") == b"for tag b3\n"
        stream = a.makefile("rb")
        assert [stream.readline() for _ in range(2)] == [b"for tag a1 wait\n", b"for tag a2\n"]
        assert c.makefile("rb").readline() == b"for tag c1 wait\n"
    assert service.stop() == ExitCode.OK
    assert "Traceback" not in service.log, service.log


@posix_only
def test_recover_sees_every_journaled_request_before_the_service_listens(workdir: Path) -> None:
    first = swapped_service(workdir)
    assert "recover() saw 0 request(s)" in first.log
    answered = []
    with connect(first) as sock:
        for n in range(300):
            request = b"slow %d\n" % n if n % 50 == 0 else b"request %d\n" % n
            assert is_reply(ask(sock, request))
            answered.append(request)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # no drain, no flush
    assert_journaled(journal_of(first), [answered])
    second = swapped_service(workdir)
    assert "recover() saw 300 request(s)" in second.log
    assert second.log.index("recover() saw") < second.log.index("listening on")
    assert second.stop() == ExitCode.OK


def test_an_empty_recover_is_recognised() -> None:
    def empty(request: bytes) -> None:
        pass

    def ellipsis(request: bytes) -> None: ...

    def constant(request: bytes) -> None:
        """Documented, and returns a constant."""
        return None

    log: list[bytes] = []

    def working(request: bytes) -> None:
        log.append(request)

    assert all(map(does_nothing, (empty, ellipsis, constant)))
    assert not does_nothing(working)
    assert not does_nothing(print)  # a builtin has no bytecode: it counts as work


NO_REPLAY = textwrap.dedent(
    """
    import runpy, sys
    from app import protocol
    from servicekit import main as entry
    from servicekit.journal import Journal

    def replay(self):
        raise SystemExit("the journal was read")

    def recover(request):
        pass  # a protocol without state

    Journal.replay = replay
    protocol.recover = recover
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


def test_an_empty_recover_does_not_read_the_journal(workdir: Path) -> None:
    (workdir / "data").mkdir()
    journal = workdir / "data" / "journal.log"
    journal.write_bytes(JOURNAL_HEADER + journal_record(b"journaled before"))
    (workdir / "no_replay.py").write_text(NO_REPLAY)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="data/journal.log")
    service = Service(workdir, env, args=["no_replay.py"])
    assert is_reply(reply_to(service, b"more\n"))
    assert service.stop() == ExitCode.OK, service.log
    assert journal_requests(journal) == b"journaled before\nmore\n"


def test_a_name_with_several_addresses_is_one_port_on_each(start_service: StartService) -> None:
    service = start_service(APP_HOST="localhost")
    hosts = {
        info[4][0]
        for info in socket.getaddrinfo(
            "localhost", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    }
    ports = {int(service.wait_for(rf"listening on {re.escape(host)}:(\d+)")[1]) for host in hosts}
    assert len(ports) == 1, service.log
    assert service.log.count("listening on") == len(hosts), service.log
    for host in hosts:
        with socket.create_connection((host, service.port), timeout=HANG_GUARD) as sock:
            assert ask(sock, b"\n") == b"\n"


def test_port_0_on_ipv4_and_ipv6_binds_the_same_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``localhost`` resolves to where /etc/hosts names both 127.0.0.1 and ::1."""
    try:
        socket.socket(socket.AF_INET6).close()
        socket.getaddrinfo("::1", 0)
    except OSError:
        pytest.skip("no IPv6 here")

    async def both(*args: object, **kwargs: object) -> list[tuple]:
        v4 = socket.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM)
        v6 = socket.getaddrinfo("::1", 0, type=socket.SOCK_STREAM)
        return v6 + v4

    async def scenario() -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "getaddrinfo", both)
        server = Server(
            None,  # type: ignore[arg-type]
            max_connections=1,
            max_line_bytes=10,
            idle_timeout=1,
            line_timeout=1,
            handle=protocol.handle,
        )
        addresses = await server.listen("localhost", 0)
        await server.drain(0.1)
        return addresses

    addresses = asyncio.run(scenario())
    assert [host for host, _ in addresses] == ["::1", "127.0.0.1"]
    assert addresses[0][1] == addresses[1][1] != 0
