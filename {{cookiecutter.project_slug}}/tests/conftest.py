"""Run the real service in a subprocess and synchronise on what it logs.

Shutdown behaviour can only be trusted when it is seen in a real process receiving a real
signal, so the service tests start ``python -m app`` and wait for log lines (never for a
fixed time) before they act.

Only ``tests/test_protocol.py`` knows what the service answers. Every other test holds for any
protocol that answers each request with one line, and checks one invariant: every request a
client got a reply for is in the journal, in the order the client sent it, exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+)")
SECOND_SIGNAL_GAP = 0.15
"""Seconds between two signals meant as two requests: past the runtime's 100 ms merge window."""
HANG_GUARD = 20.0
"""Seconds after which a wait is a failure, not a slow machine: far above any normal time."""
REFUSAL = b"\x15"
"""The first byte of every line the server sends instead of a reply (ASCII NAK), and of no
reply: what ``handle`` answers can never be mistaken for a refusal."""
SHUTTING_DOWN = REFUSAL + b"error: shutting down\n"
"""The last line of every connection the drain closes (and of one accepted during it): a
request that got no reply before it was refused, not lost."""
TOO_MANY = REFUSAL + b"error: too many connections\n"


SIGNAL_DEFAULTS = Path(__file__).resolve().parent / "signal_defaults"
"""Its sitecustomize.py gives each test child the SIGINT and SIGHUP of a process started from
a terminal, whatever the test run inherited (``nohup``, a background job)."""


def child_pythonpath(environ: Mapping[str, str] = os.environ) -> str:
    """``PYTHONPATH`` for a test child: the signal defaults, the project, then the caller's."""
    entries = [str(SIGNAL_DEFAULTS), str(PROJECT_ROOT), environ.get("PYTHONPATH")]
    return os.pathsep.join(filter(None, entries))


def skip_if_the_journal_rebuilds_state() -> None:
    """For the few inherited tests whose subject is the journal of a protocol whose
    ``recover`` does nothing (it is rotated, not compacted, and may move under the service).

    Called in the test, not at import: the template's own suite loads this file too, where
    there is no ``app`` to import.
    """
    from app import protocol
    from servicekit.service import does_nothing

    if not does_nothing(protocol.recover):
        pytest.skip(
            "about a journal nothing is rebuilt from; this project's recover rebuilds state"
            " from it (such a journal is tested by its own tests with a key-value store)"
        )


