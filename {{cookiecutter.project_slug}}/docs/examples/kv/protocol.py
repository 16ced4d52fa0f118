"""A key-value store: ``SET key value`` -> ``OK``, ``GET key`` -> the value or ``nil``,
``DEL key`` -> ``1`` if it was there, else ``0``.

A key is one word (no space); a value is the rest of the line, spaces and any bytes included,
except a newline (which ends the request) and a first byte 0x15, which would make its ``GET``
look like a refusal by the server (``docs/protocol.md``). A value ``nil`` reads like a missing
key: a client that stores it must tell them apart some other way.

The store is a dict in this process, so the design follows from the journal:

- ``recover`` replays every journaled ``SET`` and ``DEL`` through the same ``change`` that
  ``handle`` calls: a restart, or a ``kill -9``, rebuilds exactly what clients were told.
- ``handle`` never awaits, so each request changes the store after its last ``await`` (there
  is none) and is journaled in the same step of the event loop: the journal's order is the
  order of the changes, and a snapshot never holds a change whose request is not journaled.
- ``needs_journal`` says a ``GET`` changes nothing: it is not journaled, so reads cost no
  journal write and do not grow the file. Its reply still waits for the writes under way, so
  a client never reads a value that a ``kill -9`` could lose.
- ``snapshot`` returns one ``SET`` per key: with ``APP_JOURNAL_MAX_BYTES`` the journal is
  compacted to it, so it stays about the size of the store however often a key is rewritten.
  Each record is as long as the request that set the value, so it fits the line limit.

State in the process means one process: ``APP_WORKERS`` above 1 is refused unless
``APP_STATE_PER_WORKER=1`` says that each worker keeping its own store is meant.
"""

from __future__ import annotations

from collections.abc import Iterable

store: dict[bytes, bytes] = {}
"""The keys and their values, rebuilt from the journal at start."""

USAGE = b"error: expected SET key value, GET key or DEL key"


async def handle(request: bytes) -> bytes:
    """Answer one command; no ``await``, so nothing else runs between a change and its
    journaling."""
    command, _, key = request.partition(b" ")
    if command == b"GET":
        return store.get(key, b"nil") if key else USAGE
    return change(request)


def change(request: bytes) -> bytes:
    """Apply a ``SET`` or ``DEL`` to the store and return its reply; anything else changes
    nothing and gets an error. ``handle`` and ``recover`` both go through here, so a replay
    does exactly what the first run did, a refused request included."""
    command, _, rest = request.partition(b" ")
    if command == b"SET":
        key, space, value = rest.partition(b" ")
        if not key or not space:
            return b"error: expected SET key value"
        if value.startswith(b"\x15"):
            return b"error: a value must not start with byte 0x15"
        store[key] = value
        return b"OK"
    if command == b"DEL" and rest and b" " not in rest:
        return b"1" if store.pop(rest, None) is not None else b"0"
    return USAGE


def recover(request: bytes) -> None:
    """Replay one journaled request into the store."""
    change(request)


def snapshot() -> Iterable[bytes]:
    """The requests that rebuild the store from nothing: one ``SET`` per key."""
    return [b"SET %s %s" % item for item in store.items()]


def needs_journal(request: bytes) -> bool:
    """Every request but a ``GET`` may change the store, so it is journaled."""
    return request.partition(b" ")[0] != b"GET"
