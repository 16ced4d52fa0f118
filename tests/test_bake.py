"""Bake the template with each option on its own, all on and all off, and check each project.

A baked project must be complete (nothing left unrendered), lint-clean, and pass its own test
suite: that is what a user gets on day one.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import TEMPLATE, Bake, run
from cookiecutter.main import cookiecutter

VARIANTS: dict[str, dict[str, object]] = {
    "all-on": {},  # the defaults turn every option on
    "all-off": {"use_uvloop": False, "use_docker": False, "windows_scripts": False},
    "no-uvloop": {"use_uvloop": False},
    "no-docker": {"use_docker": False},
    "no-windows": {"windows_scripts": False},
    "python-3.11": {"python_version": "3.11"},
    "python-3.15": {"python_version": "3.15"},
}
LEFTOVER_JINJA = re.compile(r"\{\{-?\s*cookiecutter\b|\{%-?\s")
DOCKER_FILES = ("Dockerfile", ".dockerignore", "compose.yaml", "compose.build.yaml")
FIGURES = TEMPLATE / "build" / "reliability.jsonl"
WINDOWS_FILES = ("servicekit/launcher.py", "scripts/windows/run.bat", "scripts/windows/run.ps1")


def project_files(project: Path) -> list[Path]:
    return [p for p in project.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


BIN = Path(sys.executable).parent


@pytest.fixture(params=list(VARIANTS), scope="module")
def variant(request: pytest.FixtureRequest, bake: Bake) -> tuple[str, Path]:
    return request.param, bake(**VARIANTS[request.param])


def test_nothing_is_left_unrendered(variant: tuple[str, Path]) -> None:
    _, project = variant
    for path in project_files(project):
        if path.suffix == ".png":  # a picture (docs/metrics.png) is copied, never rendered
            continue
        text = path.read_text(encoding="utf-8")
        assert not LEFTOVER_JINJA.search(text), f"{path.relative_to(project)} has Jinja left"


def test_ruff_is_clean(variant: tuple[str, Path]) -> None:
    _, project = variant
    check = run(sys.executable, "-m", "ruff", "check", ".", cwd=project)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = run(sys.executable, "-m", "ruff", "format", "--check", ".", cwd=project)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


SUITE_VARIANTS = ("all-on", "all-off")
"""Variants whose own suite runs here, through the generated workflow's own test step
(tests/test_workflow_steps.py). The others differ from all-on only in files checked
above (Dockerfile, workflow matrix) or in one option all-off also turns off; running the same
~230 process-level tests again for each would add minutes and prove nothing new."""


def test_workflows_pass_zizmor_and_actionlint(variant: tuple[str, Path]) -> None:
    """The generated CI has no finding from either linter (offline: nothing is fetched)."""
    _, project = variant
    zizmor = run(BIN / "zizmor", "--offline", "--no-progress", ".", cwd=project)
    assert zizmor.returncode == 0, zizmor.stdout + zizmor.stderr
    assert "No findings" in zizmor.stdout + zizmor.stderr, zizmor.stdout + zizmor.stderr
    workflows = sorted((project / ".github" / "workflows").glob("*.yml"))
    assert workflows
    actionlint = run(BIN / "actionlint", "-shellcheck=", "-pyflakes=", *workflows, cwd=project)
    assert actionlint.returncode == 0, actionlint.stdout + actionlint.stderr


def test_lock_is_consistent_with_pyproject(variant: tuple[str, Path]) -> None:
    """uv agrees that the shipped uv.lock is the lock of this project's pyproject.toml."""
    _, project = variant
    check = run(BIN / "uv", "lock", "--check", cwd=project, env={**os.environ, "UV_NO_CONFIG": "1"})
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_mypy_strict_is_clean(bake: Bake, platform: str) -> None:
    project = bake()
    result = run(
        sys.executable, "-m", "mypy", "--platform", platform, "app", "servicekit", cwd=project
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_is_copied_verbatim(bake: Bake) -> None:
    vendored = TEMPLATE / "{{cookiecutter.project_slug}}" / "servicekit" / "aiorun.py"
    assert (bake() / "servicekit" / "aiorun.py").read_bytes() == vendored.read_bytes()


def test_options_prune_their_files(bake: Bake) -> None:
    on, off = bake(), bake(**VARIANTS["all-off"])
    for name in (*DOCKER_FILES, *WINDOWS_FILES):
        assert (on / name).is_file(), name
        assert not (off / name).exists(), name
    assert not (off / "scripts").exists()
    assert "uvloop" in (on / "pyproject.toml").read_text()
    assert "uvloop" not in (off / "pyproject.toml").read_text()


def test_answers_flow_into_the_project(bake: Bake) -> None:
    project = bake(project_name="Ping Pong", port="9999", author="Ada O'Hara")
    assert project.name == "ping-pong"
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "ping-pong"
    assert pyproject["project"]["authors"] == [{"name": "Ada O'Hara"}]
    assert "DEFAULT_PORT = 9999" in (project / "servicekit/config.py").read_text()
    assert (project / "README.md").read_text().startswith("# Ping Pong")
    recorded = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    assert recorded["project_name"] == "Ping Pong"
    assert recorded["port"] == "9999"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("project_slug=a/b", "error: project_slug 'a/b' is not a valid folder name"),
        ("project_slug=../escape", "error: project_slug '../escape' is not a valid folder name"),
        ('project_name=Say "hi"', "error: project_name must not contain a double quote"),
        ("project_name=two\nlines", "error: project_name must not contain control characters"),
        ("port=123456", "error: port '123456' is not a number from 1 to 65535"),
    ],
)
def test_bad_answer_is_refused_and_nothing_is_left(tmp_path: Path, answer: str, message: str):
    output = tmp_path / "out"
    output.mkdir()
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(output)]
    result = run(*command, TEMPLATE, answer, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    # A slug such as a/b made cookiecutter create a/ before the hook ran; the hook's cleaner
    # removes it just after cookiecutter removed a/b. Wait for that (bounded), not a fixed time.
    deadline = time.monotonic() + 10
    while any(output.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(output.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bakes_from_a_git_clone(tmp_path: Path) -> None:
    """The path `cookiecutter gh:org/aiorun-template` takes: clone, then generate."""
    if run("git", "rev-parse", "HEAD", cwd=TEMPLATE).returncode != 0:
        pytest.skip("the template folder is not a git checkout with a commit")
    config = tmp_path / "cookiecutter.yaml"
    config.write_text(f"cookiecutters_dir: {tmp_path / 'clones'}\nreplay_dir: {tmp_path}\n")
    project = cookiecutter(
        f"git+file://{TEMPLATE}",
        no_input=True,
        output_dir=str(tmp_path / "out"),
        config_file=str(config),
    )
    assert (Path(project) / "servicekit" / "aiorun.py").is_file()
    assert (Path(project) / "Dockerfile").is_file()
