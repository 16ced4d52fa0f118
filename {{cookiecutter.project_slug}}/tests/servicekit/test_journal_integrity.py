"""The journal checks what it reads back: checksums, NUL blocks, huge lines, old files, and a
file rotated or removed while the service runs.

Each test starts the real service in a subprocess with a protocol that has state (its
``recover`` records what it sees and prints it when the service is ready), hands it a journal
built byte by byte from the format's description, and reads what ``recover`` got.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    JOURNAL_HEADER,
    SHUTTING_DOWN,
    Process,
    Service,
    StartService,
    ask,
    connect,
    is_reply,
    journal_record,
    journal_requests,
    service_env,
    skip_if_the_journal_rebuilds_state,
)

from servicekit.exitcodes import ExitCode

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file semantics")

RECORDING = textwrap.dedent(
    """
    import resource, runpy, sys
    from app import protocol
    from servicekit import main as entry

    recovered = []

    def recover(request):
        recovered.append(request)

    def report():
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("recovered:", repr(recovered[-50:]), len(recovered), file=sys.stderr, flush=True)
        print("peak rss kib:", peak, file=sys.stderr, flush=True)

    protocol.recover = recover
    entry.Service.serve = (lambda serve: lambda self: (report(), serve(self))[1])(
        entry.Service.serve
    )
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


STARTED: list[Process] = []
"""Processes a test started directly; the fixture below kills any left after a failure."""


@pytest.fixture(autouse=True)
def kill_leftovers() -> Iterator[None]:
    yield
    while STARTED:
        process = STARTED.pop()
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


def recording_service(workdir: Path, **settings: str) -> Service:
    (workdir / "recording.py").write_text(RECORDING)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="data/journal.log", **settings)
    STARTED.append(service := Service(workdir, env, args=["recording.py"]))
    return service


def recovered(service: Service) -> list[bytes]:
    match = service.wait_for(r"recovered: (\[.*\]) (\d+)$")
    return list(ast.literal_eval(match[1]))


def peak_rss_kib(service: Service) -> int:
    return int(service.wait_for(r"peak rss kib: (\d+)")[1])


def write_journal(workdir: Path, content: bytes) -> Path:
    (workdir / "data").mkdir(mode=0o700, exist_ok=True)
    path = workdir / "data" / "journal.log"
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def records(*requests: bytes) -> bytes:
    return b"".join(map(journal_record, requests))


def skipped_offsets(log: str) -> list[int]:
    return [
        int(offset) for offset in re.findall(r"skipped \d+ byte\(s\) at byte offset (\d+)", log)
    ]


@posix_only
def test_garbage_and_nul_blocks_are_skipped_with_their_offsets(workdir: Path, figure) -> None:
    """What a crash or a stray writer leaves: a garbage line, a 4 KiB NUL block on its own,
    a NUL block glued onto the next real record, a record half overwritten by NULs."""
    garbage = b"this line was never written by the service\n"
    nul_line = b"\0" * 4096 + b"\n"
    half = b"\0" * 100 + journal_record(b"d, whose start a crash overwrote with NUL bytes")[30:]
    parts = [
        JOURNAL_HEADER + journal_record(b"a"),
        garbage,
        b"\0" * 4096 + journal_record(b"b"),  # glued: b is good, the NULs are cut off
        journal_record(b"c"),
        nul_line,
        half,
        journal_record(b"e"),
    ]
    write_journal(workdir, b"".join(parts))
    offsets = [sum(map(len, parts[:n])) for n in range(len(parts))]
    service = recording_service(workdir)
    assert recovered(service) == [b"a", b"b", b"c", b"e"], service.log
    assert skipped_offsets(service.log) == [offsets[1], offsets[4], offsets[5]], service.log
    assert "skipped 3 line(s)" in service.log
    assert "cut 4096 NUL byte(s)" in service.log
    with connect(service) as sock:
        assert is_reply(ask(sock, b"f\n"))
    assert service.stop() == ExitCode.OK, service.log
    again = recording_service(workdir)
    assert recovered(again) == [b"a", b"b", b"c", b"e", b"f"], again.log
    assert again.stop() == ExitCode.OK
    figure(
        "journal-checksums",
        "CRC-32 per record: a garbage line, a 4 KiB NUL block and a record half overwritten"
        " by NULs skipped, each logged with its byte offset; 4,096 NULs glued to a good"
        " record cut off and the record replayed",
    )


