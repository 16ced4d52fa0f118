"""The seams of the user's package: a lifespan and settings of its own, in real processes.

A small service written as a user would (a package of its own in the test's folder, started
with ``python -m seamed``) opens a resource in its lifespan, runs a plain background task
and one started with ``shutdown_waits_for()``, and reads settings of its own. What the
log says shows the order of the shutdown: the drain, then the lifespan's exit (its
protected work finished, its plain task cancelled), then the journal's flush, then the
runtime's cancellation of what is left.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import HANG_GUARD, Process, Service, ask, connect, journal_lines, service_env

from servicekit.config import (
    ConfigError,
    app_variables,
    load_app_settings,
    load_settings,
    setting,
    whole_number,
)
from servicekit.exitcodes import ExitCode

SETTINGS = textwrap.dedent(
    """
    import dataclasses
    import enum
    from pathlib import Path

    from servicekit.config import setting, whole_number


    class Mood(enum.Enum):
        CALM = "calm"
        LOUD = "loud"


    @dataclasses.dataclass(frozen=True)
    class Settings:
        greeting: str = setting("hello", what="The first word of every reply")
        repeat: int = setting(1, what="Replies per request", parse=whole_number(1, 5))
        mood: Mood = setting(Mood.CALM, what="calm or loud")
        ratio: float = setting(0.5, what="A number")
        loud: bool = setting(False, what="A flag")
        place: Path = setting(Path("here"), what="A path")
        token: str = setting("", what="An API token", secret=True)
    """
)
PROTOCOL = textwrap.dedent(
    """
    import logging

    from seamed.settings import Settings
    from servicekit.config import app_settings

    log = logging.getLogger("seamed")
    resource: list[str] | None = None  # opened by the lifespan


    async def handle(request: bytes) -> bytes:
        settings = app_settings(Settings)
        assert resource is not None, "handle() ran before the lifespan opened its resource"
        resource.append(request.decode())
        reply = f"{settings.greeting} {request.decode()} {settings.mood.value}"
        return " | ".join([reply] * settings.repeat).encode()


    def recover(request: bytes) -> None:
        pass
    """
)
LIFESPAN = textwrap.dedent(
    '''
    import asyncio
    import contextlib
    import logging
    import os

    from seamed import protocol
    from servicekit.aiorun import shutdown_waits_for

    log = logging.getLogger("seamed")


    async def ticker() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.info("ticker cancelled")
            raise


    async def forgotten() -> None:
        """A task the lifespan does not stop: the runtime cancels it after the journal."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.info("forgotten task cancelled")
            raise


    async def flusher(done: asyncio.Event) -> None:
        await done.wait()
        await asyncio.sleep(0.05)  # its last flush takes a moment, and is not cut off
        log.info("flusher finished its last flush of %d request(s)", len(protocol.resource))


    @contextlib.asynccontextmanager
    async def lifespan(service):
        if os.environ.get("SEAMED_FAIL") == "enter":
            raise RuntimeError("the database is down")
        protocol.resource = []
        log.info("lifespan opened")
        tick = asyncio.create_task(ticker())
        forgotten_task = asyncio.create_task(forgotten())
        done = asyncio.Event()
        flushed = shutdown_waits_for(flusher(done))
        yield
        log.info("lifespan closing")
        tick.cancel()
        done.set()
        await flushed
        if os.environ.get("SEAMED_FAIL") == "exit":
            raise RuntimeError("the pool would not close")
        if os.environ.get("SEAMED_FAIL") == "hang":
            await asyncio.Event().wait()
        protocol.resource = None
        log.info("lifespan closed")
        assert not forgotten_task.done()
    '''
)
ENTRY = textwrap.dedent(
    """
    import sys

    from seamed import protocol
    from seamed.lifespan import lifespan
    from seamed.settings import Settings
    from servicekit.main import main

    sys.exit(main(protocol, lifespan=lifespan, settings=Settings))
    """
)


@pytest.fixture
def seamed(workdir: Path) -> Path:
    package = workdir / "seamed"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(SETTINGS)
    (package / "protocol.py").write_text(PROTOCOL)
    (package / "lifespan.py").write_text(LIFESPAN)
    (package / "__main__.py").write_text(ENTRY)
    return workdir


def start(folder: Path, **settings: str) -> Service:
    env = service_env(
        APP_HOST="127.0.0.1", APP_PORT="0", APP_JOURNAL_PATH="data/journal.log", **settings
    )
    return Service(folder, env, args=("-m", "seamed"))


def run_seamed(folder: Path, *args: str, **settings: str) -> Process:
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="data/journal.log", **settings)
    return Process([sys.executable, "-m", "seamed", *args], folder, env)


def position(service: Service, text: str) -> int:
    """The number of the first log line that contains ``text``; fails if there is none."""
    for number, line in enumerate(service.lines):
        if text in line:
            return number
    pytest.fail(f"no log line contains {text!r}:\n{service.log}")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_the_lifespan_opens_before_the_first_client_and_closes_between_drain_and_journal(
    seamed: Path,
) -> None:
    service = start(seamed, APP_GREETING="hi", APP_REPEAT="2", APP_MOOD="loud")
    with connect(service) as sock:
        assert ask(sock, b"one\n") == b"hi one loud | hi one loud\n"
        assert service.stop(signal.SIGTERM) == ExitCode.OK, service.log
    order = [
        "lifespan opened",
        "listening on",
        "shutdown: SIGTERM received",
        "draining 1 connection(s)",
        "lifespan closing",
        "ticker cancelled",
        "flusher finished its last flush of 1 request(s)",
        "lifespan closed",
        "journal flushed",
        "forgotten task cancelled",
        "shutdown: complete",
    ]
    lines = [position(service, text) for text in order]
    assert lines == sorted(lines), "\n".join(service.lines)
    assert "Traceback" not in service.log


def test_a_lifespan_that_fails_to_open_stops_the_service_before_anyone_is_served(
    seamed: Path,
) -> None:
    process = run_seamed(seamed, SEAMED_FAIL="enter")
    assert process.wait() == ExitCode.ERROR, process.log
    assert "RuntimeError: the database is down" in process.log
    assert "listening on" not in process.log


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_lifespan_that_fails_to_close_still_flushes_the_journal(seamed: Path) -> None:
    service = start(seamed, SEAMED_FAIL="exit")
    with connect(service) as sock:
        assert ask(sock, b"kept\n") == b"hello kept calm\n"
    assert service.stop(signal.SIGTERM) == ExitCode.ERROR, service.log
    assert "the lifespan failed while closing" in service.log
    assert position(service, "the lifespan failed") < position(service, "journal flushed")
    assert journal_lines(seamed / "data" / "journal.log") == [b"kept\n"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_lifespan_that_hangs_is_cut_off_within_the_budget(seamed: Path) -> None:
    service = start(seamed, SEAMED_FAIL="hang", APP_SHUTDOWN_TIMEOUT="2")
    with connect(service) as sock:
        assert ask(sock, b"kept\n") == b"hello kept calm\n"
    assert service.stop(signal.SIGTERM) == ExitCode.SHUTDOWN_TIMEOUT, service.log
    assert "the lifespan did not close within" in service.log
    assert journal_lines(seamed / "data" / "journal.log") == [b"kept\n"]


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("APP_REPEAT", "9", "error: APP_REPEAT='9': expected a number from 1 to 5"),
        ("APP_MOOD", "grumpy", "error: APP_MOOD='grumpy': expected one of calm, loud"),
        ("APP_RATIO", "nan", "error: APP_RATIO='nan': expected a finite number"),
        ("APP_LOUD", "maybe", "error: APP_LOUD='maybe': expected one of 1/0, true/false"),
        ("APP_TOKEN", "", None),
    ],
)
def test_a_bad_setting_of_the_users_is_one_line_and_status_2(
    seamed: Path, variable: str, value: str, said: str | None
) -> None:
    if said is None:  # a secret is never shown: make it bad through a parse that refuses it
        settings = seamed / "seamed" / "settings.py"
        settings.write_text(
            settings.read_text().replace("secret=True)", "secret=True, parse=whole_number(0, 1))")
        )
        value, said = "hunter2", "error: APP_TOKEN (value not shown): expected a whole number"
    process = run_seamed(seamed, **{variable: value})
    assert process.wait() == ExitCode.CONFIG, process.log
    [line] = process.lines
    assert line.startswith(said), line
    assert "hunter2" not in process.log
    assert not (seamed / "data").exists(), "something started before the refusal"


def test_the_users_settings_are_known_listed_and_read_from_dotenv(seamed: Path) -> None:
    (seamed / ".env").write_text("APP_GREETING=bonjour\nAPP_REPEAT=oops\n")
    service = start(seamed, APP_REPEAT="1")  # the environment wins over .env
    with connect(service) as sock:
        assert ask(sock, b"x\n") == b"bonjour x calm\n"
    assert "unknown setting" not in service.log, service.log
    service.popen.kill()
    service.wait()
    helped = subprocess.run(
        [sys.executable, "-m", "seamed", "--help"],
        cwd=seamed,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert helped.returncode == ExitCode.OK, helped.stderr
    for name in ("APP_PORT", "APP_GREETING", "APP_REPEAT", "APP_TOKEN"):
        assert name in helped.stdout
    assert re.search(r"APP_TOKEN\s+\(secret\)\s+An API token", helped.stdout), helped.stdout


def test_settings_of_the_users_read_like_the_services(tmp_path: Path) -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Mine:
        name: str = setting("x", what="a name")
        size: int = setting(3, what="a size", parse=whole_number(1, 10))
        key: str = setting(what="a required key", secret=True)

    env_file = tmp_path / ".env"
    env_file.write_text("APP_NAME=from-file\nAPP_KEY=s3cret\n")
    mine = load_app_settings(Mine, {"APP_SIZE": "7"}, env_file)
    assert mine == Mine(name="from-file", size=7, key="s3cret")
    with pytest.raises(ConfigError, match=r"^APP_KEY is not set: a required key$"):
        load_app_settings(Mine, {}, tmp_path / "none")
    with pytest.raises(ConfigError, match=r"^APP_SIZE='0': expected a number from 1 to 10$"):
        load_app_settings(Mine, {"APP_SIZE": "0", "APP_KEY": "k"}, tmp_path / "none")
    # A broken .env line for one of the user's settings is an error, as for the service's.
    env_file.write_text("APP_NAME='unclosed\n")
    with pytest.raises(ConfigError, match="APP_NAME is not KEY=VALUE"):
        load_app_settings(Mine, {"APP_KEY": "k"}, env_file)
    # The service does not warn about them as unknown.
    _, warnings = load_settings({"APP_NAME": "y"}, tmp_path / "none", app_variables(Mine))
    assert warnings == []
    _, warnings = load_settings({"APP_NAME": "y"}, tmp_path / "none")
    assert len(warnings) == 1
    assert "APP_NAME" in warnings[0]


def test_a_users_setting_cannot_take_a_name_of_the_services(tmp_path: Path) -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Clash:
        port: int = setting(1, what="clashes with APP_PORT")

    with pytest.raises(ConfigError, match="APP_PORT is a setting of the service's own"):
        load_app_settings(Clash, {}, tmp_path / "none")

    @dataclasses.dataclass(frozen=True)
    class Unreadable:
        names: list[str] = setting(what="no reader for a list")

    with pytest.raises(ConfigError, match="no reader for"):
        load_app_settings(Unreadable, {}, tmp_path / "none")
