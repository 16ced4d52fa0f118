"""The key-value store's own settings: none. The journal's (``APP_JOURNAL_PATH``,
``APP_JOURNAL_MAX_BYTES``) are the service's, and are all it needs."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
    """No settings of its own."""