def service_env(**overrides: str) -> dict[str, str]:
    """The environment of a test child: ours minus every APP_ setting, plus the overrides."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("APP_")}
    env["APP_LOG_FORMAT"] = os.environ.get(LOG_FORMAT_VARIABLE, "text")
    # The tests run workers to test what holds for any protocol; with one that keeps state,
    # each worker holding its own is what they accept (tests/servicekit/test_state.py turns
    # it off to see the refusal).
    env["APP_STATE_PER_WORKER"] = "1"
    # The tests read the journal as the service wrote it; a protocol's snapshot() would rewrite
    # it at start. The tests of compaction set a bound of their own.
    env["APP_JOURNAL_MAX_BYTES"] = "0"
    env["PYTHONPATH"] = child_pythonpath()
    env.update(overrides)
    return env


@pytest.fixture
def signal_defaults() -> Iterator[None]:
    """SIGINT and SIGHUP as a process started from a terminal has them, for this test only.

    For tests that run the runtime in the test process and check what it restores; the run's
    own dispositions (ignored under ``nohup`` or in the background) come back afterwards.
    """
    names = ["SIGINT", "SIGHUP"] if hasattr(signal, "SIGHUP") else ["SIGINT"]
    kept = {name: signal.getsignal(getattr(signal, name)) for name in names}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "SIGHUP" in kept:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    for name, handler in kept.items():
        signal.signal(getattr(signal, name), handler)


LOG_FORMAT_VARIABLE = "TEST_LOG_FORMAT"
"""Set to ``json`` to run the service tests with APP_LOG_FORMAT=json (default: text)."""


def json_record(line: str) -> dict[str, Any] | None:
    """The record if ``line`` is a JSON log object (APP_LOG_FORMAT=json), else None."""
    # Not servicekit.logs.json_record: the template's own suite uses this file (Process,
    # LISTENING) without the generated packages on its path.
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "message" in record else None


def as_text(record: dict[str, Any]) -> str:
    """A JSON record as the text format writes it, so the same patterns match both.

    A worker's record relayed by the supervisor gets the ``[worker N]`` prefix of text mode;
    an exception is appended on the following lines, as the text format prints it.
    """
    text = f"{record.get('time')} {record.get('level')} {record.get('logger')}: "
    text += str(record["message"])
    if "exception" in record:
        text += "\n" + str(record["exception"])
    if "worker" in record:
        text = f"[worker {record['worker']}] {text}"
    return text


def log_as_text(stderr: str) -> str:
    """A whole stderr with its JSON records rendered as text (see as_text)."""
    lines = stderr.splitlines(keepends=True)
    return "".join(
        line if (record := json_record(line.rstrip("\n"))) is None else as_text(record) + "\n"
        for line in lines
    )


class Process:
    """A child process whose stderr is collected line by line in the background.

    ``popen`` overrides the defaults passed to :class:`subprocess.Popen` (the template's
    Wine tests start their processes with a terminal or a stdin pipe this way).
    """

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str], **popen: Any) -> None:
        flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
        options: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.DEVNULL,
            "creationflags": flags,
            **popen,
        }
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            **options,
        )
        self.last_signal = 0.0
        self.lines: list[str] = []
        """The log as text, whichever APP_LOG_FORMAT: JSON records are rendered as text
        lines (see as_text), so tests read one format."""
        self.raw_lines: list[str] = []
        """The log exactly as written."""
        self.records: list[dict[str, Any]] = []
        """The JSON records among the lines (APP_LOG_FORMAT=json), parsed."""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            line = raw.rstrip("\n")
            record = json_record(line)
            with self._changed:
                self.raw_lines.append(line)
                if record is not None:
                    self.records.append(record)
                self.lines.append(line if record is None else as_text(record))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = HANG_GUARD
    ) -> re.Match[str]:
        """Block until a log line matches; fail with the log if the process ends first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                finished = not self._reader.is_alive()
                remaining = deadline - time.monotonic()
                if finished or remaining <= 0:
                    state = "exited" if finished else "still running"
                    pytest.fail(f"no log line matching {regex.pattern!r} ({state}):\n{self.log}")
                self._changed.wait(remaining)

    def send(self, signum: int) -> None:
        self.last_signal = time.monotonic()
        self.popen.send_signal(signum)

    def send_again(self, signum: int) -> None:
        """Send a signal as a second request: the runtime merges a repeat of the same signal
        within 100 ms into the first (a process group or a wrapper delivers it twice), so the
        spacing from the last signal is what this call is about, not a wait for an event."""
        time.sleep(max(0.0, self.last_signal + SECOND_SIGNAL_GAP - time.monotonic()))
        self.send(signum)

    def wait(self, timeout: float = HANG_GUARD) -> int:
        """The exit status; kills the process and fails if it does not end in time."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"process still running after {timeout}s:\n{self.log}")
        self._reader.join(HANG_GUARD)
        return code

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.send(signum)
        return self.wait()


class Service(Process):
    """``python -m app`` started and ready: its address is parsed from ``listening on``."""

    def __init__(self, cwd: Path, env: dict[str, str], args: Sequence[str] = ("-m", "app")):
        super().__init__([sys.executable, *args], cwd, env)
        match = self.wait_for(LISTENING)
        self.host, self.port = match[1], int(match[2])
        self.journal = Path(cwd, env["APP_JOURNAL_PATH"])


StartService = Callable[..., Service]


def connect(service: Service) -> socket.socket:
    """A blocking client connection to the service, with the hang guard as its timeout."""
    return socket.create_connection((service.host, service.port), timeout=HANG_GUARD)


def ask(sock: socket.socket, line: bytes) -> bytes:
    """Send one line and read one reply line (or whatever arrives before EOF)."""
    sock.sendall(line)
    return read_line(sock)


def read_line(sock: socket.socket) -> bytes:
    """The next line the service sends, a reply or a push (or whatever arrives before EOF)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)  # byte by byte: never read into the next line
        if not chunk:
            break
        line += chunk
    return line


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the service still sends, up to its FIN; a reset raises ConnectionResetError."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def is_reply(reply: bytes) -> bool:
    """One line that is the service's answer: not a refusal by the server, not cut short."""
    return reply.endswith(b"\n") and reply.count(b"\n") == 1 and not reply.startswith(REFUSAL)


def assert_journaled(journal: Sequence[bytes], answered: Sequence[Sequence[bytes]]) -> None:
    """Every answered request is journaled once, each client's in the order it sent them.

    ``answered`` holds, per client, the requests (with their newline) that got a reply; a
    client's requests must be unique to it (e.g. numbered). The journal may hold more than
    was answered, as after a ``kill -9``, but nothing twice.
    """
    assert len(journal) == len(set(journal)), "a request was journaled twice"
    position = {line: n for n, line in enumerate(journal)}
    for requests in answered:
        missing = [request for request in requests if request not in position]
        assert not missing, f"answered but not journaled: {missing[:3]}"
        places = [position[request] for request in requests]
        assert places == sorted(places), "journaled out of order"


JOURNAL_HEADER = (
    b"# servicekit journal 2: each line is a request, a space, its CRC-32 in 8 hex digits\n"
)
"""The first line of a journal file with checksums, as the format says."""


def journal_record(request: bytes) -> bytes:
    """One journal line as the format says: the request, a space, its CRC-32 in 8 hex digits."""
    return b"%s %08x\n" % (request, zlib.crc32(request))


def journal_requests(path: Path) -> bytes:
    """A journal file's requests, each with a newline, as a client sent them.

    Written here from the format's description, not with the service's code: every record
    must carry a good checksum, and the header must come first.
    """
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b"", "a journal ends on a whole line"
    assert not lines or lines[0] + b"\n" == JOURNAL_HEADER, lines[:1]
    requests = []
    for line in lines[1:]:
        request, checksum = line[:-9], line[-9:] + b"\n"
        assert checksum == journal_record(request)[-10:], f"bad record {line[:80]!r}"
        requests.append(request + b"\n")
    return b"".join(requests)


