"""Options shared by the template's tests: engines that must be present in CI."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-docker",
        action="store_true",
        help="fail, instead of skipping, when no Docker engine answers (CI)",
    )
    parser.addoption(
        "--require-prometheus",
        action="store_true",
        help="fail, instead of skipping, when the prometheus server is not installed (CI)",
    )
    parser.addoption(
        "--require-wine",
        action="store_true",
        help="fail, instead of skipping, when Wine or the Windows Python is missing (CI)",
    )


FIRST_LANE = frozenset(
    {
        "test_compose.py",
        "test_docker.py",
        "test_podman.py",
        "test_prometheus.py",
        "test_release.py",
        "test_swarm.py",
        "test_systemd.py",
        "test_wine.py",
    }
)
"""The files of the first lane: every file that drives an engine (Docker, podman, systemd in a
container, Prometheus, Wine), so that one engine's images, containers and swarm are used by
one worker at a time."""
FIRST_LANE_EXAMPLES = frozenset({"notes"})
"""The examples whose generated suites (``test_examples.py``) run in the first lane, to even
out the lanes; the other examples run in the second. Measured in CI (seconds of test time):
the engine files 830-913, one example's generated suite and lint about 290-430, the second
lane's workflow steps 511-554 and the rest about 200."""


def lane(nodeid: str) -> str:
    """Which lane runs the test ``nodeid``: "first" or "second" (see FIRST_LANE)."""
    path, _, test = nodeid.partition("::")
    name = Path(path).name
    if name == "test_examples.py":
        parameters = set(re.split(r"[\[\]-]", test))
        return "first" if parameters & FIRST_LANE_EXAMPLES else "second"
    return "first" if name in FIRST_LANE else "second"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Two lanes for ``-n 2`` (how ``.ci/run`` runs the suite on 2 cores).

    The suite is mostly waiting (a generated suite uses about 0.7 of a core), so two lanes
    take about half the time of one (18:46 of tests instead of 34-37 minutes). The split is
    by file and fixed, not left to xdist's balancing, which could run two engine files at
    once: ``FIRST_LANE`` on one worker, every other file on the other. (xdist's own
    ``xdist_group`` marks would say the same, but its ``loadgroup`` mode does not take effect
    under pytest 9.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid)

    return Lanes(config, log)


