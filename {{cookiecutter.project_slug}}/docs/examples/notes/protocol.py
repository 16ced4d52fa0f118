"""Notes: ``PUT key text`` -> ``OK``, ``GET key`` -> the text or ``nil``, ``COUNT`` -> how many.

The notes live in a database (SQLite here), which the lifespan opens and closes, not in the
process: every worker and every replica that opens the same database answers the same, and
``recover`` has nothing to rebuild (its body is empty, so the journal is not even read at
start). The journal still records every request that was answered.

SQLite on a local file answers in microseconds, so it is called from the event loop; a
database over the network would be called through its asyncio driver instead.
"""

from __future__ import annotations

import sqlite3

database: sqlite3.Connection | None = None
"""Opened by the lifespan before the first request, closed after the last one."""
served = 0
"""Requests answered since start, for the lifespan's reporter."""


async def handle(request: bytes) -> bytes:
    """Answer one command."""
    global served
    assert database is not None, "the lifespan opens the database before any request"
    served += 1
    command, _, rest = request.partition(b" ")
    if command == b"PUT" and rest:
        key, _, text = rest.partition(b" ")
        with database:  # one transaction: committed before the reply is sent
            database.execute("INSERT OR REPLACE INTO notes VALUES (?, ?)", (key, text))
        return b"OK"
    if command == b"GET" and rest:
        row = database.execute("SELECT text FROM notes WHERE key = ?", (rest,)).fetchone()
        return bytes(row[0]) if row else b"nil"
    if request == b"COUNT":
        (count,) = database.execute("SELECT COUNT(*) FROM notes").fetchone()
        return b"%d" % count
    return b"error: expected PUT key text, GET key or COUNT"


def recover(request: bytes) -> None:
    """The notes are in the database: nothing to rebuild."""