@posix_only
def test_a_150_mb_line_mid_journal_is_skipped_without_reading_it_whole(
    workdir: Path, figure
) -> None:
    """The line limit is 64 KiB; a huge line is streamed past, so memory stays bounded."""
    write_journal(workdir, JOURNAL_HEADER + records(b"a", b"b"))
    small = recording_service(workdir)
    assert recovered(small) == [b"a", b"b"]
    baseline = peak_rss_kib(small)
    assert small.stop() == ExitCode.OK
    huge = 150 * 1024 * 1024
    with (workdir / "data" / "journal.log").open("wb") as file:
        file.write(JOURNAL_HEADER + journal_record(b"a"))
        chunk = b"x" * (1 << 20)
        for _ in range(huge // len(chunk)):
            file.write(chunk)
        file.write(b"\n" + journal_record(b"b"))
    service = recording_service(workdir)
    assert recovered(service) == [b"a", b"b"], service.log[-2000:]
    assert skipped_offsets(service.log) == [len(JOURNAL_HEADER + journal_record(b"a"))]
    growth = peak_rss_kib(service) - baseline
    assert growth < 16 * 1024, f"peak RSS grew by {growth} KiB reading past a 150 MB line"
    assert service.stop() == ExitCode.OK
    figure(
        "journal-huge-line",
        f"a 150 MB line mid-journal skipped at replay: peak RSS +{growth / 1024:.1f} MiB",
    )


@posix_only
def test_a_good_record_longer_than_the_limit_refuses_the_start(workdir: Path) -> None:
    """Journaled under a larger APP_MAX_LINE_BYTES: dropping it would lose an answered request."""
    write_journal(workdir, JOURNAL_HEADER + records(b"a", b"y" * 500, b"b"))
    (workdir / "recording.py").write_text(RECORDING)
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="data/journal.log", APP_MAX_LINE_BYTES="100")
    result = subprocess.run(
        [sys.executable, "recording.py"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert "Traceback" not in result.stderr
    offset = len(JOURNAL_HEADER + journal_record(b"a"))
    assert f"record at byte offset {offset} (line 3) is 510 bytes" in result.stderr
    assert "set APP_MAX_LINE_BYTES to 501 or more" in result.stderr


@posix_only
def test_a_journal_from_before_checksums_is_replayed_then_continued(workdir: Path) -> None:
    """A project updated with cruft has a journal of bare lines: replay it, then go on."""
    path = write_journal(workdir, b"one\n\0\0\0two\n" + b"\0" * 512 + b"\n")
    service = recording_service(workdir)
    assert recovered(service) == [b"one", b"two"], service.log
    assert "has no checksums (written by an older version)" in service.log
    assert "(2 from before checksums)" in service.log
    with connect(service) as sock:
        assert is_reply(ask(sock, b"three\n"))
    assert service.stop() == ExitCode.OK, service.log
    old = b"one\n\0\0\0two\n" + b"\0" * 512 + b"\n"
    assert path.read_bytes() == old + JOURNAL_HEADER + journal_record(b"three")
    again = recording_service(workdir)
    assert recovered(again) == [b"one", b"two", b"three"], again.log
    assert "no checksums" not in again.log, "the header is written once"
    assert again.stop() == ExitCode.OK
    assert path.read_bytes() == old + JOURNAL_HEADER + journal_record(b"three")


@posix_only
def test_a_last_request_that_starts_with_nul_bytes_is_a_good_record(workdir: Path) -> None:
    """Seen failing (a helper's attack): when the journal's last record was a request that
    starts with NUL bytes, the next start cut the NULs off before checking its checksum (as
    for a zero-filled block glued onto a record) and took the file for one from before
    checksums. Every start then warned of an old journal, and the next write put a second
    header in the middle of the file. Any client could do it by sending such a request."""
    service = recording_service(workdir)
    with connect(service) as sock:
        assert is_reply(ask(sock, b"before\n"))
        assert is_reply(ask(sock, b"\0\0starts with NUL bytes\n"))
    assert service.stop() == ExitCode.OK, service.log
    again = recording_service(workdir)
    assert recovered(again) == [b"before", b"\0\0starts with NUL bytes"], again.log
    assert "no checksums" not in again.log
    with connect(again) as sock:
        assert is_reply(ask(sock, b"after\n"))
    assert again.stop() == ExitCode.OK, again.log
    assert again.journal.read_bytes() == JOURNAL_HEADER + records(
        b"before", b"\0\0starts with NUL bytes", b"after"
    )


@posix_only
def test_each_record_is_readable_with_its_checksum(workdir: Path) -> None:
    service = recording_service(workdir)
    with connect(service) as sock:
        assert is_reply(ask(sock, b"SET k v\n"))
    assert service.stop() == ExitCode.OK
    assert service.journal.read_bytes() == JOURNAL_HEADER + b"SET k v %08x\n" % zlib.crc32(
        b"SET k v"
    )
    assert service.journal.read_bytes().startswith(JOURNAL_HEADER)
    assert journal_requests(service.journal) == b"SET k v\n"


def ask_until_logged(service: Service, sock: socket.socket, tag: bytes, pattern: str) -> bytes:
    """Ping-pong numbered requests until the log matches; return the answered ones.

    The journal looks at its path at most every PATH_CHECK_INTERVAL, before a write: these
    requests are the writes that make it look.
    """
    answered = b""
    for n in range(100_000):
        request = b"%s %d\n" % (tag, n)
        assert is_reply(ask(sock, request)), service.log
        answered += request
        if re.search(pattern, service.log):
            return answered
    pytest.fail(f"never logged {pattern!r}:\n{service.log}")


@posix_only
def test_a_journal_rotated_under_a_protocol_without_state_goes_on_in_a_new_file(
    start_service: StartService, workdir: Path, figure
) -> None:
    """``mv``, ``rm`` and copytruncate while the echo runs are each noticed, said once in the
    log, and what follows goes to a new file at the path, never to one nobody will find."""
    skip_if_the_journal_rebuilds_state()
    service = start_service()
    journal = service.journal
    moved = journal.with_name("journal.log.1")
    with connect(service) as sock:
        assert is_reply(ask(sock, b"one\n"))
        journal.rename(moved)
        between = ask_until_logged(service, sock, b"mv", r"was moved away")
        assert is_reply(ask(sock, b"two\n"))
        # Each answered request is in the moved file or the new one, in order.
        assert journal_requests(moved) + journal_requests(journal) == b"one\n" + between + b"two\n"
        journal.unlink()
        between = ask_until_logged(service, sock, b"rm", r"was removed")
        assert is_reply(ask(sock, b"three\n"))
        assert (between + b"three\n").endswith(journal_requests(journal))
        shutil.copy(journal, journal.with_name("journal.log.copy"))  # logrotate's copytruncate
        os.truncate(journal, 0)
        between = ask_until_logged(service, sock, b"cp", r"was truncated")
        assert is_reply(ask(sock, b"four\n"))
    assert service.stop() == ExitCode.OK, service.log
    # Written after the truncation at the file's new start, so without the header line.
    tail = b"".join(journal_record(line) for line in (between + b"four\n").splitlines())
    assert tail.endswith(journal.read_bytes())
    for what in ("moved away", "removed", "truncated"):
        assert service.log.count(f"was {what}") == 1, service.log
    assert service.log.count("going on in a new file") == 3
    figure(
        "journal-rotated",
        "journal mv'd, rm'd, copytruncated while serving: each noticed within 50 ms and logged;"
        " the echo goes on in a new file, a protocol with state stops (73) answering nothing"
        " more, a removed file saved",
    )


@posix_only
@pytest.mark.parametrize("how", ["mv", "rm"])
def test_a_journal_rotated_under_a_protocol_with_state_stops_the_service(
    workdir: Path, how: str
) -> None:
    """Its state is rebuilt from that file: once the journal notices, it answers no more, the
    service stops with 73, and every request answered is in the moved file, or in the removed
    file's content saved beside it."""
    service = recording_service(workdir)
    journal = service.journal
    answered = b""
    with connect(service) as sock:
        assert is_reply(ask(sock, b"SET a 0\n"))
        answered += b"SET a 0\n"
        if how == "mv":
            journal.rename(journal.with_name("journal.log.1"))
        else:
            journal.unlink()
        for n in range(1, 100_000):
            request = b"SET a %d\n" % n
            reply = ask(sock, request)
            if reply == SHUTTING_DOWN:
                break
            assert is_reply(reply), reply
            answered += request
    assert service.wait() == ExitCode.JOURNAL_UNWRITABLE, service.log
    assert "the state is rebuilt from this file, so the service stops" in service.log
    kept = journal.with_name("journal.log.1" if how == "mv" else "journal.log.removed")
    assert journal_requests(kept) == answered
    if how == "rm":
        assert "what it held is saved in data/journal.log.removed" in service.log
