"""What your service opens before its first client and closes after its last reply.

``lifespan`` is entered once the journal is replayed and before the first client is
accepted, and exited once the drain is over (no ``handle`` runs any more) and before the
journal is flushed. Open a database pool or a client session here, and start background
tasks; ``servicekit/service.py`` (``Lifespan``) has the whole order. The echo needs none of
it, so this one only yields. A service with a resource and two background tasks::

    import asyncio
    import contextlib
    from collections.abc import AsyncIterator

    from app import protocol
    from app.settings import Settings
    from servicekit.aiorun import shutdown_waits_for
    from servicekit.config import app_settings
    from servicekit.service import Service


    @contextlib.asynccontextmanager
    async def lifespan(service: Service) -> AsyncIterator[None]:
        pool = await open_pool(app_settings(Settings).database_url)  # your resource
        protocol.pool = pool                                # what handle() uses
        ticker = asyncio.create_task(refresh_every_minute(pool))
        done = asyncio.Event()
        # Work that must finish, not be cut off: shutdown_waits_for() protects it from the
        # cancellation at the end of the shutdown, which waits for it instead.
        flusher = shutdown_waits_for(flush_counts_until(done, pool))
        yield
        # The drain is over: stop your tasks, then close what they use.
        ticker.cancel()       # a plain task: cancelled
        done.set()
        await flusher         # protected work: its last flush runs to the end
        await pool.close()

``docs/examples/notes/`` is a whole service written this way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from servicekit.service import Service


@contextlib.asynccontextmanager
async def lifespan(service: Service) -> AsyncIterator[None]:
    """Open nothing, close nothing: the echo has no resources."""
    yield
