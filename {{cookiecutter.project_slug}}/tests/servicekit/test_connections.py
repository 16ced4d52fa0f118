"""The connection a request came on, and lines pushed to it, in real processes.

A small pub/sub service written as a user would (``python -m pushy``, a package in the
test's folder) uses ``servicekit.connection``: ``current()`` in ``handle`` (also after an
``await``), per-connection ``data``, ``push()`` to other clients and ``on_close()``. The
tests hold the server to what ``servicekit/connection.py`` promises: pushes wait for the
journal like replies, never disturb a batch's replies, and a subscriber that does not read
is bounded and told why.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    REFUSAL,
    Service,
    StartService,
    ask,
    connect,
    journal_lines,
    read_line,
    read_to_end,
)

from servicekit.connection import PUSH_LIMIT, current

PROTOCOL = textwrap.dedent(
    '''
    """SUB topic, PUB topic text (pushes MSG topic text), WHO, KEEP x, KEPT, SLOW-WHO."""

    import asyncio
    import logging

    from servicekit.connection import Connection, current

    log = logging.getLogger("pushy")
    topics: dict[bytes, set[Connection]] = {}
    go = asyncio.Event()


    def fail_cancelled(connection: Connection) -> None:
        raise asyncio.CancelledError


    def unsubscribe(connection: Connection) -> None:
        for members in topics.values():
            members.discard(connection)
        log.info("connection %d unsubscribed", connection.id)


    async def handle(request: bytes) -> bytes:
        command, _, rest = request.partition(b" ")
        connection = current()
        if command == b"SUB":
            if not connection.data:
                connection.data["subscribed"] = True
                connection.on_close(unsubscribe)
            topics.setdefault(rest, set()).add(connection)
            return b"OK"
        if command == b"PUB":
            topic, _, text = rest.partition(b" ")
            members = topics.get(topic, set())
            log.info("publishing to %d", len(members))
            delivered = sum(member.push(b"MSG " + text) for member in list(members))
            return b"%d" % delivered
        if command == b"WHO":
            return f"{connection.id} {connection.peer}".encode()
        if command == b"SLOW-WHO":
            await asyncio.sleep(0.01)
            await asyncio.create_task(asyncio.sleep(0))
            return f"{current().id} {current().peer}".encode()
        if command == b"KEEP":
            connection.data["kept"] = rest
            return b"OK"
        if command == b"KEPT":
            return connection.data.get("kept", b"nothing")
        if command == b"WAIT":  # suspends until GO: its batch stays in progress
            log.info("waiting for GO")
            await go.wait()
            go.clear()
            return b"WAITED"
        if command == b"GO":
            go.set()
            return b"OK"
        if command == b"BAD-PUSH":
            connection.push(b"two\\nlines")
        if command == b"EMPTY-PUSH":
            connection.push(b"")
        if command == b"FRAGILE":  # its on_close fails as a cancelled task's result would
            connection.on_close(fail_cancelled)
            connection.on_close(lambda gone: log.info("closed %d as %d", gone.id, current().id))
            return b"OK"
        return b"?"


    def recover(request: bytes) -> None:
        pass
    '''
)
ENTRY = textwrap.dedent(
    """
    import sys

    from pushy import protocol
    from servicekit.main import main

    sys.exit(main(protocol))
    """
)


@pytest.fixture
def start_pushy(workdir: Path, start_service: StartService) -> StartService:
    package = workdir / "pushy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "protocol.py").write_text(PROTOCOL)
    (package / "__main__.py").write_text(ENTRY)

    def start(**settings: str) -> Service:
        return start_service("-m", "pushy", **settings)

    return start


def test_each_connection_is_its_own_also_after_an_await(start_pushy: StartService) -> None:
    service = start_pushy()
    with connect(service) as first, connect(service) as second:
        who_first = ask(first, b"WHO\n").split()
        who_second = ask(second, b"WHO\n").split()
        assert who_first[0] != who_second[0]
        assert who_first[1].decode() == "{}:{}".format(*first.getsockname())
        assert who_second[1].decode() == "{}:{}".format(*second.getsockname())
        assert ask(first, b"SLOW-WHO\n").split() == who_first  # in a task, after awaits
        assert ask(first, b"KEEP apple\n") == b"OK\n"
        assert ask(second, b"KEEP pear\n") == b"OK\n"
        assert ask(first, b"KEPT\n") == b"apple\n"
        assert ask(second, b"KEPT\n") == b"pear\n"
        # a pipelined batch: each request sees its own connection whatever came before it
        first.sendall(b"SLOW-WHO\nWHO\nKEPT\n")
        assert [read_line(first) for _ in range(3)] == [
            b" ".join(who_first) + b"\n",
            b" ".join(who_first) + b"\n",
            b"apple\n",
        ]


def test_current_outside_handle_says_so() -> None:
    with pytest.raises(LookupError, match="outside handle"):
        current()


def test_a_push_reaches_the_subscriber_and_only_the_request_is_journaled(
    start_pushy: StartService,
) -> None:
    service = start_pushy()
    with connect(service) as subscriber, connect(service) as publisher:
        assert ask(subscriber, b"SUB news\n") == b"OK\n"
        for n in range(20):
            assert ask(publisher, b"PUB news item-%d\n" % n) == b"1\n"
            assert read_line(subscriber) == b"MSG item-%d\n" % n
        assert ask(publisher, b"PUB sport goal\n") == b"0\n"
    journal = journal_lines(service.journal)
    published = [b"PUB news item-%d\n" % n for n in range(20)]
    assert journal == [b"SUB news\n", *published, b"PUB sport goal\n"]


@pytest.mark.skipif(sys.platform != "linux", reason="a FIFO as the journal")
def test_a_push_waits_for_the_journal_to_hold_what_caused_it(
    start_pushy: StartService, workdir: Path
) -> None:
    """The journal is a FIFO the test fills: the PUB cannot be written, so its push must not
    go out (a health ping sent after it is answered first); once the FIFO is read, it does."""
    fifo = workdir / "journal.fifo"
    os.mkfifo(fifo)
    journal_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    service = start_pushy(APP_JOURNAL_PATH=str(fifo))
    with connect(service) as subscriber, connect(service) as publisher:
        assert ask(subscriber, b"SUB news\n") == b"OK\n"
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(filler, b"f" * 65536)  # until the pipe is full: the journal waits
        publisher.sendall(b"PUB news stuck\n")
        service.wait_for("publishing to 1")
        assert ask(subscriber, b"\n") == b"\n"  # the ping's reply, not the push
        journaled = b""
        while b"PUB news stuck" not in journaled:
            select.select([journal_end], [], [], HANG_GUARD)
            journaled += os.read(journal_end, 1 << 20)
        assert read_line(subscriber) == b"MSG stuck\n"
        assert read_line(publisher) == b"1\n"
    os.close(filler)
    os.close(journal_end)


def test_pushes_during_a_batch_leave_its_replies_whole_and_in_order(
    start_pushy: StartService,
) -> None:
    service = start_pushy()
    lines = 3000
    with connect(service) as busy, connect(service) as publisher:
        assert ask(busy, b"SUB chatter\n") == b"OK\n"
        received = bytearray()

        def read_all() -> None:
            while received.count(b"\n") < 2 * lines:
                chunk = busy.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)

        reader = threading.Thread(target=read_all)
        reader.start()
        sender = threading.Thread(
            target=busy.sendall, args=(b"".join(b"KEEP %d\n" % n for n in range(lines)),)
        )
        sender.start()
        for n in range(lines):
            publisher.sendall(b"PUB chatter m%d\n" % n)
        answers = [read_line(publisher) for _ in range(lines)]
        sender.join()
        reader.join(30)
        assert not reader.is_alive()
    assert answers == [b"1\n"] * lines
    got = bytes(received).split(b"\n")[:-1]
    assert [line for line in got if not line.startswith(b"MSG")] == [b"OK"] * lines
    assert [line for line in got if line.startswith(b"MSG")] == [
        b"MSG m%d" % n for n in range(lines)
    ]


def test_pushes_to_a_connection_whose_handle_is_suspended_wait_for_its_reply(
    start_pushy: StartService,
) -> None:
    """The subscriber's batch is in progress (its WAIT is suspended) and it does not read,
    while more is pushed to it than the 64 KiB after which a connection stops reading: those
    pushes wait for its reply, which must still be sent, then go out behind it."""
    service = start_pushy()
    text = b"y" * 1000
    count = 150  # 150 KB: past the 64 KiB mark, below the 256 KiB limit
    with socket.socket() as slow, connect(service) as publisher:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
        slow.settimeout(HANG_GUARD)
        slow.connect((service.host, service.port))
        assert ask(slow, b"SUB t\n") == b"OK\n"
        slow.sendall(b"WAIT\n")
        service.wait_for("waiting for GO")
        for _ in range(count):
            assert ask(publisher, b"PUB t " + text + b"\n") == b"1\n"
        assert ask(publisher, b"GO\n") == b"OK\n"
        lines = [read_line(slow) for _ in range(count + 1)]
    assert lines[0] == b"WAITED\n"
    assert lines[1:] == [b"MSG " + text + b"\n"] * count


def test_a_subscriber_that_does_not_read_is_bounded_and_told(start_pushy: StartService) -> None:
    service = start_pushy()
    text = b"x" * 1000
    with connect(service) as idle, connect(service) as publisher:
        assert ask(idle, b"SUB flood\n") == b"OK\n"
        sent = 0
        while ask(publisher, b"PUB flood " + text + b"\n") == b"1\n":
            sent += 1
            assert sent < 100_000, "the subscriber that does not read was never dropped"
        received = read_to_end(idle)  # at once: one that does not read is aborted after 2 s
        service.wait_for(r"connection \d+ unsubscribed")
        assert ask(publisher, b"PUB flood " + text + b"\n") == b"0\n"
    assert received.endswith(REFUSAL + b"error: too many unread pushes\n")
    pushes = received.count(b"\n") - 1
    assert pushes <= sent
    # what waited in the service was bounded: the rest was in the kernel's socket buffers
    assert (sent - pushes) * len(b"MSG " + text + b"\n") <= PUSH_LIMIT


def test_a_bad_push_fails_only_its_request(start_pushy: StartService) -> None:
    service = start_pushy()
    with connect(service) as sock:
        assert ask(sock, b"BAD-PUSH\n") == b"error: internal error\n"
        assert ask(sock, b"EMPTY-PUSH\n") == b"error: internal error\n"  # a ping's reply
        assert ask(sock, b"KEEP still\n") == b"OK\n"
    service.wait_for("a push must be one non-empty line")


def test_an_on_close_that_raises_cancelled_error_concerns_only_its_connection(
    start_pushy: StartService,
) -> None:
    """Seen failing: a CancelledError from an on_close callback reached the loop's handler
    and stopped the service; the callbacks after it never ran."""
    service = start_pushy()
    with connect(service) as bystander:
        with connect(service) as fragile:
            assert ask(fragile, b"FRAGILE\n") == b"OK\n"
            number = int(ask(fragile, b"WHO\n").split()[0])
        service.wait_for(f"closed {number} as {number}")  # the next callback ran, current() too
        assert "an on_close callback" in service.log
        assert ask(bystander, b"KEEP on\n") == b"OK\n"
    assert service.stop() == 0, service.log


def test_a_client_that_only_listens_is_not_idle_while_pushes_reach_it(
    start_pushy: StartService,
) -> None:
    """Seen failing: a subscriber that read every push was closed as idle, without a word."""
    service = start_pushy(APP_IDLE_TIMEOUT="1")
    with connect(service) as listener:
        assert ask(listener, b"SUB ticks\n") == b"OK\n"
        began = time.monotonic()
        n = 0
        while time.monotonic() - began < 3:  # three idle timeouts of only listening
            with connect(service) as publisher:  # a new one each time: it idles out too
                assert ask(publisher, b"PUB ticks %d\n" % n) == b"1\n"
            assert read_line(listener) == b"MSG %d\n" % n
            n += 1
            time.sleep(0.25)  # the pace of the messages, not a wait for anything
        listener.sendall(b"\n")
        assert read_line(listener) == b"\n"  # still served
