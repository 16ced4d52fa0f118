"""Shape the generated project to the answers: prune what was turned off, record the answers.

cookiecutter (and cruft) run this inside the new project folder. Whole files and folders that
an answer turns off are deleted here, in one list, so what each answer owns is visible in one
place.

Nothing here reads the template folder: its address (``_repo_dir``) is relative to a working
directory the hook no longer has, and cruft does not pass it at all. The files kept outside
the project folder (``templates/Dockerfile.template``, ``templates/licenses/``) reach the
project through Jinja includes in its ``Dockerfile`` and ``LICENSE``: cookiecutter looks
for included files in the template's ``templates/`` folder while it renders, from the template
folder itself, whether that is a relative or absolute path, a clone or an unpacked zip.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OWNED_BY_ANSWER: Mapping[str, tuple[str, ...]] = {
    "use_docker": (
        "Dockerfile",
        ".dockerignore",
        "compose.yaml",
        "compose.build.yaml",
        "deploy",
        ".github/workflows/release.yml",
    ),
    "windows_scripts": (
        "scripts/windows",
        "scripts/launcher_demo.py",
        "docs/windows.md",
        "servicekit/launcher.py",
        "tests/servicekit/test_launcher.py",
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


def privileged_port_warning(answers: Mapping[str, Any]) -> str | None:
    """A container port below 1024 cannot be bound by the image's unprivileged user."""
    port = int(answers["port"])
    if not answers["use_docker"] or port >= 1024:
        return None
    return (
        f"warning: port {port} is privileged; the container listens on {port + 8000} and "
        f"compose.yaml and the Kubernetes Service publish it as {port}"
    )


def record_answers(project: Path, answers: Mapping[str, Any]) -> None:
    """Write ``.cookiecutter.json`` so the project can be regenerated or updated later.

    It is a cookiecutter replay file (``cookiecutter --replay-file .cookiecutter.json
    TEMPLATE``), also readable by cruft. Only the answers and the template's address are kept:
    local paths of the machine that generated it would mean nothing anywhere else.
    """
    kept = {key: value for key, value in answers.items() if not key.startswith("_")}
    if "_template" in answers:
        kept["_template"] = answers["_template"]
    text = json.dumps({"cookiecutter": kept}, indent=2, ensure_ascii=False)
    (project / ".cookiecutter.json").write_text(text + "\n", encoding="utf-8")


def main(project: Path, answers: Mapping[str, Any]) -> int:
    prune(project, answers)
    record_answers(project, answers)
    warning = privileged_port_warning(answers)
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path.cwd(), json.loads(r"""{{ cookiecutter | tojson }}""")))
