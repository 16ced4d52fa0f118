"""What the service does with a request: the one file to replace with your own protocol.

A request is one line a client sent, without its newline; the reply is one line, sent back
with a newline added. Everything else is the server's (``servicekit/server.py``): framing, limits,
timeouts, backpressure, fairness, the journal and the graceful drain. It calls ``handle`` for
the requests of one connection in order, one at a time, and sends a reply only once its
request is in the journal. An empty line never reaches ``handle``: it is a health ping, which
the server answers itself and does not journal.

If ``handle`` raises, the error is logged with its traceback, the client gets an
``error: ...`` line, and the connection goes on. A reply must be ``bytes`` without a newline,
and must not start with byte 0x15 (NAK), which marks the server's own refusals.

``handle`` starts running in the server's own callback, and becomes an asyncio task only if
it awaits something that is not ready yet, so that a request answered at once does not pay for
a task. Code that needs a task from its very first line (``asyncio.timeout()``, and
``asyncio.wait_for()`` since Python 3.12, look up the current task) should await something
first, e.g. ``await asyncio.sleep(0)``.

``recover`` is called at start for every journaled request, oldest first, before any client
is accepted: a protocol with state rebuilds it from there, so a restart or a ``kill -9`` loses
nothing that was answered. It also sees requests whose ``handle`` raised, so it must tolerate
them. A ``recover`` whose body is empty (a docstring, ``pass`` or ``...``), like this one, is
recognised and the journal is not read at all: a service without state starts as fast with a
large journal as with none.

``tests/test_protocol.py`` tests what this file answers; every other test holds for any
protocol that answers each request with one line.
"""

from __future__ import annotations


async def handle(request: bytes) -> bytes:
    """Answer one request: the echo sends it back unchanged."""
    return request


def recover(request: bytes) -> None:
    """Rebuild state from one journaled request: the echo keeps none."""
