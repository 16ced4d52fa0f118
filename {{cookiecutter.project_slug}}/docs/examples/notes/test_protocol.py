"""What the notes service answers, and what its lifespan and settings do.

This file replaces ``tests/test_protocol.py`` when the example is swapped in; every other
test in ``tests/`` holds for it unchanged.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
from conftest import StartService, ask, connect

from app import protocol
from app.lifespan import open_database
from app.settings import Settings
from servicekit.service import does_nothing

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_notes_are_put_got_and_counted(start_service: StartService) -> None:
    service = start_service()
    with connect(service) as sock:
        assert ask(sock, b"GET a\n") == b"nil\n"
        assert ask(sock, b"PUT a first note\n") == b"OK\n"
        assert ask(sock, b"PUT b \xff\x00 bytes\n") == b"OK\n"
        assert ask(sock, b"GET a\n") == b"first note\n"
        assert ask(sock, b"GET b\n") == b"\xff\x00 bytes\n"
        assert ask(sock, b"COUNT\n") == b"2\n"
        assert ask(sock, b"hello\n") == b"error: expected PUT key text, GET key or COUNT\n"


def test_the_notes_live_in_the_database_not_in_the_process() -> None:
    assert does_nothing(protocol.recover)


@posix_only
def test_the_lifespan_records_its_last_report_before_the_database_closes(
    start_service: StartService,
) -> None:
    service = start_service(APP_NOTES_DATABASE="notes.sqlite3")
    with connect(service) as sock:
        assert ask(sock, b"PUT k v\n") == b"OK\n"
    assert service.stop(signal.SIGTERM) == 0, service.log
    lines = service.lines
    recorded = next(n for n, line in enumerate(lines) if "last report recorded: 1" in line)
    closed = next(n for n, line in enumerate(lines) if "database closed" in line)
    flushed = next(n for n, line in enumerate(lines) if "journal flushed" in line)
    assert recorded < closed < flushed, service.log
    database = sqlite3.connect(service.journal.parent.parent / "notes.sqlite3")
    assert database.execute("SELECT served FROM reports").fetchall() == [(1,)]
    database.close()


@posix_only
def test_a_restarted_service_still_has_its_notes(start_service: StartService) -> None:
    first = start_service()
    with connect(first) as sock:
        assert ask(sock, b"PUT kept yes\n") == b"OK\n"
    first.stop(signal.SIGKILL)
    second = start_service()
    with connect(second) as sock:
        assert ask(sock, b"GET kept\n") == b"yes\n"
    assert second.stop() == 0, second.log


def test_workers_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching to WAL takes a lock SQLite does not wait for: two workers starting together
    used to fail one of them with 'database is locked'."""
    failures: list[BaseException] = []
    for attempt in range(50):
        settings = Settings(notes_database=tmp_path / f"race-{attempt}.sqlite3")
        start = threading.Barrier(6)

        def open_together(settings: Settings = settings, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                open_database(settings).close()
            except sqlite3.Error as error:
                failures.append(error)

        threads = [threading.Thread(target=open_together) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")
def test_workers_share_the_notes_through_the_database(start_service: StartService) -> None:
    """State in a database, not in the process: any worker answers what another was told."""
    service = start_service(APP_WORKERS="2", APP_STATE_PER_WORKER="0")
    for n in range(10):
        with connect(service) as sock:  # a connection each: the kernel spreads them
            assert ask(sock, b"PUT k%d v%d\n" % (n, n)) == b"OK\n"
    for n in range(10):
        with connect(service) as sock:
            assert ask(sock, b"GET k%d\n" % n) == b"v%d\n" % n
            assert ask(sock, b"COUNT\n") == b"10\n"
    assert service.stop() == 0, service.log


def test_a_bad_setting_of_its_own_is_one_line_and_status_2(run_app) -> None:
    result = run_app(APP_PORT="0", APP_NOTES_REPORT_EVERY="-1")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "error: APP_NOTES_REPORT_EVERY='-1': expected a positive number of seconds\n"
    )
