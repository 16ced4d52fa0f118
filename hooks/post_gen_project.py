"""Shape the generated project to the answers: prune what was turned off, render the Dockerfile.

cookiecutter runs this inside the new project folder. Whole files and folders that an answer
turns off are deleted here, in one list, so what each answer owns is visible in one place;
so is the uvloop dependency line of ``pyproject.toml``, which stays valid TOML before rendering
that way (tools such as ruff read it in the template folder too).

The Dockerfile is kept at the template's top level (``Dockerfile.template``), outside the
project folder, so the template's own tooling never mistakes it for a project file; it is
rendered here with the same Jinja environment and answers as every other file.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OWNED_BY_ANSWER: Mapping[str, tuple[str, ...]] = {
    "use_docker": (".dockerignore", "compose.yaml", "deploy"),
    "windows_scripts": (
        "scripts/windows",
        "scripts/launcher_demo.py",
        "app/runtime/launcher.py",
        "tests/test_launcher.py",
    ),
}


TOOL_CACHES = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis")
"""Left in the template folder by running tools in a working copy; never part of a project."""


def paths_to_remove(answers: Mapping[str, Any]) -> list[str]:
    """The project-relative paths that the answers turned off."""
    return [
        path for answer, paths in OWNED_BY_ANSWER.items() if not answers[answer] for path in paths
    ]


def prune(project: Path, answers: Mapping[str, Any]) -> None:
    """Delete what the answers turned off, folders left empty by that, and tool caches."""
    for cache in [p for name in TOOL_CACHES for p in project.rglob(name) if p.is_dir()]:
        shutil.rmtree(cache, ignore_errors=True)
    for relative in paths_to_remove(answers):
        path = project / relative
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        for parent in path.relative_to(project).parents:
            folder = project / parent
            if folder != project and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def render_dockerfile(project: Path, answers: Mapping[str, Any]) -> None:
    """Render ``Dockerfile.template`` from the template folder into ``Dockerfile``."""
    from cookiecutter.environment import StrictEnvironment  # the interpreter running us

    template = Path(answers["_repo_dir"], "Dockerfile.template").read_text(encoding="utf-8")
    environment = StrictEnvironment(
        context={"cookiecutter": dict(answers)}, keep_trailing_newline=True
    )
    text = environment.from_string(template).render(cookiecutter=answers)
    (project / "Dockerfile").write_text(text, encoding="utf-8")


def drop_uvloop_dependency(project: Path) -> None:
    """Remove the uvloop requirement line from pyproject.toml."""
    pyproject = project / "pyproject.toml"
    lines = pyproject.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith('"uvloop')]
    assert len(kept) == len(lines) - 1, "expected exactly one uvloop dependency line"
    pyproject.write_text("".join(kept), encoding="utf-8")


def record_answers(project: Path, answers: Mapping[str, Any]) -> None:
    """Write ``.cookiecutter.json`` so the project can be regenerated or updated later.

    It is a cookiecutter replay file (``cookiecutter --replay-file .cookiecutter.json
    TEMPLATE``), also readable by cruft. Only the answers and the template's address are kept:
    local paths of the machine that generated it would mean nothing anywhere else.
    """
    kept = {key: value for key, value in answers.items() if not key.startswith("_")}
    kept["_template"] = answers["_template"]
    text = json.dumps({"cookiecutter": kept}, indent=2, ensure_ascii=False)
    (project / ".cookiecutter.json").write_text(text + "\n", encoding="utf-8")


def main(project: Path, answers: Mapping[str, Any]) -> int:
    prune(project, answers)
    if not answers["use_uvloop"]:
        drop_uvloop_dependency(project)
    record_answers(project, answers)
    if answers["use_docker"]:
        render_dockerfile(project, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path.cwd(), json.loads(r"""{{ cookiecutter | tojson }}""")))
