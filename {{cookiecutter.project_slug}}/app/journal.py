"""The journal: an append-only file with every line the service has echoed.

It is this service's example of work that must not be lost at shutdown. Connection handlers
queue lines in memory; one background task writes them in batches, in a worker thread so
that a slow disk never stalls the event loop. That task runs under ``shutdown_waits_for``:
the runtime does not cancel it, and the shutdown waits for its last write and its fsync.

Each batch is flushed to the operating system as soon as it is written, so a killed process
loses nothing the OS has; the fsync at the end makes the file durable across a power cut.
If a write or the fsync fails, the journal stops taking lines and calls ``on_failure``: the
service cannot keep its promise any more, so it stops (exit status 73).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from app.runtime import shutdown_waits_for

logger = logging.getLogger(__name__)


class Journal:
    """Batched, ordered, append-only writer of echoed lines."""

    def __init__(self, path: Path, on_failure: Callable[[OSError], None]) -> None:
        self.path = path
        self.lines_written = 0
        self.failed = False
        self._on_failure = on_failure
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Future[None] | None = None

    def open(self) -> None:
        """Create the file and its folder for appending; raise OSError if that fails.

        Called before the service listens, so an unwritable path stops the start instead
        of failing on the first echoed line.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")

    def abandon(self) -> None:
        """Close the file unused, when the service does not start after all."""
        if self._file is not None:
            self._file.close()

    def start(self) -> None:
        """Start the background writer, protected from the shutdown's cancellation."""
        self._writer = asyncio.ensure_future(shutdown_waits_for(self._write_until_closed()))
        self._writer.add_done_callback(self._check_failure)

    def replay(self) -> Iterator[bytes]:
        """Every journaled request, oldest first, without its newline (stand-in)."""
        with self.path.open("rb") as journal:
            for line in journal:
                yield line.rstrip(b"\n")

    def append(self, requests: Sequence[bytes]) -> asyncio.Future[None]:
        """Queue requests (without newlines); the future is done once they are written."""
        done = asyncio.get_running_loop().create_future()
        if self.failed:
            done.set_exception(OSError("the journal has failed"))
            return done
        self._pending.extend(request + b"\n" for request in requests)
        self._waiters.append(done)
        self._wakeup.set()
        return done

    async def close(self, grace: float) -> None:
        """Write everything queued, fsync and close; wait for that at most ``grace`` seconds.

        The writer keeps going after that: it is still protected, and the runtime
        reports it if the shutdown budget runs out before it ends.
        """
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await asyncio.wait({self._writer}, timeout=grace)

    async def _write_until_closed(self) -> None:
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            if batch:
                try:
                    await asyncio.to_thread(self._write, batch)
                except OSError as exc:
                    for waiter in waiters:
                        waiter.set_exception(exc)
                    raise
            for waiter in waiters:
                waiter.set_result(None)
        await asyncio.to_thread(self._sync_and_close)
        logger.info("journal flushed: %d line(s) in %s", self.lines_written, self.path)

    def _write(self, batch: list[bytes]) -> None:
        assert self._file is not None, "open() the journal before start()"
        self._file.write(b"".join(batch))
        self._file.flush()
        self.lines_written += len(batch)

    def _sync_and_close(self) -> None:
        assert self._file is not None, "open() the journal before start()"
        if stat.S_ISREG(os.fstat(self._file.fileno()).st_mode):  # a FIFO cannot be synced
            os.fsync(self._file.fileno())
        self._file.close()

    def _check_failure(self, writer: asyncio.Future[None]) -> None:
        error = None if writer.cancelled() else writer.exception()
        if error is None:
            return
        if not isinstance(error, OSError):
            raise error  # a bug, not the disk: let the loop report it
        self.failed = True
        if self._pending:
            logger.error("%d echoed line(s) could not be journaled", len(self._pending))
            self._pending.clear()
        self._on_failure(error)
