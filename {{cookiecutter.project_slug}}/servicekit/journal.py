"""The journal: a write-ahead log of every request the service has answered.

A reply is a promise: once a client has it, its request is in the journal, even if the
process is killed the next instant. So the server appends a request and waits until the
journal says it was written to the operating system before it sends the reply. Written to
the OS survives ``kill -9``; surviving a power cut also needs an fsync, which costs a disk
round trip, so ``APP_JOURNAL_FSYNC`` chooses, like Redis's ``appendfsync``:

- ``always``: each write is fsynced before its replies are released;
- ``interval`` (the default): fsync at most once a second, so a power cut loses at most the
  last second of acknowledged requests;
- ``never``: fsync only when the service stops.

Group commit keeps this fast: requests appended from every connection while a write or an
fsync is under way go out together in the next single write, and their replies are released
together. A write to a regular file only copies the batch into the OS's page cache, which
takes microseconds, less than handing it to a thread and back; so regular files are written on
the event loop, and only fsync, which waits for the disk, runs in the runtime's executor, where
a slow disk stalls the connections waiting on it, never the loop. (A write can still wait
when the OS throttles a process that has too much unwritten data.) A device or a FIFO can
block until its reader catches up, so those are written in the executor too. The writer is a
task protected by ``shutdown_waits_for``: the runtime does not cancel it, and the shutdown
waits for its last write and fsync. It is this service's example of protected work.

The file is created 0600 in a folder created 0700, because it holds what clients sent; a
symbolic link at its path is refused rather than followed. One process at a time may write it
(an exclusive lock, on POSIX): a second service started on the same journal is refused. The
service never changes the mode of a file or folder that already exists, so an operator who
wants it readable by a group sets that once. A file that cannot be fsynced (``/dev/null``, a
FIFO) is used without fsync, and the start says so once.

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
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from servicekit.aiorun import shutdown_waits_for
from servicekit.config import FsyncPolicy
from servicekit.tally import LINES, SECONDS, Histogram

logger = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0
"""Seconds between fsyncs under ``APP_JOURNAL_FSYNC=interval``."""
TORN_SUFFIX = ".torn"
_READ_CHUNK = 1 << 16
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class JournalInUse(Exception):
    """Another process has the journal open for writing; two writers would interleave."""


class Journal:
    """Append-only, write-ahead, group-committed log of requests, one per line."""

    def __init__(
        self,
        path: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.INTERVAL,
        on_failure: Callable[[OSError], None],
    ) -> None:
        self.path = path
        self.fsync = fsync
        self.lines_written = 0
        self.failed = False
        self._on_failure = on_failure
        self._fd: int | None = None
        self._syncable = True
        self._size = 0
        """Bytes in the file after the last complete write: where a failed write is cut back."""
        self._queued: list[bytes] = []
        self._queued_lines = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._unsynced = False
        self._last_sync = 0.0
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
        try:
            existing = os.lstat(self.path)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise OSError(errno.ELOOP, "is a symbolic link; refusing to follow it", str(self.path))
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            self._open_special(existing.st_mode)
            return
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        if not _lock(fd):
            os.close(fd)
            raise JournalInUse(f"{self.path} is in use by another process")
        self._fd = fd
        self._size = self._fence_torn_tail(fd)

    def _open_special(self, mode: int) -> None:
        """A device or FIFO: written, never read back, fenced or fsynced."""
        # Without a reader, opening a FIFO for writing would wait forever; non-blocking, it
        # fails at once (ENXIO), which is the clear start-up error we want.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | _O_BINARY | _O_CLOEXEC | _O_NONBLOCK)
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
            os.lseek(fd, start, os.SEEK_SET)
            newline = os.read(fd, end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end == size:
            return size
        os.lseek(fd, end, os.SEEK_SET)
        torn = os.read(fd, size - end)
        quarantine = self.path.with_name(self.path.name + TORN_SUFFIX)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW
        keep = os.open(quarantine, flags, 0o600)
        try:
            _write_all(keep, torn)
            os.fsync(keep)
        finally:
            os.close(keep)
        os.ftruncate(fd, end)
        os.fsync(fd)
        logger.warning(
            "journal: fenced a torn last line: %d byte(s) moved to %s", len(torn), quarantine
        )
        return end

    def replay(self) -> Iterator[bytes]:
        """Every journaled request, oldest first, without its newline."""
        if not self._syncable:
            return  # a device or FIFO cannot be read back
        with self.path.open("rb") as file:
            for line in file:
                yield line[:-1]

    def abandon(self) -> None:
        """Close the file unused, when the service does not start after all."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def start(self) -> None:
        """Start the writer, protected from the shutdown's cancellation."""
        self._writer = asyncio.ensure_future(shutdown_waits_for(self._write_until_closed()))
        self._writer.add_done_callback(self._check_failure)

    def append(self, requests: Sequence[bytes]) -> asyncio.Future[None]:
        """Queue requests (without newlines); done once they are written (and synced if asked).

        Only then may their replies be sent. Fails with the OSError if the journal failed.
        """
        done = asyncio.get_running_loop().create_future()
        if self._error is not None:
            _fail_quietly(done, self._error)
            return done
        self._queued.append(b"\n".join(requests) + b"\n")
        self._queued_lines += len(requests)
        self._waiters.append(done)
        self._wakeup.set()
        return done

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
            if self._queued:
                batch, lines, waiters = b"".join(self._queued), self._queued_lines, self._waiters
                self._queued, self._queued_lines, self._waiters = [], 0, []
                try:
                    if self._syncable:  # a regular file: the page cache takes it at once
                        self._write(batch, lines)
                    else:  # a device or FIFO can block until its reader catches up
                        await loop.run_in_executor(None, self._write, batch, lines)
                    if self.fsync is FsyncPolicy.ALWAYS or self._sync_due():
                        await loop.run_in_executor(None, self._sync)
                except OSError as error:
                    self._fail(error, lines, waiters)
                    raise
                for waiter in waiters:
                    if not waiter.done():  # a connection that was aborted stopped waiting
                        waiter.set_result(None)
            elif self._sync_due():
                await loop.run_in_executor(None, self._sync)
        await loop.run_in_executor(None, self._sync_and_close)
        logger.info("journal flushed: %d line(s) in %s", self.lines_written, self.path)

    async def _next_wakeup(self) -> None:
        """Wait for new requests, or for the moment the interval policy owes an fsync."""
        if not self._unsynced or self.fsync is not FsyncPolicy.INTERVAL:
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
            self.fsync is FsyncPolicy.INTERVAL
            and self._unsynced
            and time.monotonic() - self._last_sync >= SYNC_INTERVAL
        )

    def _write(self, batch: bytes, lines: int) -> None:
        """One write for the whole batch; a failed one is cut back to the last whole line."""
        assert self._fd is not None, "open() the journal before start()"
        began = time.perf_counter()
        try:
            _write_all(self._fd, batch)
        except OSError:
            self._cut_back()
            raise
        self.write_seconds.observe(time.perf_counter() - began)
        self.batch_lines.observe(lines)
        self.bytes_written += len(batch)
        self._size += len(batch)
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

    def _fail(self, error: OSError, lines: int, waiters: list[asyncio.Future[None]]) -> None:
        """Refuse everything from now on; count exactly what was not journaled."""
        self._error = error
        self.failed = True
        lines += self._queued_lines
        waiters += self._waiters
        self._queued, self._queued_lines, self._waiters = [], 0, []
        logger.error("journal: %d request(s) could not be journaled: %s", lines, error)
        for waiter in waiters:
            if not waiter.done():
                _fail_quietly(waiter, error)

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


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written; a short write is retried, an error raised."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fail_quietly(waiter: asyncio.Future[None], error: OSError) -> None:
    """Fail a waiter without asyncio's "never retrieved" report: the failure is logged once."""
    waiter.set_exception(error)
    waiter.exception()  # marks it retrieved; whoever awaits it still gets the error