FIGURES_FROM_WORKERS: list[str] = []
"""``[docker] ...`` lines that xdist workers measured (dockerlib.report), printed at the end."""


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    FIGURES_FROM_WORKERS.extend(node.workeroutput.get("figures", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES_FROM_WORKERS:
        terminalreporter.section("figures measured by the lanes")
        for line in FIGURES_FROM_WORKERS:
            terminalreporter.write_line(line)


TEMPLATE = Path(__file__).resolve().parent.parent
Bake = Callable[..., Path]


def _generated_conftest_listening() -> re.Pattern[str]:
    """The generated suite's ``LISTENING``, read from its source (it has no Jinja in it).

    The ``listening on HOST:PORT`` line is what every test waits for before it talks to a
    service, in both suites; one pattern, in the generated project, which owns the line.
    """
    path = TEMPLATE / "{{cookiecutter.project_slug}}" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("generated_conftest", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pattern: re.Pattern[str] = module.LISTENING
    return pattern


LISTENING = _generated_conftest_listening()
"""Matches the service's ``listening on HOST:PORT`` line: group 1 the host, 2 the port."""


@pytest.fixture(scope="session")
def bake(tmp_path_factory: pytest.TempPathFactory) -> Bake:
    """Generate a project with cookiecutter's API; the same answers are baked only once."""
    baked: dict[tuple[tuple[str, object], ...], Path] = {}

    def bake(**answers: object) -> Path:
        key = tuple(sorted(answers.items()))
        if key not in baked:
            output = tmp_path_factory.mktemp("baked")
            path = cookiecutter(
                str(TEMPLATE), no_input=True, output_dir=str(output), extra_context=answers
            )
            baked[key] = Path(path)
        return baked[key]

    return bake


USER_FILES = {
    "protocol.py": "app/protocol.py",
    "lifespan.py": "app/lifespan.py",
    "settings.py": "app/settings.py",
    "__main__.py": "app/__main__.py",
    "test_protocol.py": "tests/test_protocol.py",
}
"""A generated example's files (``docs/examples/<name>/``), and the user's files they replace."""


def swap_in(baked: Path, example: str, destination: Path) -> Path:
    """A copy of the bake with the example's files in place of the echo's."""
    project = destination / baked.name
    shutil.copytree(baked, project)
    folder = project / "docs" / "examples" / example
    assert sorted(p.name for p in folder.iterdir()) == sorted(USER_FILES), folder
    for name, target in USER_FILES.items():
        shutil.copy2(folder / name, project / target)
    return project


def journal_lines(content: bytes) -> list[str]:
    """The requests in a generated service's journal file, as text lines.

    The file starts with a header line (``# servicekit journal 2: ...``) and each record ends
    with a space and the CRC-32 of the request in 8 hex digits; both are dropped here.
    """
    lines = content.decode().split("\n")
    assert lines.pop() == "", "a journal ends on a whole line"
    if lines and lines[0].startswith("# servicekit journal 2:"):
        lines = lines[1:]
    for line in lines:
        request = line[:-9]
        assert line[-9:] == f" {zlib.crc32(request.encode()):08x}", f"bad record {line!r}"
    return [line[:-9] for line in lines]


def run(*args: str | Path, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, never raise on a non-zero exit."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        **kwargs,  # type: ignore[call-overload]
    )


def with_dispositions(disposition: signal.Handlers, argv: Sequence[str]) -> list[str]:
    """``argv`` started with SIGINT and SIGHUP set to ``disposition``, whatever ours are.

    The template's suite may itself run under ``nohup`` or as a background job, with both
    ignored, and a child inherits that. A Python trampoline sets them and execs: an ignored
    signal stays ignored across exec and a default one stays default (Python then installs its
    KeyboardInterrupt handler for SIGINT), so the command starts as a terminal (``SIG_DFL``)
    or ``nohup ... &`` (``SIG_IGN``) would start it.
    """
    code = (
        "import os, signal, sys\n"
        "disposition = signal.Handlers(int(sys.argv[1]))\n"
        "for s in (signal.SIGINT, signal.SIGHUP): signal.signal(s, disposition)\n"
        "os.execvp(sys.argv[2], sys.argv[2:])\n"
    )
    python = getattr(sys, "_base_executable", sys.executable)
    return [python, "-c", code, str(int(disposition)), *map(str, argv)]


def git(*args: str, cwd: Path) -> str:
    """Git with a fixed identity, so commits work on a machine with no git config."""
    result = run(
        "git",
        "-c",
        "user.name=Template Test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "commit.gpgsign=false",
        "-c",
        "init.defaultBranch=main",
        *args,
        cwd=cwd,
    )
    assert result.returncode == 0, f"git {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


def copy_template(destination: Path) -> Path:
    """The template as it is in this working tree (committed or not), as a fresh git repo.

    Generation from a clone, a zip or with cruft has to see today's edits, not the last commit,
    and cruft needs a repository whose commits it can record.
    """
    listed = run(
        "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=TEMPLATE
    )
    if listed.returncode != 0:  # not a git checkout: everything but the usual caches
        names = [
            str(p.relative_to(TEMPLATE))
            for p in TEMPLATE.rglob("*")
            if p.is_file() and not {".git", ".venv", "build", "__pycache__"} & set(p.parts)
        ]
    else:
        names = [name for name in listed.stdout.split("\0") if name]
    for name in names:
        source = TEMPLATE / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git("init", "-q", cwd=destination)
    git("add", "-A", cwd=destination)
    git("commit", "-q", "-m", "template", cwd=destination)
    return destination


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the template as it is in this working tree."""
    return copy_template(tmp_path_factory.mktemp("template") / "aiorun-template")


@pytest.fixture(scope="session")
def docker_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A client for the engine at DOCKER_HOST, or a skip (a failure with --require-docker)."""
    from dockerlib import unavailable, write_figures

    try:
        import docker
    except ImportError:
        unavailable(request.config, "the docker SDK is not installed (pip install docker)")
    where = os.environ.get("DOCKER_HOST", "the default socket")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:  # requests errors are OSErrors
        unavailable(request.config, f"no Docker engine answers at {where} ({exc})")
    yield client
    write_figures()
    client.close()
