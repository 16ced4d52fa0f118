"""What the service answers: the echo of ``app/protocol.py``.

This is the one test file about the protocol. Replace it together with ``app/protocol.py``;
every other test holds for any protocol that answers each request with one line.
"""

from __future__ import annotations

import asyncio

from conftest import Service, StartService, ask, connect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import protocol
from servicekit.service import does_nothing


def test_handle_echoes_and_recover_keeps_nothing() -> None:
    assert asyncio.run(protocol.handle(b"hello")) == b"hello"
    assert protocol.recover(b"hello") is None


def test_the_echo_keeps_no_state_so_the_journal_is_not_replayed() -> None:
    assert does_nothing(protocol.recover)


def test_client_prints_each_echo(start_service: StartService, run_app) -> None:
    service = start_service()
    result = run_app("--port", str(service.port), "hello", "wörld", module="servicekit.client")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello", "wörld"]


def test_longest_line_is_echoed(start_service: StartService) -> None:
    service = start_service(APP_MAX_LINE_BYTES="1024")
    longest = b"z" * 1023 + b"\n"  # the limit counts the newline
    with connect(service) as sock:
        assert ask(sock, longest) == longest


def test_pipelined_lines_are_echoed_in_order(start_service: StartService) -> None:
    service = start_service()
    lines = [b"line %d\n" % n for n in range(1000)]
    with connect(service) as sock:
        sock.sendall(b"".join(lines))
        stream = sock.makefile("rb")
        assert [stream.readline() for _ in lines] == lines


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000).map(lambda b: b.replace(b"\n", b"").removeprefix(b"\x15")))
def test_any_bytes_are_echoed_verbatim(shared_service: Service, payload: bytes) -> None:
    """Any line, except one starting with the byte that marks the server's refusals (NAK)."""
    with connect(shared_service) as sock:
        sock.sendall(payload + b"\n")
        assert sock.makefile("rb").readline() == payload + b"\n"
