"""Settings, read once at start from the environment and an optional ``.env`` file.

Every knob the service has is declared here with its default and its check, so a bad value
stops the process before anything starts, with one line that names the variable (exit
status 2), instead of a traceback later. Real environment variables win over ``.env``, the
usual rule for twelve-factor services: a deployment can always override a checked-in file.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast, get_type_hints

PREFIX = "APP_"
DEFAULT_PORT = {{ cookiecutter.port | int }}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A setting is malformed or out of range; the message names it."""


class FsyncPolicy(enum.StrEnum):
    """When the journal forces written requests to the disk (``APP_JOURNAL_FSYNC``)."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


def _uvloop_available() -> bool:
    """Whether uvloop imports here. Imported by name, not by an import statement: uvloop is
    optional and absent on Windows, and a type checker would report the statement as a
    missing module wherever it is not installed. The service imports it next anyway."""
    if sys.platform == "win32":
        return False
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def _uvloop_default() -> bool:
{%- if cookiecutter.use_uvloop %}
    return _uvloop_available()
{%- else %}
    return False  # uvloop was left out of this project; APP_USE_UVLOOP=1 opts in
{%- endif %}


def _setting(
    default: Any = dataclasses.MISSING, *, what: str, shown: str = "", **field: Any
) -> Any:
    """A settings field with the one line ``python -m app --help`` shows for it.

    ``shown`` replaces the default in the help where it is computed (``default_factory``).
    """
    return dataclasses.field(default=default, metadata={"what": what, "shown": shown}, **field)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration. Field ``x`` is read from ``APP_X``.

    Each field's ``what`` is its line in ``python -m app --help``; the README's table says
    the same at more length.
    """

    host: str = _setting(
        "127.0.0.1",
        what="Address to bind; the default keeps a fresh service off the network (containers"
        " use 0.0.0.0)",
    )
    port: int = _setting(DEFAULT_PORT, what="TCP port; 0 picks a free one, shown in the log")
    log_level: str = _setting("INFO", what="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    shutdown_timeout: float = _setting(
        8.0,
        what="Seconds the whole shutdown may take: half to drain connections, half for the"
        " runtime (under Docker's 10 s stop grace)",
    )
    use_uvloop: bool = _setting(
        default_factory=_uvloop_default,
        shown="{{ 'on where installed' if cookiecutter.use_uvloop else 'false' }}",
        what="Run on uvloop (never on Windows)",
    )
    max_connections: int = _setting(
        1000, what="Connections beyond this get 'error: too many connections' and are closed"
    )
    max_line_bytes: int = _setting(
        65536, what="Longest line, newline included; a longer one is refused, not buffered"
    )
    idle_timeout: float = _setting(
        300.0,
        what="Seconds a client may stay silent, or not read its replies, before it is dropped",
    )
    line_timeout: float = _setting(
        10.0,
        what="Seconds a client may take to complete a line it has begun, however slowly it sends",
    )
    stop_on_error: bool = _setting(
        True, what="Stop gracefully (exit 1) on an unhandled error rather than run half-broken"
    )
    journal_path: Path = _setting(  # noqa: RUF009 (a Path is immutable)
        Path("data/journal.log"), what="Where every request is recorded before it is answered"
    )
    journal_fsync: FsyncPolicy = _setting(  # noqa: RUF009 (an enum member is immutable)
        FsyncPolicy.INTERVAL,
        what="When the journal is forced to disk: always (before each reply), interval (at most"
        " once a second), never (at stop only)",
    )
    journal_max_bytes: int = _setting(
        64 << 20,
        what="Journal size that starts a compaction (protocol with snapshot()) or a rotation"
        " (protocol without state, 2 old files kept); 0 = let it grow",
    )
    workers: int = _setting(
        1,
        what="Processes serving the port (1..64); above 1, python -m app supervises that many"
        " workers sharing it (POSIX only)",
    )
    worker_index: int = _setting(
        0, what="Set by the supervisor in each worker (1..N; binds with SO_REUSEPORT); leave unset"
    )
    heartbeat_timeout: float = _setting(
        10.0,
        what="With workers: seconds a worker's event loop may miss its heartbeat before the"
        " supervisor kills and replaces it",
    )
    state_per_worker: bool = _setting(
        False,
        what="With workers and a protocol with state: each worker holds its own state (rebuilt"
        " from its own journal); without it such a start is refused",
    )
    log_format: str = _setting(
        "text", what="text (for people) or json (one JSON object per line, for log pipelines)"
    )
    reuse_port: bool = _setting(
        False,
        what="Bind with SO_REUSEPORT as a single process too, so copies started by someone else"
        " (Swarm replicas on the host network) share the port; see deploy/swarm/README.md",
    )
    metrics_port: int = _setting(
        0,
        what="HTTP port on APP_HOST for Prometheus (/metrics) and probes (/livez, /readyz);"
        " 0: off, no second port and prometheus_client never imported",
    )


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


