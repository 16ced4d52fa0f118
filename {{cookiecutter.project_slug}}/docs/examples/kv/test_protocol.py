"""What the key-value store answers, and what its journal holds.

This file replaces ``tests/test_protocol.py`` when the example is swapped in; every other
test in ``tests/`` holds for it unchanged.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from conftest import StartService, ask, connect, journal_lines

from app import protocol

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
USAGE = b"error: expected SET key value, GET key or DEL key\n"


def test_set_get_and_del_answer(start_service: StartService) -> None:
    service = start_service()
    with connect(service) as sock:
        assert ask(sock, b"GET a\n") == b"nil\n"
        assert ask(sock, b"SET a first value\n") == b"OK\n"
        assert ask(sock, b"SET b \xff\x00 two  spaces\n") == b"OK\n"
        assert ask(sock, b"GET a\n") == b"first value\n"
        assert ask(sock, b"GET b\n") == b"\xff\x00 two  spaces\n"
        assert ask(sock, b"SET a second\n") == b"OK\n"
        assert ask(sock, b"GET a\n") == b"second\n"
        assert ask(sock, b"DEL a\n") == b"1\n"
        assert ask(sock, b"DEL a\n") == b"0\n"
        assert ask(sock, b"GET a\n") == b"nil\n"
        assert ask(sock, b"SET a\n") == b"error: expected SET key value\n"
        assert ask(sock, b"SET a \x15v\n") == b"error: a value must not start with byte 0x15\n"
        assert ask(sock, b"GET\n") == USAGE
        assert ask(sock, b"DEL\n") == USAGE
        assert ask(sock, b"hello\n") == USAGE


def test_recovering_the_snapshot_rebuilds_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "store", {})
    exchanges = [
        (b"SET a 1", b"OK"),
        (b"SET b two words", b"OK"),
        (b"SET c \xff\x00", b"OK"),
        (b"SET a 3", b"OK"),
        (b"SET e ", b"OK"),  # an empty value
        (b"SET d", b"error: expected SET key value"),
        (b"DEL b", b"1"),
        (b"DEL x", b"0"),
    ]

    async def send_all() -> None:
        for request, reply in exchanges:
            assert await protocol.handle(request) == reply

    asyncio.run(send_all())
    expected = {b"a": b"3", b"c": b"\xff\x00", b"e": b""}
    assert protocol.store == expected
    records = list(protocol.snapshot())
    assert len(records) == len(expected)  # one SET per key, not one per request
    monkeypatch.setattr(protocol, "store", {})
    for record in records:
        protocol.recover(record)
    assert protocol.store == expected


def test_only_gets_skip_the_journal() -> None:
    assert not protocol.needs_journal(b"GET a")
    assert protocol.needs_journal(b"SET a 1")
    assert protocol.needs_journal(b"DEL a")


def test_gets_write_nothing_to_the_journal(start_service: StartService) -> None:
    service = start_service()
    with connect(service) as sock:
        assert ask(sock, b"SET k v\n") == b"OK\n"  # the reply comes once it is written
        size = service.journal.stat().st_size
        sock.sendall(b"GET k\n" * 1000)
        stream = sock.makefile("rb")
        assert [stream.readline() for _ in range(1000)] == [b"v\n"] * 1000
        assert service.journal.stat().st_size == size
        assert ask(sock, b"SET k w\n") == b"OK\n"
        assert service.journal.stat().st_size > size  # the size does show a write
    assert journal_lines(service.journal) == [b"SET k v\n", b"SET k w\n"]


@posix_only
def test_an_acknowledged_set_survives_kill_9(start_service: StartService) -> None:
    first = start_service()
    with connect(first) as sock:
        assert ask(sock, b"SET kept yes\n") == b"OK\n"
        assert ask(sock, b"SET gone soon\n") == b"OK\n"
        assert ask(sock, b"DEL gone\n") == b"1\n"
        assert ask(sock, b"SET kept yes, still\n") == b"OK\n"
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = start_service()
    with connect(second) as sock:
        assert ask(sock, b"GET kept\n") == b"yes, still\n"
        assert ask(sock, b"GET gone\n") == b"nil\n"
    assert second.stop() == 0, second.log


@posix_only
def test_the_journal_is_compacted_to_one_set_per_key(start_service: StartService) -> None:
    """2,000 SETs of one key (about 60 KB of requests) through a 4 KiB bound."""
    limit = 4096
    service = start_service(APP_JOURNAL_MAX_BYTES=str(limit))
    largest = 0
    with connect(service) as sock:
        for n in range(2000):
            assert ask(sock, b"SET counter value %d\n" % n) == b"OK\n"
            largest = max(largest, service.journal.stat().st_size)
    assert service.stop() == 0, service.log
    # The bound, plus the few requests written before the compaction that passing it wakes:
    # without compaction the file would grow past 60 KB.
    assert largest < limit + 1024, f"the journal reached {largest} bytes"
    assert service.log.count("compacted") >= 10, service.log
    again = start_service(APP_JOURNAL_MAX_BYTES=str(limit))
    with connect(again) as sock:
        assert ask(sock, b"GET counter\n") == b"value 1999\n"
    assert again.stop() == 0, again.log
    assert journal_lines(again.journal) == [b"SET counter value 1999\n"]
