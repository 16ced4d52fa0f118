"""Open the notes database before the first client, report while serving, close it after.

The order at the stop (``docs/protocol.md``): the drain has answered every request, then the
code after ``yield`` runs: the reporter, started with ``shutdown_waits_for()`` so that nothing
cancels it half-way, is told to finish, writes its last report into the database, and only
then is the database closed. After that the journal is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator

from app import protocol
from app.settings import Settings
from servicekit.aiorun import shutdown_waits_for
from servicekit.config import app_settings
from servicekit.service import Service

logger = logging.getLogger(__name__)


def open_database(settings: Settings, patience: float = 10.0) -> sqlite3.Connection:
    """The notes database, created on first use.

    Several workers may open the file at the same moment. SQLite waits up to ``timeout``
    for most locks, but not for the one that switches a new file to WAL: there it answers
    'database is locked' at once. So the switch is tried again until ``patience`` runs out.
    """
    settings.notes_database.parent.mkdir(parents=True, exist_ok=True)
    database = sqlite3.connect(settings.notes_database, timeout=patience)
    give_up = time.monotonic() + patience
    while True:
        try:
            database.execute("PRAGMA journal_mode = WAL")  # workers share the file
            break
        except sqlite3.OperationalError as error:
            busy = error.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > give_up:
                database.close()
                raise
            time.sleep(0.01)  # another worker holds the switch for a moment
    database.execute("CREATE TABLE IF NOT EXISTS notes (key BLOB PRIMARY KEY, text BLOB)")
    database.execute("CREATE TABLE IF NOT EXISTS reports (at REAL, served INTEGER)")
    return database


async def report_until(done: asyncio.Event, every: float, database: sqlite3.Connection) -> None:
    """Log how many requests were served every ``every`` seconds; at the end, record it."""
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every)
        logger.info("notes: served %d request(s)", protocol.served)
    with database:
        database.execute("INSERT INTO reports VALUES (?, ?)", (time.time(), protocol.served))
    logger.info("notes: last report recorded: %d request(s) served", protocol.served)


@contextlib.asynccontextmanager
async def lifespan(service: Service) -> AsyncIterator[None]:
    """The database is open from before the first request until after the last."""
    settings = app_settings(Settings)
    database = open_database(settings)
    protocol.database = database
    logger.info("notes: database %s open", settings.notes_database)
    done = asyncio.Event()
    reporter = shutdown_waits_for(report_until(done, settings.notes_report_every, database))
    try:
        yield
    finally:
        done.set()
        await reporter  # its last report goes into the database before it closes
        protocol.database = None
        database.close()
        logger.info("notes: database closed")
