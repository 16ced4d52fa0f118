"""Hostile and careless input to the command-line tools, the ``.env`` file and the log.

Each test is a way a real user (or a real environment) gets it wrong; the answer must be
one clear line and a documented exit status, never a traceback and never a secret.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD, StartService, ask, connect, is_reply, service_env

from servicekit.exitcodes import ExitCode
from servicekit.logs import JsonFormatter

FAKE_SECRET = "hunter2S3cr3t"
"""A stand-in password: it must never show up in anything the service prints."""


def test_a_bare_word_in_env_is_refused_without_echoing_it(run_app, workdir: Path) -> None:
    """A password pasted on a line of its own (no ``=``) must not be printed back."""
    (workdir / ".env").write_text(f"APP_PORT=1234\n{FAKE_SECRET}\n")
    result = run_app()
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.splitlines() == ["error: .env line 2: not KEY=VALUE"]
    assert FAKE_SECRET not in result.stderr


def test_a_setting_without_a_value_is_named(run_app, workdir: Path) -> None:
    """``APP_PORT`` alone is one of ours: naming it helps and gives nothing away."""
    (workdir / ".env").write_text("APP_PORT\n")
    result = run_app()
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.splitlines() == ["error: .env line 1: APP_PORT has no value (KEY=VALUE)"]


@pytest.mark.parametrize(
    "args",
    [
        ("--port", "70000"),  # would wrap around to port 4464 and probe that
        ("--port", "-1"),
        ("--port", "0"),
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--timeout", "0"),
        ("--host", "a" * 70 + ".example"),  # a DNS label over 63 characters
    ],
)
def test_health_probe_refuses_bad_arguments_in_one_line(run_app, args: tuple[str, ...]) -> None:
    result = run_app(*args, module="servicekit.health")
    assert result.returncode == 1  # never 2, which Docker reserves
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: argument --") or "does not answer" in result.stderr


def test_health_probe_with_an_out_of_range_app_port(run_app) -> None:
    """The probe reads APP_PORT as the service does: 70000 is refused, not probed as 4464."""
    result = run_app(module="servicekit.health", APP_PORT="70000")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: APP_PORT='70000' is not a port (1-65535)"]


HOSTILE_TEXT = [
    "caf\xe9 \u2603 \U0001f600",  # beyond ASCII, beyond the BMP
    "bad byte \udcff from a file name",  # what os.fsdecode makes of undecodable bytes
    'quote " backslash \\ newline \n tab \t nul \0 end',
]


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "cp1252"])
def test_json_log_lines_stay_json_whatever_stderr_encodes(encoding: str) -> None:
    """On Windows a redirected stderr is cp1252; with PYTHONIOENCODING it can be anything.

    Python writes what the encoding cannot hold as ``\\xe9`` or ``\\U0001f600``, which are
    not JSON escapes: the line would no longer parse. ASCII-only JSON survives any encoding.
    """
    formatter = JsonFormatter()
    for text in HOSTILE_TEXT:
        try:
            raise ValueError(text)
        except ValueError:
            record = logging.LogRecord("app", logging.ERROR, __file__, 1, "%s", (text,), None)
            record.exc_info = sys.exc_info()
        record.path = text  # an extra= field
        line = formatter.format(record)
        assert "\n" not in line
        written = line.encode(encoding, "backslashreplace").decode(encoding)
        parsed = json.loads(written)
        assert parsed["message"] == text
        assert parsed["path"] == text
        assert text in parsed["exception"]


@pytest.mark.skipif(sys.platform != "linux", reason="AF_UNIX datagrams: Linux")
def test_an_unusable_notify_socket_is_reported_once(
    start_service: StartService, tmp_path: Path
) -> None:
    """NOTIFY_SOCKET set to something that is not a socket (a stale or mistyped path): one
    warning, not one per message, which with WatchdogSec= would be one every few seconds."""
    not_a_socket = tmp_path / "notify"
    not_a_socket.write_text("")
    service = start_service(NOTIFY_SOCKET=str(not_a_socket))
    assert service.stop(signal.SIGTERM) == ExitCode.OK  # READY, STOPPING and two STATUS fail
    warnings = [line for line in service.lines if "cannot notify systemd" in line]
    assert len(warnings) == 1, service.log


@pytest.mark.skipif(sys.platform != "linux", reason="AF_UNIX datagrams: Linux")
@pytest.mark.parametrize("address", ["@", "@no-such-abstract-socket", "relative/missing"])
def test_hostile_notify_socket_values_do_not_stop_the_service(
    start_service: StartService, address: str
) -> None:
    service = start_service(NOTIFY_SOCKET=address, WATCHDOG_USEC="garbage")
    with connect(service) as sock:
        assert is_reply(ask(sock, b"ping\n"))
    assert service.stop() == ExitCode.OK
    assert "Traceback" not in service.log


def fill_queue(address: str) -> list[socket.socket]:
    """Fill the receive queue of the datagram socket at ``address``: the sockets returned
    hold the datagrams; a fresh socket's first send then finds the queue full."""
    fillers: list[socket.socket] = []
    while True:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.setblocking(False)
        fillers.append(filler)
        sent = 0
        try:
            while True:
                filler.sendto(b"x", address)
                sent += 1
        except BlockingIOError:
            if sent == 0:
                return fillers


