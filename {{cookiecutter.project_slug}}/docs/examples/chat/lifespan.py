"""The chat opens nothing and closes nothing: its subscribers go with their connections.

``docs/examples/notes/lifespan.py`` is one with a resource and background work.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from servicekit.service import Service


@contextlib.asynccontextmanager
async def lifespan(service: Service) -> AsyncIterator[None]:
    """Nothing to open before the first client or to close after the drain."""
    yield
