"""The notes service's own settings: where its database is, and how often it reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from servicekit.config import setting


def _positive_seconds(raw: str) -> float:
    """A number of seconds above zero; ValueError says what was expected."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 < value < float("inf"):
        raise ValueError("expected a positive number of seconds")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """Read from APP_NOTES_DATABASE and APP_NOTES_REPORT_EVERY (or .env)."""

    notes_database: Path = setting(
        Path("notes.sqlite3"),
        what="The SQLite file that holds the notes (not in data/, the journal's)",
    )
    notes_report_every: float = setting(
        60.0, what="Seconds between two 'notes: served N' log lines", parse=_positive_seconds
    )