@pytest.mark.skipif(sys.platform != "linux", reason="AF_UNIX datagrams: Linux")
def test_a_notify_socket_nobody_reads_does_not_wedge_the_loop(
    start_service: StartService, tmp_path: Path
) -> None:
    """NOTIFY_SOCKET pointing at a socket whose owner never reads (or a systemd too busy to):
    once its queue is full a blocking send waits forever, inside the event loop, and the
    service no longer answers anyone, not even SIGTERM."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:
        address = str(tmp_path / "notify.sock")
        deaf.bind(address)
        fillers = fill_queue(address)
        try:
            service = start_service(NOTIFY_SOCKET=address)
            with connect(service) as sock:
                assert is_reply(ask(sock, b"still here\n"))
            assert service.stop() == ExitCode.OK, service.log
        finally:
            for filler in fillers:
                filler.close()
    assert "cannot notify systemd" in service.log


def test_warnings_in_a_json_log_are_json_records_too(workdir: Path) -> None:
    """Python prints a warning (a coroutine never awaited, a deprecation) straight to stderr
    on two or more lines; in a JSON log each of them would be a line no pipeline can parse."""
    script = (
        "import warnings\n"
        "from servicekit import logs\n"
        "logs.configure('INFO', 'json')\n"
        "warnings.warn('first line\\nsecond line', RuntimeWarning)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert len(records) == 1, result.stderr
    assert records[0]["level"] == "WARNING"
    assert "RuntimeWarning: first line\nsecond line" in records[0]["message"]


@pytest.mark.parametrize("path", [".", "/", "..", "data/"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_journal_path_that_names_a_folder_is_a_bad_setting(
    run_app, path: str, workers: str
) -> None:
    """APP_JOURNAL_PATH=. (meaning "here") crashed the supervisor with a traceback, which
    derives ``journal.worker-N.log`` and ``journal.log.lock`` from the file's name."""
    result = run_app(APP_JOURNAL_PATH=path, APP_WORKERS=workers, APP_PORT="0")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr.splitlines() == [
        f"error: APP_JOURNAL_PATH={path!r}: expected a file path, not a folder"
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [(("--help", "--port=9000"), "'--port' (its value not shown)"), (("-h", "--help"), "'--help'")],
)
def test_an_extra_argument_after_help_is_the_one_named(
    run_app, args: tuple[str, ...], named: str
) -> None:
    result = run_app(*args)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.startswith(f"error: unknown argument {named}: "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
