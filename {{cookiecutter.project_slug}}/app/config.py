"""Settings, read once at start from the environment and an optional ``.env`` file.

Every knob the service has is declared here with its default and its check, so a bad value
stops the process before anything starts, with one line that names the variable (exit
status 2), instead of a traceback later. Real environment variables win over ``.env``, the
usual rule for twelve-factor services: a deployment can always override a checked-in file.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import io
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from app.journal import FsyncPolicy

PREFIX = "APP_"
DEFAULT_PORT = {{ cookiecutter.port | int }}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A setting is malformed or out of range; the message names it."""


def _uvloop_available() -> bool:
    return sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None


def _uvloop_default() -> bool:
{%- if cookiecutter.use_uvloop %}
    return _uvloop_available()
{%- else %}
    return False  # uvloop was left out of this project; APP_USE_UVLOOP=1 opts in
{%- endif %}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration. Field ``x`` is read from ``APP_X``."""

    host: str = "127.0.0.1"
    """Address to bind. The default keeps a fresh service off the network; containers set
    ``APP_HOST=0.0.0.0``."""
    port: int = DEFAULT_PORT
    """TCP port; 0 binds an ephemeral port, and the ``listening on`` line shows which."""
    log_level: str = "INFO"
    shutdown_timeout: float = 8.0
    """Seconds the whole shutdown may take: half for draining connections, the rest for the
    runtime to finish tasks and the executor. Kept under Docker's 10 s stop grace."""
    use_uvloop: bool = dataclasses.field(default_factory=_uvloop_default)
    """Run on uvloop; on by default where it is installed (never on Windows)."""
    max_connections: int = 1000
    """Connections beyond this get ``error: too many connections`` and are closed."""
    max_line_bytes: int = 65536
    """Longest accepted line, newline included; longer ones are refused, not buffered."""
    idle_timeout: float = 300.0
    """Seconds a connection may stay silent, or refuse to read our replies, before it is
    closed."""
    line_timeout: float = 10.0
    """Seconds a client may take to complete a line it has begun, however slowly it sends:
    a few bytes now and then must not hold a connection open for the whole idle timeout."""
    stop_on_error: bool = True
    """Stop gracefully (exit 1) on an unhandled error instead of running on half-broken."""
    journal_path: Path = Path("data/journal.log")
    journal_fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    """When the journal is forced to disk: ``always`` (before each reply), ``interval`` (at
    most once a second: a power cut loses at most the last second), ``never`` (at stop only).
    Written to the OS, which survives a killed process, is guaranteed before every reply."""
    workers: int = 1
    """Processes serving the port (1..64). Above 1, ``python -m app`` becomes a supervisor
    of that many workers sharing the port (``app/runtime/supervisor.py``); POSIX only."""
    worker_index: int = 0
    """Set by the supervisor in each worker's environment (1..N); 0 in a process started by
    hand. A worker binds its port with SO_REUSEPORT so that all workers can share it."""


def _parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


def _parse_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a positive number of seconds")
    return value


def _parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _parse_log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _parse_host(raw: str) -> str:
    host = raw.strip()
    try:
        host.encode("idna")  # also refuses empty labels and labels over 63 characters
    except UnicodeError:
        raise ValueError("expected a host name or address") from None
    if not host or not host.isprintable():
        raise ValueError("expected a host name or address")
    return host


def _parse_fsync(raw: str) -> FsyncPolicy:
    try:
        return FsyncPolicy(raw.strip().lower())
    except ValueError:
        raise ValueError("expected always, interval or never") from None


def _parse_path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("expected a file path")
    return Path(raw)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "host": _parse_host,
    "port": _parse_int(0, 65535),
    "log_level": _parse_log_level,
    "shutdown_timeout": _parse_seconds,
    "use_uvloop": _parse_bool,
    "max_connections": _parse_int(1, 1_000_000),
    "max_line_bytes": _parse_int(2, 1 << 30),
    "idle_timeout": _parse_seconds,
    "line_timeout": _parse_seconds,
    "stop_on_error": _parse_bool,
    "journal_path": _parse_path,
    "journal_fsync": _parse_fsync,
    "workers": _parse_int(1, 64),
    "worker_index": _parse_int(0, 64),
}
KNOWN_VARIABLES = tuple(PREFIX + name.upper() for name in _PARSERS)


def read_env_file(path: Path) -> dict[str, str]:
    """Return the ``APP_`` assignments of a ``.env`` file, or refuse the whole file.

    python-dotenv skips a line it cannot parse with a warning; a half-read configuration
    is worse than none, so any such line is an error here.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            raise ConfigError(f"{path} line {line} is not KEY=VALUE: {binding.original.string!r}")
        if binding.key is not None and binding.value is None:
            raise ConfigError(f"{path} line {line}: {binding.key} has no value (KEY=VALUE)")
    values = dotenv_values(stream=io.StringIO(text))
    return {key: value for key, value in values.items() if value is not None}


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path = Path(".env")
) -> tuple[Settings, list[str]]:
    """Build the settings; return them with warnings about unknown ``APP_`` variables.

    Raises ConfigError for the first bad value, naming the variable.
    """
    environ = os.environ if environ is None else environ
    merged = {**read_env_file(env_file), **environ}
    values: dict[str, Any] = {}
    for field, parse in _PARSERS.items():
        name = PREFIX + field.upper()
        raw = merged.get(name)
        if raw is None:
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r}: {exc}") from None
    if values.get("use_uvloop") and not _uvloop_available():
        raise ConfigError("APP_USE_UVLOOP is on but uvloop is not installed: pip install uvloop")
    warnings = [
        _unknown_variable_warning(name)
        for name in sorted(merged)
        if name.startswith(PREFIX) and name not in KNOWN_VARIABLES
    ]
    return Settings(**values), warnings


def client_port() -> str:
    """The port local tools (client, health probe) try first: APP_PORT, else the default.

    Read like the service reads it (environment over ``.env``), so ``python -m app.client``
    finds the service it sits next to. A broken ``.env`` is the service's to report.
    """
    try:
        from_file = read_env_file(Path(".env"))
    except ConfigError:
        from_file = {}
    return os.environ.get("APP_PORT") or from_file.get("APP_PORT") or str(DEFAULT_PORT)


def _unknown_variable_warning(name: str) -> str:
    close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting {name} ignored{hint}"
