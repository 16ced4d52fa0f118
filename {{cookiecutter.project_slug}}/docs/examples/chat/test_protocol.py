"""What the chat answers and pushes, and what its setting does.

This file replaces ``tests/test_protocol.py`` when the example is swapped in; every other
test in ``tests/`` holds for it unchanged.
"""

from __future__ import annotations

import signal
import socket
import sys

import pytest
from conftest import HANG_GUARD, StartService, ask, connect, journal_lines, read_line

from app import protocol
from servicekit.exitcodes import ExitCode
from servicekit.service import has_state

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_a_message_reaches_the_other_subscribers_as_a_push(start_service: StartService) -> None:
    service = start_service()
    with connect(service) as alice, connect(service) as bob, connect(service) as carol:
        assert ask(alice, b"NICK alice\n") == b"OK\n"
        assert ask(alice, b"SUB room\n") == b"OK\n"
        assert ask(bob, b"NICK bob\n") == b"OK\n"
        assert ask(bob, b"SUB room\n") == b"OK\n"
        assert ask(carol, b"SUB elsewhere\n") == b"OK\n"
        assert ask(bob, b"PUB room hello there\n") == b"OK 1\n"
        assert read_line(alice) == b"MSG room bob: hello there\n"
        assert ask(bob, b"\n") == b"\n"  # a health ping: the sender was pushed nothing
        assert ask(carol, b"\n") == b"\n"  # nor was a subscriber of another topic
        assert ask(carol, b"PUB room from outside\n") == b"OK 2\n"
        assert read_line(alice) == b"MSG room guest-%s: from outside\n" % who_am_i(carol)
        assert read_line(bob).startswith(b"MSG room guest-")


def who_am_i(sock: socket.socket) -> bytes:
    """A guest's number, read from WHO on a topic of its own."""
    assert ask(sock, b"SUB only-me\n") == b"OK\n"
    reply = ask(sock, b"WHO only-me\n")
    assert ask(sock, b"UNSUB only-me\n") == b"OK\n"
    return reply.removeprefix(b"OK guest-").rstrip(b"\n")


def test_who_unsub_and_a_closed_subscriber_is_forgotten(start_service: StartService) -> None:
    service = start_service()
    with connect(service) as alice, connect(service) as bob:
        assert ask(alice, b"NICK alice\n") == b"OK\n"
        assert ask(alice, b"SUB room\n") == b"OK\n"
        with connect(service) as dave:
            assert ask(dave, b"NICK dave\n") == b"OK\n"
            assert ask(dave, b"SUB room\n") == b"OK\n"
            assert ask(alice, b"WHO room\n") == b"OK alice dave\n"
        for _ in range(int(HANG_GUARD * 100)):  # dave's close reaches the service
            if ask(alice, b"WHO room\n") == b"OK alice\n":
                break
        else:
            pytest.fail("a closed subscriber was never forgotten")
        assert ask(bob, b"PUB room hi\n") == b"OK 1\n"
        assert read_line(alice) == b"MSG room guest-%s: hi\n" % who_am_i(bob)
        assert ask(alice, b"UNSUB room\n") == b"OK\n"
        assert ask(bob, b"PUB room anyone\n") == b"OK 0\n"
        assert ask(alice, b"WHO room\n") == b"OK\n"
        assert ask(alice, b"SHOUT\n").startswith(b"error: expected NICK name")


def test_the_topics_of_one_connection_are_bounded_by_a_setting(
    start_service: StartService,
) -> None:
    service = start_service(APP_CHAT_MAX_TOPICS="2")
    with connect(service) as sock:
        assert ask(sock, b"SUB a\n") == b"OK\n"
        assert ask(sock, b"SUB b\n") == b"OK\n"
        assert ask(sock, b"SUB c\n") == b"error: at most 2 topics\n"
        assert ask(sock, b"SUB a\n") == b"OK\n"  # already one of its two
        assert ask(sock, b"UNSUB b\n") == b"OK\n"
        assert ask(sock, b"SUB c\n") == b"OK\n"


def test_a_bad_setting_of_its_own_is_one_line_and_status_2(run_app) -> None:
    result = run_app(APP_PORT="0", APP_CHAT_MAX_TOPICS="0")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr == "error: APP_CHAT_MAX_TOPICS='0': expected a number from 1 to 10000\n"


def test_what_concerns_only_the_connection_is_not_journaled(start_service: StartService) -> None:
    service = start_service()
    with connect(service) as sock:
        for request in (b"NICK zed", b"SUB t", b"WHO t", b"PUB t one", b"UNSUB t", b"PUB t two"):
            assert ask(sock, request + b"\n").startswith(b"OK")
        assert ask(sock, b"HELLO\n").startswith(b"error:")
    assert service.stop() == 0, service.log
    assert journal_lines(service.journal) == [b"PUB t one\n", b"PUB t two\n", b"HELLO\n"]


@posix_only
def test_every_message_someone_was_pushed_survives_a_kill_9(start_service: StartService) -> None:
    service = start_service()
    with connect(service) as listener, connect(service) as speaker:
        assert ask(listener, b"SUB news\n") == b"OK\n"
        for n in range(50):
            speaker.sendall(b"PUB news item %d\n" % n)  # pipelined: pushes race the journal
        pushed = [read_line(listener) for _ in range(50)]
        service.send(signal.SIGKILL)
        service.wait()
    speaker_nick = pushed[0].removeprefix(b"MSG news ").partition(b":")[0]
    assert pushed == [b"MSG news %s: item %d\n" % (speaker_nick, n) for n in range(50)]
    journal = journal_lines(service.journal)
    assert [b"PUB news item %d\n" % n for n in range(50)] == journal


def test_subscribers_are_state_that_workers_would_split() -> None:
    assert has_state(protocol)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")
def test_two_workers_are_refused_with_one_line(run_app) -> None:
    result = run_app(APP_PORT="0", APP_WORKERS="2", APP_STATE_PER_WORKER="0")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert "KEEPS_STATE" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
