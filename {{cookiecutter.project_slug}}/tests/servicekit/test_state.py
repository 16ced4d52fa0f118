"""A protocol with state and several workers: never a wrong answer.

Each worker rebuilds its state from its own journal and answers from it, so a counter under
``APP_WORKERS=2`` would count each worker's share and answer with half the truth. The
service refuses such a start (exit status 2, one line that says what to do) unless the
setting ``APP_STATE_PER_WORKER`` says that state held by each worker on its own is meant.

The counter is a package of its own in the test's folder, started as ``python -m counter``,
so the supervisor's workers run it too (they run the module the supervisor was started as).
"""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import HANG_GUARD, Process, ask, service_env

from servicekit.exitcodes import ExitCode

reuse_port_only = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="workers share a port with SO_REUSEPORT"
)

COUNTER = textwrap.dedent(
    '''
    """INCR k -> the new count, GET k -> the count: state rebuilt from the journal."""

    counts: dict[bytes, int] = {}


    async def handle(request: bytes) -> bytes:
        command, _, key = request.partition(b" ")
        if command == b"INCR":
            counts[key] = counts.get(key, 0) + 1
        return b"%d" % counts.get(key, 0)


    def recover(request: bytes) -> None:
        command, _, key = request.partition(b" ")
        if command == b"INCR":
            counts[key] = counts.get(key, 0) + 1
    '''
)
ENTRY = "import sys\nfrom counter import protocol\nfrom servicekit.main import main\n"
ENTRY += "sys.exit(main(protocol))\n"
INCREMENTS = 20


@pytest.fixture
def counter(workdir: Path) -> Path:
    package = workdir / "counter"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "protocol.py").write_text(COUNTER)
    (package / "__main__.py").write_text(ENTRY)
    return workdir


def start_counter(folder: Path, **settings: str) -> Process:
    defaults = {
        "APP_HOST": "127.0.0.1",
        "APP_PORT": "0",
        "APP_JOURNAL_PATH": "data/journal.log",
        "APP_STATE_PER_WORKER": "0",  # service_env turns it on for the other tests
    }
    return Process([sys.executable, "-m", "counter"], folder, service_env(**defaults | settings))


def on_a_new_connection(address: tuple[str, int], command: bytes) -> bytes:
    """One command on a connection of its own, so the kernel spreads them over the workers."""
    with socket.create_connection(address, timeout=HANG_GUARD) as sock:
        return ask(sock, command)


@reuse_port_only
def test_a_counter_under_two_workers_never_answers_wrongly(counter: Path) -> None:
    """Seen failing before the check: 20 acknowledged INCRs, then GET answered 10."""
    process = start_counter(counter, APP_WORKERS="2")
    started = process.wait_for(r"listening on (\S+):(\d+)|error:")
    if started[1]:  # it serves: then every answer must count every INCR
        address = (started[1], int(started[2]))
        for _ in range(INCREMENTS):
            on_a_new_connection(address, b"INCR hits\n")
        answers = {on_a_new_connection(address, b"GET hits\n") for _ in range(INCREMENTS)}
        process.stop()
        assert answers == {b"%d\n" % INCREMENTS}, f"wrong counts: {sorted(answers)}"
    else:
        assert process.wait() == ExitCode.CONFIG, process.log


@reuse_port_only
def test_state_with_workers_is_refused_with_one_line_that_says_what_to_do(counter: Path) -> None:
    process = start_counter(counter, APP_WORKERS="2")
    assert process.wait() == ExitCode.CONFIG, process.log
    [line] = process.lines
    assert line.startswith("error: APP_WORKERS=2"), line
    for words in ("state", "recover", "APP_WORKERS=1", "APP_STATE_PER_WORKER=1"):
        assert words in line, line
    assert not (counter / "data").exists(), "something started before the refusal"


@reuse_port_only
def test_state_per_worker_is_a_choice_the_setting_states(counter: Path) -> None:
    """Chosen, it starts; each worker then counts what it was told, as documented."""
    process = start_counter(counter, APP_WORKERS="2", APP_STATE_PER_WORKER="1")
    started = process.wait_for(r"listening on (\S+):(\d+)")
    address = (started[1], int(started[2]))
    for _ in range(INCREMENTS):
        on_a_new_connection(address, b"INCR hits\n")
    answers = {int(on_a_new_connection(address, b"GET hits\n")) for _ in range(INCREMENTS)}
    assert process.stop() == ExitCode.OK, process.log
    assert max(answers) <= INCREMENTS, answers
    assert "error" not in process.log.lower(), process.log


@reuse_port_only
def test_a_protocol_without_state_needs_no_choice(counter: Path) -> None:
    """The echo's empty recover: workers share nothing, so nothing is refused."""
    (counter / "counter" / "protocol.py").write_text(
        "async def handle(request: bytes) -> bytes:\n    return request\n\n\n"
        "def recover(request: bytes) -> None:\n    pass\n"
    )
    process = start_counter(counter, APP_WORKERS="2")
    process.wait_for(r"listening on \S+:\d+")
    assert process.stop() == ExitCode.OK, process.log


@reuse_port_only
def test_state_only_in_the_process_is_refused_too_when_the_protocol_says_so(
    counter: Path,
) -> None:
    """A chat keeps its subscribers in the process and journals nothing to rebuild: its
    recover is empty, yet two workers would split the subscribers; KEEPS_STATE says so."""
    (counter / "counter" / "protocol.py").write_text(
        "KEEPS_STATE = True\n\n\nasync def handle(request: bytes) -> bytes:\n"
        "    return request\n\n\ndef recover(request: bytes) -> None:\n    pass\n"
    )
    process = start_counter(counter, APP_WORKERS="2")
    assert process.wait() == ExitCode.CONFIG, process.log
    [line] = process.lines
    assert "KEEPS_STATE" in line, line
