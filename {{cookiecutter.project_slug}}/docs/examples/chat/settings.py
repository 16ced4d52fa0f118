"""The chat's own setting: how many topics one connection may subscribe to."""

from __future__ import annotations

import dataclasses

from servicekit.config import setting, whole_number


@dataclasses.dataclass(frozen=True)
class Settings:
    """Read from APP_CHAT_MAX_TOPICS (or .env)."""

    chat_max_topics: int = setting(
        16, what="Topics one connection may subscribe to at once", parse=whole_number(1, 10_000)
    )
