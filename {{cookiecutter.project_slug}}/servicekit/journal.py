r"""The journal: a write-ahead log of every request the service has answered.

A reply is a promise: once a client has it, its request is in the journal, even if the
process is killed the next instant. So the server appends a request and waits until the
journal says it was written to the operating system before it sends the reply. Written to
the OS survives ``kill -9``; surviving a power cut also needs an fsync, which costs a disk
round trip, so ``APP_JOURNAL_FSYNC`` chooses, like Redis's ``appendfsync``:

- ``always``: each write is fsynced before its replies are released;
- ``interval`` (the default): fsync at most once a second, so a power cut loses at most the
  last second of acknowledged requests;
- ``never``: fsync only when the service stops.

Group commit keeps this fast: requests appended by every connection in one turn of the event
loop go out together in one write (``os.writev`` of their chunks, no copy into one buffer), and
their replies are released together: each append has a sequence number, and the write calls the
continuation each reply registered (``when_written``) directly, in the same turn, with no
future and no further turn of the loop in between. A write to a regular file only copies the
batch into the OS's page cache, which takes microseconds, less than handing it to a thread and
back; so regular files are written on the event loop, by ``_flush``, scheduled once per turn
with ``call_soon`` (which runs after the turn's reads), and only fsync, which waits for the
disk, runs in the runtime's executor, where a slow disk stalls the connections waiting on it,
never the loop. (A write can still wait when the OS throttles a process that has too much
unwritten data.) Everything else is the writer's, a task: fsync, compaction, rotation, the
writes under ``always`` (each waits for its fsync) and to a device or a FIFO (which can block
until its reader catches up, so they go through the executor too); while it works (``_busy``),
appends wait for it in order, and the next write takes them all. The writer is protected by
``shutdown_waits_for``: the runtime does not cancel it, and the shutdown waits for its last
write and fsync. It is this service's example of protected work.

**Format.** A journal file starts with the line ``HEADER``; then each record is one line: the
request, a space, and the CRC-32 of the request as 8 lowercase hex digits, so ``cat``,
``grep`` and ``tail -f`` still show the requests (``sed 's/ [0-9a-f]\{8\}$//'`` strips the
checksums). Replay verifies each record and never holds more than one line of at most
``APP_MAX_LINE_BYTES`` (plus the checksum) in memory, whatever the file holds. The rules:

- a record whose checksum matches is replayed;
- a record preceded by NUL bytes (a block a filesystem zero-filled after a crash, glued onto
  the next line) is replayed without them, and the NUL bytes are counted and logged;
- any other line (garbage, a NUL block, a half-overwritten record, a line longer than the
  limit whose checksum does not match) is skipped; each skip is logged with its byte offset
  (the first ``LOGGED_SKIPS`` of them) and the total is logged at the end of the replay;
- a line longer than the limit whose checksum *does* match is a real request journaled under a
  larger ``APP_MAX_LINE_BYTES``: the start is refused (exit 73) with the size to set, rather
  than drop an acknowledged request;
- a file written before checksums (no ``HEADER`` at its start) is replayed as it is, line by
  line (a line of NUL bytes is skipped, NUL bytes that begin a line are cut off, a line over
  the limit is skipped), up to its first checksummed record or ``HEADER``; the service then
  appends ``HEADER`` and checksummed records after the old lines.

**Files of other users.** The file is created 0600 in a folder created 0700, because it holds
what clients sent. Every file the service opens (the journal, ``<journal>.torn``,
``<journal>.compact``, the supervisor's ``<journal>.lock``) is opened without following a
symbolic link (``O_NOFOLLOW``) and refused, like OpenSSH refuses a key file, when it is owned
by another user or writable by group or others; its folder is refused when another user
(other than root) owns it, or anyone may write to it without the sticky bit that stops them
renaming or deleting our files (``/tmp`` has it). One process at a time may write a journal
(an exclusive lock, on POSIX): a second service started on the same journal is refused. The
service never changes the mode of a file or folder that already exists. A file that cannot be
fsynced (``/dev/null``, a FIFO) is used without fsync, and the start says so once.

**Rotated under its feet.** Before a write, at most every ``PATH_CHECK_INTERVAL`` seconds, the
journal checks that its path still names the file it has open (device and inode) and that the
file did not shrink. If the file was removed,
moved away or truncated (``rm``, ``mv``, ``logrotate``'s ``copytruncate``), the service says
so, then: a protocol without state (its ``recover`` does nothing) goes on in a new file at the
path, so ``mv journal.log journal.log.1`` is a supported way to rotate it by hand; a protocol
with state stops (exit 73) without acknowledging the batch that found it, because the file it
would rebuild its state from is no longer there, and a removed file's content is first saved
to ``<journal>.removed``. The supported way to bound the journal is ``APP_JOURNAL_MAX_BYTES``.

**Bounded.** With ``APP_JOURNAL_MAX_BYTES`` set, a journal past that size is rotated (a
protocol without state: ``<journal>.1`` ... ``<journal>.<KEPT_FILES>`` are kept, the oldest
dropped) or compacted (a protocol with ``snapshot()``: its requests, which rebuild today's
state, are written to ``<journal>.compact``, fsynced, renamed over the journal, and the folder
fsynced; a ``kill -9`` at any point leaves either the old journal or the new one, whole). The
server appends a request only once its ``handle`` has returned, so the snapshot holds the
effect of every request journaled, and of no other.

A crash can leave the last line cut short. On open, such a torn tail is moved to
``<journal>.torn`` and cut off, so the next request starts on a line of its own. A write
that fails (a full disk) is cut back to the last whole line too, and the requests it carried
are counted exactly: none of them was acknowledged. After that the journal refuses every
append and calls ``on_failure``: the service can no longer keep its promise, so it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import stat
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from servicekit.aiorun import shutdown_waits_for
from servicekit.config import FsyncPolicy
from servicekit.tally import LINES, SECONDS, Histogram

logger = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0
"""Seconds between fsyncs under ``APP_JOURNAL_FSYNC=interval``."""
PATH_CHECK_INTERVAL = 0.05
"""Seconds between two checks that the journal's path still names the open file: a stat per
write would cost a tenth of a small request's time. Requests written in between went to the
file that was moved (it has them) or removed (saved, with state; see the module's doc)."""
HEADER = b"# servicekit journal 2: each line is a request, a space, its CRC-32 in 8 hex digits\n"
"""The first line of a journal with checksums; no record can equal it (it ends in no CRC)."""
CHECKSUM_BYTES = 9
"""A space and 8 hex digits after each request, before its newline."""
TORN_SUFFIX = ".torn"
COMPACT_SUFFIX = ".compact"
REMOVED_SUFFIX = ".removed"
KEPT_FILES = 2
"""Rotated files kept beside the journal of a protocol without state: ``<journal>.1``, ``.2``."""
LOGGED_SKIPS = 10
"""Skipped lines logged one by one at replay; the rest are only counted."""
_READ_CHUNK = 1 << 16
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class JournalInUse(Exception):
    """Another process has the journal open for writing; two writers would interleave."""


def encode(requests: Sequence[bytes]) -> bytes:
    """Journal records for ``requests`` (each without its newline): request, CRC-32, newline."""
    crc32 = zlib.crc32
    if len(requests) == 1:  # ping-pong's every read: one copy, no list (bench section 3e)
        request = requests[0]
        return b"%b %08x\n" % (request, crc32(request))
    parts: list[bytes] = []
    add = parts.append
    for request in requests:  # one join copies each request once (this is the hot path)
        add(request)
        add(b" %08x\n" % crc32(request))
    return b"".join(parts)


def _verified(line: bytes) -> bytes | None:
    """The request in a record line (without its newline) if its checksum matches."""
    if len(line) < CHECKSUM_BYTES or line[-CHECKSUM_BYTES] != 0x20:
        return None
    request = line[:-CHECKSUM_BYTES]
    return request if b"%08x" % zlib.crc32(request) == line[-8:] else None


@dataclass
class ReplayReport:
    """What a replay found besides the records: counted so the log can say it in one line."""

    records: int = 0
    old_format: int = 0
    """Lines replayed from before the journal had checksums."""
    skipped: int = 0
    skipped_bytes: int = 0
    nul_bytes: int = 0
    """NUL bytes cut from the start of lines whose rest was a good record."""
    offsets: list[int] = field(default_factory=list)
    """Byte offsets of the first LOGGED_SKIPS skipped lines."""


class JournalRefused(OSError):
    """The journal holds something the service must not skip or may not trust."""


class SnapshotFailed(Exception):
    """The protocol's ``snapshot()`` raised (the cause), or returned a record that cannot be
    one journal line; the message says which. Nothing was written: the journal is as it was."""


SHOWN_PREFIX = 20
"""Bytes of a bad snapshot record the log shows: enough to recognise it, no more of a value
that may be a client's secret."""


class Journal:
    """Append-only, write-ahead, group-committed log of requests, one checksummed line each."""

    def __init__(
        self,
        path: Path,
        *,
        fsync_policy: FsyncPolicy = FsyncPolicy.INTERVAL,
        on_failure: Callable[[OSError], None],
        max_line_bytes: int = 1 << 16,
        stateful: bool = True,
        max_bytes: int = 0,
        snapshot: Callable[[], Iterable[bytes]] | None = None,
    ) -> None:
        self.path = path
        self.fsync_policy = fsync_policy
        self.max_line_bytes = max_line_bytes
        """The longest request line, newline included, as ``APP_MAX_LINE_BYTES`` says."""
        self.stateful = stateful
        """The protocol rebuilds state from this file: it may not be rotated away under us."""
        self.max_bytes = max_bytes
        """Rotate or compact past this size; 0 = never."""
        self.snapshot = snapshot
        self.lines_written = 0
        self.failed = False
        self.report = ReplayReport()
        self.position = (0, 0)
        """Byte offset and line number (1-based) of the record replay handed out last."""
        self._on_failure = on_failure
        self._fd: int | None = None
        self._identity: tuple[int, int] = (0, 0)
        """Device and inode of the open file: the path must still name it."""
        self._syncable = True
        self._size = 0
        """Bytes in the file after the last complete write: where a failed write is cut back."""
        self._needs_header = False
        """HEADER goes before the next write: a new file, or one from before checksums."""
        self._compacted_size = 0
        """Size right after the last compaction: the next one waits for twice as much."""
        self._queued: list[bytes] = []
        self._queued_lines = 0
        self.appended = 0
        """The sequence number of the latest append (the first is 1)."""
        self.written = 0
        """Every append numbered up to this one is written (and synced if the policy says so):
        the journal writes in order, so one number says it for all. Invariant: ``written <=
        appended``, and it never moves back."""
        self._waiters: list[tuple[int, Callable[[OSError | None], None]]] = []
        """``(number, then)`` for each ``when_written`` still waiting: numbers above
        ``written``, in the order they were registered."""
        self._flush_scheduled = False
        """A ``_flush`` is queued with ``call_soon``: appends of this turn join it."""
        self._busy = False
        """The writer task is at work (it may be awaiting the executor with the file): only
        it writes until it is done, so ``_flush`` hands the queue to it instead."""
        self._wakeup = asyncio.Event()
        self._closing = False
        self._unsynced = False
        self._last_sync = 0.0
        self._next_path_check = 0.0
        self._error: OSError | None = None
        self._writer: asyncio.Future[None] | None = None
        # Counted for servicekit.metrics, which reads them when scraped (servicekit/tally.py).
        self.bytes_written = 0
        self.batch_lines = Histogram(LINES)
        self.write_seconds = Histogram(SECONDS)
        self.fsync_seconds = Histogram(SECONDS)

    def open(self) -> None:
        """Open the file for appending, creating it privately; fence a torn last line.

        Raises OSError, which the service reports as one line and exit status 73. Called
        before the service listens, so a bad path stops the start, not the first request.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_folder(self.path.parent)
        try:
            existing = os.lstat(self.path)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise OSError(errno.ELOOP, "is a symbolic link; refusing to follow it", str(self.path))
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            self._open_special(existing.st_mode)
            return
        with contextlib.suppress(FileNotFoundError):  # a compaction a kill -9 cut short
            os.unlink(self._sibling(COMPACT_SUFFIX))
        fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        if not _lock(fd):
            os.close(fd)
            raise JournalInUse(f"{self.path} is in use by another process")
        self._adopt(fd)
        self._size = self._fence_torn_tail(fd)
        if self._size == 0 or not self._ends_checksummed(fd):
            if self._size:
                logger.warning(
                    "journal %s has no checksums (written by an older version): its %d"
                    " byte(s) are replayed as they are; new records are checksummed",
                    self.path,
                    self._size,
                )
            self._needs_header = True  # with the first write: a start that fails changes nothing

    def _adopt(self, fd: int) -> None:
        """Make ``fd`` the file written from now on; remember which file it is."""
        info = os.fstat(fd)
        self._fd = fd
        self._identity = (info.st_dev, info.st_ino)

    def _sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _open_special(self, mode: int) -> None:
        """A device or FIFO: written, never read back, fenced or fsynced."""
        # Without a reader, opening a FIFO for writing would wait forever; non-blocking, it
        # fails at once (ENXIO), which is the clear start-up error we want.
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | _O_NONBLOCK)
        if sys.platform != "win32":
            os.set_blocking(fd, True)
        self._fd = fd
        self._syncable = False
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device"
        logger.warning("journal %s is %s and cannot be synced: fsync skipped", self.path, kind)

    def _fence_torn_tail(self, fd: int) -> int:
        """Move bytes after the last newline to ``<journal>.torn``; return the kept size."""
        size = os.fstat(fd).st_size
        end = size
        while end > 0:
            start = max(end - _READ_CHUNK, 0)
            newline = _read_at(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end == size:
            return size
        quarantine = self._sibling(TORN_SUFFIX)
        keep = open_private(quarantine, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            for offset in range(end, size, _READ_CHUNK):  # a chunk at a time: it may be huge
                _write_all(keep, _read_at(fd, min(_READ_CHUNK, size - offset), offset))
            os.fsync(keep)
        finally:
            os.close(keep)
        os.ftruncate(fd, end)
        os.fsync(fd)
        logger.warning(
            "journal: fenced a torn last line: %d byte(s) moved to %s", size - end, quarantine
        )
        return end

    def _ends_checksummed(self, fd: int) -> bool:
        """True if the file's last line is HEADER or a good record: it needs no new HEADER.

        As replay reads it: the line whole first (a request may start with NUL bytes), then
        without the NUL bytes a zero-filled block may have glued onto its start.
        """
        start = max(self._size - (self.max_line_bytes + CHECKSUM_BYTES + 1), 0)
        tail = _read_at(fd, self._size - start, start)
        last = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1 :]
        body = last[:-1]
        return (
            last == HEADER
            or _verified(body) is not None
            or _verified(body.lstrip(b"\0")) is not None
        )

    def replay(self) -> Iterator[bytes]:
        """Every journaled request, oldest first, without its newline; see the format rules.

        ``report`` counts what was skipped; ``position`` says where the last record was.
        """
        if not self._syncable or self._fd is None:
            return  # a device or FIFO cannot be read back
        self.report = report = ReplayReport()
        with open(os.dup(self._fd), "rb", buffering=_READ_CHUNK) as file:
            file.seek(0)
            yield from self._records(file, report)
        if report.skipped or report.nul_bytes:
            logger.warning(
                "journal: replay of %s skipped %d line(s) (%d byte(s)) that are not good"
                " records, first at byte offset(s) %s; cut %d NUL byte(s) from the start of"
                " good records",
                self.path,
                report.skipped,
                report.skipped_bytes,
                ", ".join(map(str, report.offsets)),
                report.nul_bytes,
            )

    def _records(self, file: BinaryIO, report: ReplayReport) -> Iterator[bytes]:
        limit = self.max_line_bytes + CHECKSUM_BYTES  # the longest record, newline included
        offset = 0
        number = 0
        old_format = True  # until the first HEADER or checksummed record
        while line := file.readline(limit):
            start, number = offset, number + 1
            offset += len(line)
            if not line.endswith(b"\n") and len(line) < limit:
                self._skip(report, start, len(line), "a torn last line")
                continue
            if not line.endswith(b"\n"):
                length, checked = self._skip_long_line(file, line)
                offset = start + length
                if checked:
                    raise JournalRefused(
                        errno.EFBIG,
                        f"record at byte offset {start} (line {number}) is {length} bytes, over"
                        f" APP_MAX_LINE_BYTES={self.max_line_bytes}: set APP_MAX_LINE_BYTES to"
                        f" {length - CHECKSUM_BYTES} or more to replay it",
                        str(self.path),
                    )
                self._skip(report, start, length, "a line longer than the limit")
                continue
            if line == HEADER:
                old_format = False
                continue
            body = line[:-1]
            request = _verified(body)
            if request is None and body.startswith(b"\0"):
                stripped = body.lstrip(b"\0")
                if _verified(stripped) is not None or (old_format and stripped):
                    report.nul_bytes += len(body) - len(stripped)
                    body = stripped
                    request = _verified(body)
            if request is not None:
                old_format = False
            elif old_format and body.lstrip(b"\0"):
                request = body
                report.old_format += 1
            else:
                self._skip(report, start, len(line), "not a good record")
                continue
            report.records += 1
            self.position = (start, number)
            yield request

    def _skip_long_line(self, file: BinaryIO, head: bytes) -> tuple[int, bool]:
        """Read past a line longer than the limit without keeping it: (length, checksum ok).

        The CRC-32 runs over the line as it streams by; only the last CHECKSUM_BYTES are held
        back, as they may be the checksum itself.
        """
        length, crc, held = 0, 0, b""
        chunk = head
        while True:
            length += len(chunk)
            ended = chunk.endswith(b"\n")
            data = held + (chunk[:-1] if ended else chunk)
            crc = zlib.crc32(data[:-CHECKSUM_BYTES], crc)
            held = data[-CHECKSUM_BYTES:]
            if ended:
                break
            chunk = file.readline(_READ_CHUNK)
            if not chunk:
                break
        checked = held[:1] == b" " and held[1:] == b"%08x" % crc
        return length, checked

    def _skip(self, report: ReplayReport, offset: int, length: int, why: str) -> None:
        report.skipped += 1
        report.skipped_bytes += length
        if len(report.offsets) < LOGGED_SKIPS:
            report.offsets.append(offset)
            logger.warning(
                "journal: skipped %d byte(s) at byte offset %d of %s: %s",
                length,
                offset,
                self.path,
                why,
            )

    def compact_now(self) -> None:
        """At start, after the replay: rewrite the journal as ``snapshot()``.

        Only with a bound (``APP_JOURNAL_MAX_BYTES``) and a ``snapshot``; nothing is queued or
        in flight yet, so the snapshot is exactly the replayed state. Raises SnapshotFailed,
        with the journal left as it was, if ``snapshot()`` fails.
        """
        if self.snapshot is not None and self._syncable and self.max_bytes:
            self._compact(self._snapshot_records())

    def abandon(self) -> None:
        """Close the file unused, when the service does not start after all."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def start(self) -> None:
        """Start the writer, protected from the shutdown's cancellation.

        Says here, once the service is sure to run, and not in ``open()``, that a protocol with
        state but no ``snapshot()`` leaves the journal unbounded: a start that fails (a port in
        use) then stays one line.
        """
        if self.stateful and self.snapshot is None and self.max_bytes:
            logger.warning(
                "journal: APP_JOURNAL_MAX_BYTES=%d cannot bound %s: the protocol has state (its"
                " recover does work) but no snapshot() to compact it with",
                self.max_bytes,
                self.path,
            )
        self._writer = asyncio.ensure_future(shutdown_waits_for(self._write_until_closed()))
        self._writer.add_done_callback(self._check_failure)

    def append(self, requests: Sequence[bytes]) -> int:
        """Queue requests (without newlines); return the append's sequence number.

        Their replies may be sent once ``written`` has reached it (``when_written``).
        """
        self.appended += 1
        if self._error is None:
            self._queued.append(encode(requests))
            self._queued_lines += len(requests)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return self.appended

    def when_written(self, number: int, then: Callable[[OSError | None], None]) -> None:
        """Call ``then(None)`` once append ``number`` is written, or ``then(error)`` if the
        journal failed first; never from inside this call.

        Called by the journal's write itself, in the turn it wrote, not through a future: for
        a reply, that is one turn of the loop and a future's callbacks less per batch. The
        caller looks at ``written`` first; a continuation that raises is reported to the
        loop's exception handler, and the others are called all the same.
        """
        if self._error is not None or number <= self.written:
            asyncio.get_running_loop().call_soon(then, self._error)
            return
        self._waiters.append((number, then))

    def wait_for(self, number: int) -> asyncio.Future[None]:
        """A future done once append ``number`` is written (failed with the journal's error):
        ``when_written`` for code that awaits."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(error: OSError | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                _fail_quietly(done, error)

        self.when_written(number, settle)
        return done

    def _flush(self) -> None:
        """Write what this turn appended, on the loop, unless the writer task must.

        The writer does it when it is at work (it owns the file until it is done), for the
        ``always`` policy (the fsync waits in the executor), for a file that may block, and
        once closing began; it is woken here for what only it does: the first fsync due
        under ``interval`` after a write, a compaction or a rotation.
        """
        self._flush_scheduled = False
        if not self._queued:
            return
        if (
            self._busy
            or self._closing
            or not self._syncable
            or self.fsync_policy is FsyncPolicy.ALWAYS
            or self._fd is None
            or self._rotation_due()
            or self._compaction_due()
        ):
            self._wakeup.set()
            return
        was_unsynced = self._unsynced
        chunks, lines, through = self._take()
        try:
            if time.monotonic() >= self._next_path_check:
                self._check_still_ours()
            self._write(chunks, lines)
        except OSError as error:
            self._fail(error, lines)
            self._wakeup.set()  # the writer ends with the error, which reports it
            return
        if not was_unsynced or self._compaction_due() or self._rotation_due():
            self._wakeup.set()
        self._written_through(through)

    def _take(self) -> tuple[list[bytes], int, int]:
        """The queued chunks, their line count and the number of the last append among them;
        the queue is empty after."""
        taken = self._queued, self._queued_lines, self.appended
        self._queued, self._queued_lines = [], 0
        return taken

    def _written_through(self, number: int) -> None:
        """Appends up to ``number`` are written: call their continuations, in order."""
        self.written = number
        waiters = self._waiters
        if not waiters:
            return
        if waiters[-1][0] <= number:  # the usual case: every one of them
            self._waiters = []
            ready = waiters
        else:
            ready = [waiter for waiter in waiters if waiter[0] <= number]
            self._waiters = [waiter for waiter in waiters if waiter[0] > number]
        _call_each(ready, None)

    async def close(self, grace: float) -> None:
        """Write everything queued, fsync and close; wait for that at most ``grace`` seconds.

        The writer keeps going after that: it is still protected, and the runtime reports
        it if the shutdown budget runs out before it ends.
        """
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await asyncio.wait({self._writer}, timeout=grace)

    async def _write_until_closed(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._closing and not self._queued):
            await self._next_wakeup()
            if self._error is not None:
                raise self._error  # a write by _flush failed: end with it, which reports it
            self._busy = True
            try:
                await self._work(loop)
            finally:
                self._busy = False
        await loop.run_in_executor(None, self._sync_and_close)
        logger.info("journal flushed: %d line(s) in %s", self.lines_written, self.path)

    async def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        """One round of the writer: what is queued is written (and synced under ``always``)
        and answered first; then the fsync, compaction or rotation due.

        Answered first because it is in the journal by then: if what follows fails (a full
        disk under the compaction's new file), the service stops, but a refusal must only
        ever go to a request that is in no journal (a client may send it again).

        A rotation or compaction already due (an earlier write passed the bound, and more
        came before the writer ran) comes before the write: what is queued goes to the new
        file, or into the snapshot, so a file passes the bound by one batch at most.
        """
        if self._rotation_due():
            try:
                await loop.run_in_executor(None, self._rotate)
            except OSError as error:
                self._fail(error, 0)
                raise
        chunks: list[bytes] = []
        lines = through = 0
        if not self._compaction_due():  # else the compaction below takes the queue
            chunks, lines, through = self._take()
        if chunks:
            try:
                await self._write_batch(loop, chunks, lines)
            except OSError as error:
                self._fail(error, lines)
                raise
            self._written_through(through)
        covered_lines = 0
        try:
            if self._sync_due():
                await loop.run_in_executor(None, self._sync)
            if self._compaction_due():
                covered_lines = self._queued_lines  # answered with the new file
                through = await self._compact_while_serving(loop)
                self._written_through(through)
            elif self._rotation_due():
                await loop.run_in_executor(None, self._rotate)
        except OSError as error:
            self._fail(error, covered_lines)
            raise

    async def _write_batch(
        self, loop: asyncio.AbstractEventLoop, chunks: list[bytes], lines: int
    ) -> None:
        """Write a batch, synced under ``always``; if that fails, none of it stays in the file."""
        if self._syncable and time.monotonic() >= self._next_path_check:
            self._check_still_ours()
        before = self._size
        if self._syncable:  # a regular file: the page cache takes it at once
            self._write(chunks, lines)
        else:  # a device or FIFO can block until its reader catches up
            await loop.run_in_executor(None, self._write, chunks, lines)
        if self.fsync_policy is FsyncPolicy.ALWAYS:
            try:
                await loop.run_in_executor(None, self._sync)
            except OSError:
                self._size = before  # cut back: not synced, so not journaled
                self.lines_written -= lines
                self._cut_back()
                raise

    async def _next_wakeup(self) -> None:
        """Wait for new requests, or for the moment the interval policy owes an fsync."""
        if not self._unsynced or self.fsync_policy is not FsyncPolicy.INTERVAL:
            await self._wakeup.wait()
        else:
            due = self._last_sync + SYNC_INTERVAL - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(due, 0.0)):
                    await self._wakeup.wait()
        self._wakeup.clear()

    def _sync_due(self) -> bool:
        """Under the interval policy: written data has waited for its fsync long enough."""
        return (
            self.fsync_policy is FsyncPolicy.INTERVAL
            and self._unsynced
            and time.monotonic() - self._last_sync >= SYNC_INTERVAL
        )

    def _check_still_ours(self) -> None:
        """Before a write: the path must still name the open file, at least as long as written.

        A protocol without state goes on in a new file; one with state stops (see above).
        """
        assert self._fd is not None
        self._next_path_check = time.monotonic() + PATH_CHECK_INTERVAL
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            removed = os.fstat(self._fd).st_nlink == 0
            what = "removed" if removed else "moved away"
        else:
            if (info.st_dev, info.st_ino) != self._identity:
                what = "replaced by another file"
            elif info.st_size < self._size:
                what = f"truncated (from {self._size} to {info.st_size} bytes)"
            else:
                return
        if not self.stateful:
            logger.warning(
                "journal %s was %s while the service ran: going on in a new file at that path",
                self.path,
                what,
            )
            if what.startswith("truncated"):
                self._size = info.st_size  # the same file: go on at its new end
                if self._size == 0:
                    _write_all(self._fd, HEADER)
                    self._size = len(HEADER)
            else:
                self._reopen()
            return
        saved = ""
        if what == "removed":
            saved = f"; what it held is saved in {self._save_removed()}"
        raise JournalRefused(
            errno.ESTALE,
            f"was {what} while the service ran; the state is rebuilt from this file, so the"
            f" service stops{saved}: put the file back before restarting (to bound the"
            " journal, set APP_JOURNAL_MAX_BYTES instead of rotating it)",
            str(self.path),
        )

    def _save_removed(self) -> Path:
        """Copy the open, removed file to ``<journal>.removed``; return that path.

        A copy saved by an earlier incident is kept: this one then gets ``.removed.1``, ...
        """
        assert self._fd is not None
        for n in range(1000):
            saved = self._sibling(REMOVED_SUFFIX + (f".{n}" if n else ""))
            try:
                fd = open_private(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, "1000 saved copies already", str(saved))
        try:
            for offset in range(0, self._size, _READ_CHUNK):
                _write_all(fd, _read_at(self._fd, min(_READ_CHUNK, self._size - offset), offset))
            os.fsync(fd)
        finally:
            os.close(fd)
        return saved

    def _reopen(self) -> None:
        """Go on in the file at the path (created, with HEADER, if there is none)."""
        fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        if not _lock(fd):
            os.close(fd)
            raise OSError(errno.EBUSY, "is in use by another process", str(self.path))
        old, self._fd = self._fd, None
        if old is not None:
            os.close(old)
        self._adopt(fd)
        self._size = os.fstat(fd).st_size
        if self._size == 0:
            _write_all(fd, HEADER)
            self._size = len(HEADER)

    def _rotation_due(self) -> bool:
        return not self.stateful and self._syncable and 0 < self.max_bytes <= self._size

    def _rotate(self) -> None:
        """A protocol without state: keep the last KEPT_FILES files, start a new journal.

        In the executor: the renames and the fsync are disk work. What was written is fsynced
        first unless the policy is ``never`` (the rotated file is not synced later), so what
        moves to ``<journal>.1`` keeps the policy's promise; a crash in between leaves the
        journal at the path or at ``.1``, both replayed by nobody (nothing is rebuilt from them).
        """
        assert self._fd is not None
        if self._unsynced and self.fsync_policy is not FsyncPolicy.NEVER:
            os.fsync(self._fd)
        for n in range(KEPT_FILES, 1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._sibling(f".{n - 1}"), self._sibling(f".{n}"))
        self._close_before_rename()
        os.replace(self.path, self._sibling(".1"))
        self._reopen()
        logger.info("journal: rotated %s past %d bytes", self.path, self.max_bytes)

    def _close_before_rename(self) -> None:
        """Windows cannot rename over, or away, a file that is open: close it first. POSIX
        keeps it open, and so locked, until the new file has taken the path."""
        if sys.platform == "win32" and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _compaction_due(self) -> bool:
        return (
            self.snapshot is not None
            and self._syncable
            and self.max_bytes > 0
            and max(self.max_bytes, 2 * self._compacted_size) <= self._size
        )

    def _snapshot_records(self) -> bytes:
        """``snapshot()``'s records, encoded, each checked to be one journal line.

        Checked before anything is written, so a bad record never replaces the journal: a
        record with a newline would be read back as pieces with bad checksums and skipped,
        and the state it held lost; one over the line limit would stop every start. Raises
        SnapshotFailed.
        """
        assert self.snapshot is not None
        records: list[bytes] = []
        try:
            records.extend(self.snapshot())  # a generator raises while it is consumed
        except Exception as exc:
            raise SnapshotFailed(f"snapshot() raised {type(exc).__name__}: {exc}") from exc
        for number, record in enumerate(records, 1):
            if (problem := _bad_record(record, self.max_line_bytes)) is not None:
                raise SnapshotFailed(
                    f"snapshot() returned a record that cannot be journaled (record {number}"
                    f" of {len(records)}): {problem}"
                )
        return encode(records)

    async def _compact_while_serving(self, loop: asyncio.AbstractEventLoop) -> int:
        """Rewrite the journal as the snapshot, taken now, between two batches; return the
        number of the last append the new file holds.

        The server appends a request only once its ``handle`` has returned (a request still
        suspended in ``handle``, a long poll, is not journaled yet), so the snapshot holds the
        effect of every request journaled so far, including those queued but not written
        yet: those are not written again, and are answered with the new file. Requests
        queued while it is written come after it.
        """
        try:
            records = self._snapshot_records()
        except SnapshotFailed as exc:
            self._compaction_off(exc)
            if self._queued:  # left for the compaction: the next round writes them
                self._wakeup.set()
            return self.written
        _, covered, through = self._take()
        await loop.run_in_executor(None, self._compact, records)
        self.lines_written += covered
        return through

    def _compaction_off(self, failure: SnapshotFailed) -> None:
        """``snapshot()`` failed while serving: keep serving on the journal as it is (every
        acknowledged request is in it), say so once, and stop compacting until a restart
        (whose own compaction then refuses to start, with the same reason)."""
        self.snapshot = None
        logger.error(
            "journal: cannot compact %s: %s; serving on, with the journal growing past"
            " APP_JOURNAL_MAX_BYTES until a restart (which refuses to start until snapshot()"
            " is fixed, or APP_JOURNAL_MAX_BYTES=0)",
            self.path,
            failure,
            exc_info=failure.__cause__,
        )

    def _compact(self, records: bytes) -> None:
        """Write HEADER and ``records`` to ``<journal>.compact``, fsync, rename over the journal.

        Until the rename, the journal at the path is the old one, whole; from it, the new one,
        whole (it was fsynced first). The new file is locked before it takes the path, so a
        second service is refused all along. The folder is fsynced after, by the caller.
        """
        assert self._fd is not None
        temporary = self._sibling(COMPACT_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        fd = open_private(temporary, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL)
        try:
            _lock(fd)
            _write_all(fd, HEADER + records)
            os.fsync(fd)
            before = self._size
            self._close_before_rename()
            os.replace(temporary, self.path)
        except OSError:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._adopt(fd)
        self._size = self._compacted_size = len(HEADER) + len(records)
        self._needs_header = False
        self._unsynced = False
        _fsync_folder(self.path.parent)
        logger.info("journal: compacted %s from %d to %d bytes", self.path, before, self._size)

    def _write(self, chunks: list[bytes], lines: int) -> None:
        """One write for the whole batch; a failed one is cut back to the last whole line."""
        assert self._fd is not None, "open() the journal before start()"
        if self._needs_header:
            chunks = [HEADER, *chunks]
        size = sum(map(len, chunks))
        began = time.perf_counter()
        try:
            _write_chunks(self._fd, chunks, size)
        except OSError:
            self._cut_back()
            raise
        self.write_seconds.observe(time.perf_counter() - began)
        self.batch_lines.observe(lines)
        self.bytes_written += size
        self._needs_header = False
        self._size += size
        self.lines_written += lines
        self._unsynced = True

    def _cut_back(self) -> None:
        """After a failed write, end the file on the last whole line again."""
        if self._fd is None or not self._syncable:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as error:
            logger.error("journal: cannot cut a failed write back to a whole line: %s", error)

    def _sync(self) -> None:
        assert self._fd is not None, "open() the journal before start()"
        if self._syncable:
            began = time.perf_counter()
            os.fsync(self._fd)
            self.fsync_seconds.observe(time.perf_counter() - began)
        self._unsynced = False
        self._last_sync = time.monotonic()

    def _sync_and_close(self) -> None:
        if self._fd is None:
            return
        try:
            self._sync()
        finally:
            os.close(self._fd)
            self._fd = None

    def _fail(self, error: OSError, lines: int) -> None:
        """Refuse everything from now on; count exactly what was not journaled."""
        self._error = error
        self.failed = True
        lines += self._queued_lines
        waiters = self._waiters
        self._queued, self._queued_lines, self._waiters = [], 0, []
        logger.error("journal: %d request(s) could not be journaled: %s", lines, error)
        _call_each(waiters, error)

    def _check_failure(self, writer: asyncio.Future[None]) -> None:
        error = None if writer.cancelled() else writer.exception()
        if error is None:
            return
        if not isinstance(error, OSError):
            raise error  # a bug, not the disk: let the loop report it
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._on_failure(error)


def _bad_record(record: object, max_line_bytes: int) -> str | None:
    """Why ``record`` cannot be one journal line replayed under ``max_line_bytes``, or None."""
    if not isinstance(record, bytes):
        return f"it is {type(record).__name__}, not bytes"
    shown = f"{len(record)} bytes starting {record[:SHOWN_PREFIX]!r}"
    if (newline := record.find(b"\n")) >= 0:
        return f"it holds a newline at byte {newline} ({shown}); a record is one line"
    if len(record) >= max_line_bytes:  # the limit counts the newline, as for requests
        return (
            f"it is longer than APP_MAX_LINE_BYTES={max_line_bytes} allows ({shown}); raise"
            " the limit or split the record"
        )
    return None


def worker_journal(path: Path, index: int) -> Path:
    """Worker ``index``'s journal: ``data/journal.log`` -> ``data/journal.worker-1.log``."""
    return path.with_name(f"{path.stem}.worker-{index}{path.suffix}")


MERGE_SUFFIX = ".merge"
_MERGED = re.compile(r"(?P<orphan>.+)\.merged-into-(?P<target>.+)-(?P<inode>\d+)")
"""An orphan renamed aside while its merge is made durable: which target, and the inode of
the merged file that took the target's name (so a restart knows whether that happened)."""


def adopt_orphans(path: Path, workers: int, max_line_bytes: int) -> None:
    """Merge the journals of workers that no longer exist into those of the ones that do.

    Called before anything writes: by the supervisor for ``workers`` > 1, by the single
    process (``workers`` = 1, whose journal is ``path`` itself). An orphan is a worker's
    file whose index is above ``workers``, every worker file when there are none, and
    ``path`` itself when there are workers; orphan ``j`` goes to worker ``(j - 1) % workers
    + 1``, ``path`` to worker 1. Its records are appended to its target's, so nothing
    acknowledged is left in a file no process reads, and the log says what moved where.

    Each merge is crash-safe and happens once: the merged file is written and fsynced under
    ``<target>.merge``; the orphan is renamed to ``<orphan>.merged-into-<target>-<inode of
    the merged file>``; the merged file is renamed over the target; the folder is fsynced;
    the renamed orphan is removed. A restart that finds a renamed orphan removes it if the
    target is that merged file, and otherwise puts it back and merges it again.
    """
    folder = path.parent
    if not folder.is_dir():
        return
    names = {entry.name for entry in os.scandir(folder)}
    for name in names:
        if (found := _MERGED.fullmatch(name)) is None:
            continue
        target = folder / found["target"]
        try:
            done = os.stat(target).st_ino == int(found["inode"])
        except FileNotFoundError:
            done = False
        if done:
            os.unlink(folder / name)
        else:
            os.replace(folder / name, folder / found["orphan"])
    worker = re.compile(re.escape(path.stem) + r"\.worker-(\d+)" + re.escape(path.suffix))
    orphans: list[tuple[Path, Path]] = []
    for name in sorted(entry.name for entry in os.scandir(folder)):
        if (found := worker.fullmatch(name)) is None:
            continue
        index = int(found[1])
        if workers == 1:
            orphans.append((folder / name, path))
        elif index > workers:
            orphans.append((folder / name, worker_journal(path, (index - 1) % workers + 1)))
    if workers > 1 and path.exists() and path.stat().st_size:
        orphans.insert(0, (path, worker_journal(path, 1)))
    for orphan, target in orphans:
        _merge(orphan, target, max_line_bytes)


def _merge(orphan: Path, target: Path, max_line_bytes: int) -> None:
    """Append ``orphan``'s records to ``target``'s; see ``adopt_orphans`` for the steps."""
    locked: list[int] = []
    try:
        for name, flags in ((orphan, os.O_RDWR), (target, os.O_RDWR | os.O_CREAT)):
            fd = open_private(name, flags)
            locked.append(fd)
            if not _lock(fd):
                raise JournalInUse(f"{name} is in use by another process")
        temporary = target.with_name(target.name + MERGE_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        merged = open_private(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        counts = []
        try:
            _write_all(merged, HEADER)
            for name, fd in ((target, locked[1]), (orphan, locked[0])):
                reader = Journal(name, on_failure=lambda _: None, max_line_bytes=max_line_bytes)
                reader._fd = fd  # read through the locked descriptor
                pending: list[bytes] = []
                count = 0
                for request in reader.replay():
                    pending.append(request)
                    count += 1
                    if len(pending) >= 1024:
                        _write_all(merged, encode(pending))
                        pending = []
                if pending:
                    _write_all(merged, encode(pending))
                reader._fd = None
                counts.append(count)
            os.fsync(merged)
            inode = os.fstat(merged).st_ino
        finally:
            os.close(merged)
        aside = orphan.with_name(f"{orphan.name}.merged-into-{target.name}-{inode}")
        os.replace(orphan, aside)
        os.replace(temporary, target)
        _fsync_folder(target.parent)
        os.unlink(aside)
        _fsync_folder(target.parent)
    finally:
        for fd in locked:
            os.close(fd)
    logger.warning(
        "journal: merged %d record(s) of %s, the journal of a worker that no longer exists,"
        " into %s (which held %d)",
        counts[1],
        orphan,
        target,
        counts[0],
    )


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows has no such fsync)."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: Path, flags: int) -> int:
    """Open a file of the service without following a symlink; refuse one others control.

    Created 0600. An existing file must be owned by this process's user and writable by
    nobody else (POSIX; a device such as ``/dev/null`` may be root's). Raises OSError.
    """
    try:
        fd = os.open(path, flags | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a link
            raise OSError(
                errno.ELOOP, "is a symbolic link; refusing to follow it", str(path)
            ) from None
        raise
    if sys.platform == "win32":
        return fd
    try:
        info = os.fstat(fd)
        me = os.geteuid()
        regular = stat.S_ISREG(info.st_mode)
        if info.st_uid != me and (regular or info.st_uid != 0):
            raise OSError(
                errno.EPERM,
                f"is owned by uid {info.st_uid}, not by this service's user (uid {me});"
                " refusing it",
                str(path),
            )
        if regular and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise OSError(
                errno.EPERM,
                f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):o});"
                " refusing it (chmod go-w it)",
                str(path),
            )
    except OSError:
        os.close(fd)
        raise
    return fd


def check_folder(folder: Path) -> None:
    """Refuse a folder another user controls: owned by them, or open to all without sticky.

    Root may own it (``/var/lib``); a group may write it (Kubernetes' ``fsGroup``); anyone may
    write it only with the sticky bit (``/tmp``), which keeps them from renaming or removing
    our files. POSIX only. Raises OSError.
    """
    if sys.platform == "win32":
        return
    info = os.stat(folder)
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise OSError(
            errno.EPERM,
            f"folder is owned by uid {info.st_uid}, not by this service's user (uid {me}) or"
            " root; refusing it",
            str(folder),
        )
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise OSError(
            errno.EPERM,
            "folder is writable by anyone and has no sticky bit, so another user could replace"
            " the journal; refusing it (chmod o-w, or +t)",
            str(folder),
        )


def _lock(fd: int) -> bool:
    """Take an exclusive lock on the open journal; False if another process holds it.

    The kernel drops the lock when the process ends, however it ends, so a restart after
    ``kill -9`` is never refused. Windows has no such advisory lock; there it always succeeds.
    """
    if sys.platform == "win32":
        return True
    import fcntl  # POSIX only

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file).

    With lseek and read, which Windows has too (it has no pread). Moving the offset does not
    disturb appends: O_APPEND writes always go to the end.
    """
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while size > 0 and (chunk := os.read(fd, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _call_each(
    waiters: list[tuple[int, Callable[[OSError | None], None]]], error: OSError | None
) -> None:
    """Call each continuation with ``error``; one that raises (a bug) is reported to the
    loop's exception handler, as a future's callback would be, and the others still run."""
    for _, then in waiters:
        try:
            then(error)
        except Exception as exc:
            asyncio.get_running_loop().call_exception_handler(
                {"message": "journal continuation failed", "exception": exc}
            )


if sys.platform == "win32":
    _IOV_MAX = 1
else:
    _IOV_MAX = max(os.sysconf("SC_IOV_MAX"), 16)
"""Most buffers one ``os.writev`` takes (1024 on Linux); Windows has no ``writev``."""


def _write_chunks(fd: int, chunks: list[bytes], size: int) -> None:
    """Write ``chunks`` (``size`` bytes in all) in order: one ``os.writev`` when it can take
    them all, which spares joining them into one more copy of every byte."""
    if sys.platform != "win32" and 1 < len(chunks) <= _IOV_MAX:
        written = os.writev(fd, chunks)
        if written == size:
            return
        data = b"".join(chunks)[written:]  # a short write, rare on a regular file
    else:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written; a short write is retried, an error raised."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fail_quietly(waiter: asyncio.Future[None], error: OSError) -> None:
    """Fail a waiter without asyncio's "never retrieved" report: the failure is logged once."""
    waiter.set_exception(error)
    waiter.exception()  # marks it retrieved; whoever awaits it still gets the error
