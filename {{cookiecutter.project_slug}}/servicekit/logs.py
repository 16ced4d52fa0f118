"""How the log is written: ``APP_LOG_FORMAT=text`` (the default) or ``json``.

``text`` is for people: one line per record, ``time LEVEL logger: message``. ``json`` is for
log pipelines (Docker's and Kubernetes' collectors, Loki, Elasticsearch): one JSON object per
line with ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, plus every field a
log call passed as ``extra=`` (the shutdown's phase, counts and durations, a worker's index),
and ``exception`` (the traceback as one string) for errors, so a multi-line traceback stays
one record. Both go to stderr, which is where containers and systemd collect from.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
}
"""Attributes every record has; anything else on a record came from ``extra=``."""


def configure(level: str, log_format: str) -> None:
    """Send the log to stderr in the chosen format, at the chosen level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler])
    # Python's warnings (a coroutine never awaited, a deprecation) would otherwise go to
    # stderr on lines of their own, which in a JSON log no pipeline could parse.
    logging.captureWarnings(True)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        import json  # only a JSON log pays for these imports

        entry: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: what stderr's encoding cannot hold (a redirected stderr on Windows is
        # cp1252) Python writes as \xe9 or \U0001f600, which would break the JSON.
        return json.dumps(entry, default=str)


def iso_time(created: float) -> str:
    """``2026-01-31T12:00:00.123Z``: UTC, milliseconds, sortable as text."""
    import time

    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


def json_record(line: str) -> dict[str, Any] | None:
    """The record if ``line`` is one JSON object, as JsonFormatter writes, else None.

    The supervisor reads its workers' stderr with it. ``tests/conftest.py`` keeps its own
    copy: the template's suite loads that file without this package on the path.
    """
    if not line.startswith("{"):
        return None
    import json  # not at the top: a text log never pays for it, even at start

    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