def _parse_log_format(raw: str) -> str:
    word = raw.strip().lower()
    if word not in {"text", "json"}:
        raise ValueError("expected text or json")
    return word


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
    path = Path(raw)
    # ".", "/", ".." or "data/" name a folder; the journal's file name is needed, also for
    # the workers' journal.worker-N.log and the supervisor's journal.log.lock.
    if path.name in ("", "..") or raw.endswith(("/", os.sep)):
        raise ValueError("expected a file path, not a folder")
    return path


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
    "journal_max_bytes": _parse_int(0, 1 << 50),
    "workers": _parse_int(1, 64),
    "worker_index": _parse_int(0, 64),
    "heartbeat_timeout": _parse_seconds,
    "state_per_worker": _parse_bool,
    "log_format": _parse_log_format,
    "reuse_port": _parse_bool,
    "metrics_port": _parse_int(0, 65535),
}
KNOWN_VARIABLES = tuple(PREFIX + name.upper() for name in _PARSERS)


_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=")
"""The key at the start of a ``.env`` statement, found without reading its value."""


def read_env_file(
    path: Path, known: Collection[str] = KNOWN_VARIABLES
) -> tuple[dict[str, str], list[str]]:
    """Return the ``.env`` assignments and warnings, or refuse the file.

    python-dotenv skips a statement it cannot parse with a warning; a half-read configuration
    is worse than none, so a broken statement for one of our settings (``known``: the
    service's, and those of the user's settings class) is an error. One for a key the service
    does not read (a shared file, someone else's secret) is only a warning. Neither message
    shows the value: ``.env`` files hold passwords.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    from dotenv import dotenv_values  # only when there is a file: it is slow to import
    from dotenv.parser import parse_stream

    kept: list[str] = []
    warnings: list[str] = []
    for binding in parse_stream(io.StringIO(text)):
        statement = binding.original.string
        if not binding.error:
            kept.append(statement)
            if binding.key is not None and binding.value is None:
                # A bare word: a setting's name with its value missing, or a password pasted
                # on a line of its own. Only a name the service knows is safe to repeat.
                where = f"{path} line {binding.original.line}"
                if binding.key in known:
                    raise ConfigError(f"{where}: {binding.key} has no value (KEY=VALUE)")
                raise ConfigError(f"{where}: not KEY=VALUE")
            continue
        blank = len(statement) - len(statement.lstrip())
        line = binding.original.line + statement.count("\n", 0, blank)
        # An unclosed quote runs on to the next quote, so one broken statement can hide
        # the lines after it: any of our settings among them makes it an error too.
        keys = [m[1] for m in map(_ASSIGNMENT.match, statement.splitlines()) if m]
        if not keys:
            raise ConfigError(f"{path} line {line}: not KEY=VALUE")
        name = keys[0] if showable(keys[0]) else shown_value(keys[0])
        message = f"{path} line {line}: {name} is not KEY=VALUE (check its quotes)"
        if keys[0] in known:
            raise ConfigError(message)
        if hidden := [key for key in keys[1:] if key in known]:
            raise ConfigError(f"{message}, which hides {', '.join(hidden)}")
        warnings.append(message + "; ignored")
    values = dotenv_values(stream=io.StringIO("".join(kept)))
    return {key: value for key, value in values.items() if value is not None}, warnings


SHOWN_LENGTH = 40
"""Longest bad value an error message repeats; a longer one is described by its length."""


def shown_value(raw: str) -> str:
    """A bad value as an error message may repeat it: quoted if ``showable``, else only its
    length."""
    return repr(raw) if showable(raw) else f"a value of {len(raw)} characters, not shown"


def showable(raw: str) -> bool:
    """True for a value short enough to repeat that could not be a pasted line.

    A value with whitespace or ``=`` in it may be two lines of a ``.env`` file run together
    (``debug DB_PASSWORD=...``), and a long one could be anything: echoing either would put
    a secret, or a hundred kilobytes, into the log.
    """
    pasted = any(character.isspace() or character == "=" for character in raw)
    return len(raw) <= SHOWN_LENGTH and raw.isprintable() and not pasted


def _assigned(raw: str) -> str:
    """What follows a setting's name in its error: ``='abc'``, or ``: <its length>``."""
    return f"={raw!r}" if showable(raw) else f": {shown_value(raw)}"


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    also_known: Collection[str] = (),
) -> tuple[Settings, list[str]]:
    """Build the settings; return them with warnings about unknown ``APP_`` variables.

    ``also_known`` are the variables of the user's own settings (``app_variables``): read
    by ``load_app_settings``, so neither unknown nor to be warned about here. With
    ``env_file=None`` no file is read (``environ`` already holds it). Raises ConfigError for
    the first bad value, naming the variable.
    """
    environ = os.environ if environ is None else environ
    from_file, warnings = (
        ({}, []) if env_file is None else read_env_file(env_file, (*KNOWN_VARIABLES, *also_known))
    )
    merged = {**from_file, **environ}
    values = _parse_values(_PARSERS, merged)
    if values.get("use_uvloop") and not _uvloop_available():
        raise ConfigError("APP_USE_UVLOOP is on but uvloop is not installed: pip install uvloop")
    warnings += [
        _unknown_variable_warning(name)
        for name in sorted(merged)
        if name.startswith(PREFIX) and name not in KNOWN_VARIABLES and name not in also_known
    ]
    return Settings(**values), warnings


