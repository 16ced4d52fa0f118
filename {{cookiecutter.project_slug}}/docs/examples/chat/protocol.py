"""A chat: ``NICK name``, ``SUB topic``, ``UNSUB topic``, ``PUB topic text``, ``WHO topic``.

Replies are ``OK`` (``OK n`` for ``PUB``: how many others it reached) or ``error: ...``; a
message reaches the other subscribers of its topic as a push, ``MSG topic nick: text``,
which no reply starts with, so a client tells the two apart by the first word. Pushes keep
a listening client connected; one in a quiet topic is closed after ``APP_IDLE_TIMEOUT`` like
any idle client, so a chat client sends an empty line (a health ping) now and then.

What each client is (its nick, its topics) is kept on its connection
(``servicekit.connection.current().data``), and forgotten when it closes (``on_close``).
What concerns only the connection (``NICK``, ``SUB``, ``UNSUB``, ``WHO``) is not journaled
(``needs_journal``); messages are: the journal is the record of what was said, and every
message someone was pushed is in it. Nothing is replayed (``recover`` is empty):
subscriptions belong to connections, which a restart closes anyway.

The subscribers live in this process, so two processes would split them and a message
published on one would never reach a subscriber of the other: ``KEEPS_STATE`` makes the
service refuse ``APP_WORKERS`` above 1. Run one instance, or put the topics in a broker.
"""

from __future__ import annotations

from app.settings import Settings
from servicekit.config import app_settings
from servicekit.connection import Connection, current

KEEPS_STATE = True
"""The subscribers are state that workers would split (see the module's docstring)."""

topics: dict[bytes, set[Connection]] = {}
"""Each topic's subscribers; a topic without any is removed."""


async def handle(request: bytes) -> bytes:
    """Answer one command of the connection that sent it."""
    command, _, rest = request.partition(b" ")
    connection = current()
    if command == b"NICK" and rest and b" " not in rest:
        connection.data["nick"] = rest
        return b"OK"
    if command == b"SUB" and rest and b" " not in rest:
        return subscribe(connection, rest)
    if command == b"UNSUB" and rest:
        unsubscribe(connection, rest)
        return b"OK"
    if command == b"PUB" and b" " in rest:
        topic, _, text = rest.partition(b" ")
        return b"OK %d" % publish(connection, topic, text)
    if command == b"WHO" and rest:
        nicks = sorted(nick_of(member) for member in topics.get(rest, ()))
        return b"OK " + b" ".join(nicks) if nicks else b"OK"
    return b"error: expected NICK name, SUB topic, UNSUB topic, PUB topic text or WHO topic"


def subscribe(connection: Connection, topic: bytes) -> bytes:
    mine: set[bytes] = connection.data.setdefault("topics", set())
    if topic not in mine and len(mine) >= app_settings(Settings).chat_max_topics:
        return b"error: at most %d topics" % len(mine)
    if not mine:  # its first topic: forget it everywhere when it closes
        connection.on_close(leave_all)
    mine.add(topic)
    topics.setdefault(topic, set()).add(connection)
    return b"OK"


def unsubscribe(connection: Connection, topic: bytes) -> None:
    connection.data.get("topics", set()).discard(topic)
    members = topics.get(topic)
    if members is not None:
        members.discard(connection)
        if not members:
            del topics[topic]


def leave_all(connection: Connection) -> None:
    """The connection closed: it leaves every topic it was in."""
    for topic in list(connection.data.get("topics", ())):
        unsubscribe(connection, topic)


def publish(sender: Connection, topic: bytes, text: bytes) -> int:
    """Push the message to the topic's other subscribers; return how many took it.

    A subscriber that does not read what it is pushed is ended by the server past its limit
    (``push`` returns False, and ``leave_all`` runs once it is closed).
    """
    line = b"MSG " + topic + b" " + nick_of(sender) + b": " + text
    others = [member for member in topics.get(topic, ()) if member is not sender]
    return sum(member.push(line) for member in others)


def nick_of(connection: Connection) -> bytes:
    nick: bytes = connection.data.get("nick", b"guest-%d" % connection.id)
    return nick


def needs_journal(request: bytes) -> bool:
    """Subscriptions and nicks are not journaled: they belong to a connection, which a
    restart closes. Messages are, and so is anything else (when unsure, journal)."""
    return not request.startswith(_CONNECTION_ONLY)


_CONNECTION_ONLY = (b"NICK ", b"SUB ", b"UNSUB ", b"WHO ")


def recover(request: bytes) -> None:
    """Subscriptions belong to connections, which a restart closes: nothing to rebuild."""
