"""The key-value store opens nothing and runs nothing in the background, so this only yields.

Its state is the dict in ``app/protocol.py``, rebuilt from the journal before the lifespan is
entered; nothing needs closing after the drain.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from servicekit.service import Service


@contextlib.asynccontextmanager
async def lifespan(service: Service) -> AsyncIterator[None]:
    """Open nothing, close nothing: the store has no resources."""
    yield