def _parse_values(
    parsers: Mapping[str, Callable[[str], Any]],
    merged: Mapping[str, str],
    secret: Collection[str] = (),
) -> dict[str, Any]:
    """Parse each field that is set (``APP_<FIELD>``); ConfigError names the first bad one.

    The service's settings and the user's go through here, so a bad value reads the same
    for both. A field in ``secret`` is named without its value.
    """
    values: dict[str, Any] = {}
    for field, parse in parsers.items():
        name = PREFIX + field.upper()
        raw = merged.get(name)
        if raw is None:
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            shown = f"{name} (value not shown)" if field in secret else f"{name}{_assigned(raw)}"
            raise ConfigError(f"{shown}: {exc}") from None
    return values


def client_port() -> str:
    """The port local tools (client, health probe) try first: APP_PORT, else the default.

    Read like the service reads it (environment over ``.env``), so ``python -m servicekit.client``
    finds the service it sits next to. A broken ``.env`` is the service's to report.
    """
    return _client_setting("APP_PORT") or str(DEFAULT_PORT)


def client_host() -> str:
    """The address local tools reach the service at: APP_HOST, with a wildcard made local.

    A service bound to every IPv4 address (``0.0.0.0``) answers on 127.0.0.1; one bound to
    every IPv6 address (``::``, IPv6 only, as asyncio binds it) answers on ``::1``.
    """
    host = _client_setting("APP_HOST") or Settings.host
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host.strip(), host.strip())