def journal_lines(path: Path) -> list[bytes]:
    """A journal file's requests, each with its newline."""
    return [line + b"\n" for line in journal_requests(path).split(b"\n")[:-1]]


def journal_of(service: Service) -> list[bytes]:
    return journal_lines(service.journal)


def talk_through_sigterm(service: Service, clients: int) -> list[bytes]:
    """Clients ping-pong numbered lines; once each has had 10 replies, SIGTERM the service.

    They keep talking until the drain closes their connections, which must end the same
    way for each: replies, then one SHUTTING_DOWN line (the refusal of the request that
    got no reply), then a clean end of stream, never a reset. Returns every request that
    got a reply (with its newline), each client's in the order it sent them.
    """
    answered: list[bytes] = []

    async def talk(client: int, started: asyncio.Event, ready: list[int]) -> None:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        for n in range(100_000):
            request = b"client %d line %d\n" % (client, n)
            writer.write(request)
            reply = await reader.readuntil(b"\n")  # IncompleteReadError: ended unsaid
            if not is_reply(reply):
                assert reply == SHUTTING_DOWN, reply
                assert await reader.read() == b"", "more after the refusal"  # or a reset
                break
            answered.append(request)
            if n == 10:
                ready.append(client)
                if len(ready) == clients:
                    started.set()
        writer.close()

    async def scenario() -> None:
        started = asyncio.Event()
        ready: list[int] = []
        talkers = [asyncio.create_task(talk(c, started, ready)) for c in range(clients)]
        await asyncio.wait_for(started.wait(), HANG_GUARD)
        service.send(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*talkers), HANG_GUARD)

    asyncio.run(scenario())
    return answered


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for a module's many small examples (hypothesis), killed at the end."""
    folder = tmp_path_factory.mktemp("shared")
    env = service_env(APP_HOST="127.0.0.1", APP_PORT="0", APP_JOURNAL_PATH="journal.log")
    service = Service(folder, env)
    yield service
    service.popen.kill()
    service.popen.wait()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh working folder per test: its own .env, data/ and journal."""
    folder = tmp_path / "service"
    folder.mkdir()
    return folder


@pytest.fixture
def start_service(workdir: Path) -> Iterator[StartService]:
    """Start services on ephemeral ports; any left running at the end are killed."""
    started: list[Service] = []

    def start(*args: str, **settings: str) -> Service:
        defaults = {
            "APP_HOST": "127.0.0.1",
            "APP_PORT": "0",
            "APP_JOURNAL_PATH": "data/journal.log",
        }
        env = service_env(**{**defaults, **settings})
        service = Service(workdir, env, args or ("-m", "app"))
        started.append(service)
        return service

    yield start
    for service in started:
        if service.popen.poll() is None:
            service.popen.kill()
            service.popen.wait()


@pytest.fixture
def run_app(workdir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m app`` (or a module given as ``module=``) to completion."""

    def run(*args: str, module: str = "app", **settings: str) -> subprocess.CompletedProcess[str]:
        defaults = {"APP_HOST": "127.0.0.1", "APP_JOURNAL_PATH": "data/journal.log"}
        env = service_env(**{**defaults, **settings})
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            check=False,
        )
        result.stderr = log_as_text(result.stderr)  # JSON records read as text lines
        return result

    return run


QUICK_FILES = ("test_protocol.py",)
"""Files whose every test is in the quick run (``pytest -m quick``): yours. The inherited tests
in it carry ``@pytest.mark.quick``: one or two per guarantee, chosen to take seconds."""


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in QUICK_FILES:
            item.add_marker(pytest.mark.quick)


BOTH_LOG_FORMATS = ("test_reliability",)
"""Test modules run once with APP_LOG_FORMAT=text and once with json: what the log says
must not change what the service does, and the tests must read either."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ in BOTH_LOG_FORMATS and "log_format" in metafunc.fixturenames:
        metafunc.parametrize("log_format", ["text", "json"], indirect=True)


@pytest.fixture(autouse=True)
def log_format(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The APP_LOG_FORMAT of the services this test starts (through service_env)."""
    chosen = str(getattr(request, "param", "") or os.environ.get(LOG_FORMAT_VARIABLE, "text"))
    monkeypatch.setenv(LOG_FORMAT_VARIABLE, chosen)
    return chosen


@pytest.fixture
def figure(log_format: str) -> Callable[[str, str], None]:
    """Record one figure for the README's reliability table, if RELIABILITY_FIGURES is set.

    Only from the text-format run, so a test run in both formats records its figure once.
    """

    def record(key: str, text: str) -> None:
        path = os.environ.get("RELIABILITY_FIGURES")
        if path and log_format == "text":
            with open(path, "a", encoding="utf-8") as figures:
                figures.write(json.dumps({"key": key, "text": text}) + "\n")

    return record