def port_argument(text: str) -> int:
    """A port for a local tool to connect to (``--port``, ``APP_PORT``): 1 to 65535.

    An argparse type, so its error is printed as is. ``int()`` alone would take 70000, which
    the socket layer quietly wraps around to 4464, or " 80", which no setting means.
    """
    import argparse  # only the tools that take arguments pay for it

    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{shown_value(text)} is not a port (1-65535)")
    return int(text)


def _client_setting(name: str) -> str | None:
    try:
        from_file, _ = read_env_file(Path(".env"))
    except ConfigError:
        from_file = {}
    return os.environ.get(name) or from_file.get(name)


def settings_help(app_settings_class: type | None = None) -> str:
    """Every setting with its default and what it does: the settings part of ``--help``.

    The user's own settings (``app_settings_class``) follow the service's, in the same form.
    """
    rows = []
    classes = (Settings,) if app_settings_class is None else (Settings, app_settings_class)
    for field in (field for cls in classes for field in dataclasses.fields(cls)):
        if field.metadata.get("shown"):
            shown = field.metadata["shown"]
        elif field.default is not dataclasses.MISSING:
            shown = "(secret)" if field.metadata.get("secret") else _shown(field.default)
        else:
            shown = "required" if field.default_factory is dataclasses.MISSING else "computed"
        rows.append((f"{PREFIX}{field.name.upper()}", shown, field.metadata.get("what", "")))
    import textwrap

    name_width = max(len(name) for name, _, _ in rows)
    default_width = max(len(shown) for _, shown, _ in rows)
    indent = " " * (name_width + default_width + 6)
    return "\n".join(
        textwrap.fill(
            f"  {name:<{name_width}}  {shown:<{default_width}}  {what}",
            width=100,
            subsequent_indent=indent,
        )
        for name, shown, what in rows
    )


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def _unknown_variable_warning(name: str) -> str:
    import difflib  # only when there is a warning to give

    close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    shown = name if showable(name) else shown_value(name)
    return f"unknown setting {shown} ignored{hint}"


# --- The user's own settings ----------------------------------------------------------------

T = TypeVar("T")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    what: str,
    parse: Callable[[str], Any] | None = None,
    secret: bool = False,
) -> Any:
    """A field of your own settings class, read from ``APP_<FIELD>`` like the service's own.

    ``what`` is its line in ``python -m app --help``. Without ``parse``, the field's type
    says how to read it: ``str``, ``int``, ``float``, ``bool`` (1/0, true/false, yes/no,
    on/off), ``Path`` or an ``enum.Enum`` of string values. ``parse`` takes the raw text and
    returns the value, or raises ``ValueError`` with what was expected: the service then stops
    before it starts, with ``error: APP_X='...': <that message>`` and exit status 2. A
    ``secret`` field's value is never shown, neither in that line nor in ``--help``. Without
    a default the variable must be set. Example (``app/settings.py``)::

        import dataclasses

        from servicekit.config import setting, whole_number


        @dataclasses.dataclass(frozen=True)
        class Settings:
            greeting: str = setting("hello", what="The first word of every reply")
            repeat: int = setting(1, what="Replies per request", parse=whole_number(1, 5))
            token: str = setting(what="The upstream's API token", secret=True)

    ``app/__main__.py`` passes the class to ``main(protocol, settings=Settings)``, and your
    code reads the values with ``app_settings(Settings).greeting``.
    """
    metadata = {"what": what, "parse": parse, "secret": secret}
    # Keyword-only, so a required field may follow fields with defaults.
    return dataclasses.field(default=default, metadata=metadata, kw_only=True)


def whole_number(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A ``parse`` for ``setting()``: a whole number, within ``low``..``high`` if given."""
    if low is not None and high is not None:
        return _parse_int(low, high)

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if low is not None and value < low:
            raise ValueError(f"expected a whole number of at least {low}")
        if high is not None and value > high:
            raise ValueError(f"expected a whole number of at most {high}")
        return value

    return parse


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _parse_enum(choices: type[enum.Enum]) -> Callable[[str], enum.Enum]:
    values = [str(member.value) for member in choices]

    def parse(raw: str) -> enum.Enum:
        word = raw.strip()
        for member in choices:
            if str(member.value) == word:
                return member
        raise ValueError(f"expected one of {', '.join(values)}")

    return parse


_PARSERS_BY_TYPE: dict[object, Callable[[str], Any]] = {
    str: str,
    int: whole_number(),
    float: _parse_float,
    bool: _parse_bool,
    Path: _parse_path,
}


def app_variables(cls: type) -> tuple[str, ...]:
    """The ``APP_`` variables a settings class of the user's reads."""
    return tuple(PREFIX + field.name.upper() for field in dataclasses.fields(cls))


def _app_parsers(cls: type) -> dict[str, Callable[[str], Any]]:
    """How to read each field of the user's class; ConfigError for one that cannot be read."""
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"settings={cls!r}: expected a dataclass")
    hints = get_type_hints(cls)
    parsers = {}
    for field in dataclasses.fields(cls):
        name = PREFIX + field.name.upper()
        where = f"{cls.__qualname__}.{field.name}"
        if name in KNOWN_VARIABLES:
            raise ConfigError(f"{where}: {name} is a setting of the service's own; rename it")
        hint = hints.get(field.name)
        parse = field.metadata.get("parse")
        if parse is None and isinstance(hint, type) and issubclass(hint, enum.Enum):
            parse = _parse_enum(hint)
        parse = parse or _PARSERS_BY_TYPE.get(hint)
        if parse is None:
            raise ConfigError(f"{where}: no reader for {hint!r}: give setting() a parse=")
        parsers[field.name] = parse
    return parsers


def load_app_settings(
    cls: type[T], environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> T:
    """Read the user's settings class from the environment and ``.env``, like ``load_settings``.

    Raises ConfigError for a bad or missing value, naming the variable (never a secret's
    value), and for a field that cannot be read from text at all.
    """
    parsers = _app_parsers(cls)
    environ = os.environ if environ is None else environ
    known = (*KNOWN_VARIABLES, *app_variables(cls))
    from_file, _ = ({}, []) if env_file is None else read_env_file(env_file, known)
    merged = {**from_file, **environ}
    fields = dataclasses.fields(cast(Any, cls))
    secret = [field.name for field in fields if field.metadata.get("secret")]
    values = _parse_values(parsers, merged, secret)
    for field in fields:
        required = field.default is field.default_factory is dataclasses.MISSING
        if required and field.name not in values:
            what = field.metadata.get("what", "")
            raise ConfigError(
                f"{PREFIX}{field.name.upper()} is not set{': ' if what else ''}{what}"
            )
    return cls(**values)


def load_settings_and_app_settings(
    cls: type, env_file: Path = Path(".env")
) -> tuple[Settings, list[str]]:
    """The service's settings and warnings, and the user's settings kept for ``app_settings``.

    ``.env`` is read once for both: it may be a pipe that can be read only once. Raises
    ConfigError for the first bad value, the service's first.
    """
    variables = app_variables(cls)
    from_file, warnings = read_env_file(env_file, (*KNOWN_VARIABLES, *variables))
    merged = {**from_file, **os.environ}
    settings, unknown = load_settings(merged, None, variables)
    _loaded[cls] = load_app_settings(cls, merged, None)
    return settings, warnings + unknown


_loaded: dict[type, Any] = {}
"""The user's settings, per class, as read the first time ``app_settings`` was asked for them:
by ``main()`` at start, so a bad value stops the service before anything runs."""


def app_settings(cls: type[T]) -> T:
    """Your settings, read once (at start, by ``main()``) and the same object ever after.

    Anywhere in your code: ``app_settings(Settings).greeting``. Outside a service started by
    ``main()`` (a unit test that calls ``handle``), the first call reads them.
    """
    if cls not in _loaded:
        _loaded[cls] = load_app_settings(cls)
    return cast(T, _loaded[cls])
