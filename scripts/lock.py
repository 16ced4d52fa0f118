"""Regenerate the generated project's uv.lock: python scripts/lock.py (needs uv and PyPI).

Every project ships a lock, but what it locks depends on two answers: the project's name (its
own entry in the lock) and use_uvloop. So the template's ``uv.lock`` is a Jinja file holding
two locks that uv produced from the template's own ``pyproject.toml``, one with uvloop and one
without, with the project's name put back in by Jinja. uv normalises the name the way
cookiecutter's ``slugify`` filter does for any slug the pre-generation check accepts.

Run it after changing the dependencies in ``{{cookiecutter.project_slug}}/pyproject.toml``;
the template's suite (``uv lock --check`` on every bake) fails until then.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.environment import StrictEnvironment

TEMPLATE = Path(__file__).resolve().parent.parent
PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
PLACEHOLDER = "lock-placeholder-project"
INDEX = "https://pypi.org/simple"  # what users resolve against, whatever this machine uses


def render_pyproject(use_uvloop: bool) -> str:
    answers = {
        "project_slug": PLACEHOLDER,
        "description": "x",
        "author": "x",
        "license": "MIT",
        "use_uvloop": use_uvloop,
    }
    environment = StrictEnvironment(keep_trailing_newline=True)
    source = (PROJECT / "pyproject.toml").read_text(encoding="utf-8")
    return environment.from_string(source).render(cookiecutter=answers)


def lock(use_uvloop: bool) -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "pyproject.toml").write_text(render_pyproject(use_uvloop), encoding="utf-8")
        (project / "README.md").write_text("x\n")
        (project / "LICENSE").write_text("x\n")
        subprocess.run(
            [uv, "lock", "--no-config", "--default-index", INDEX, "--quiet"],
            cwd=project,
            check=True,
        )
        return (project / "uv.lock").read_text(encoding="utf-8")


def as_jinja(text: str) -> str:
    """The lock with its own name taken from the answers, the rest verbatim."""
    before, after = text.split(f'name = "{PLACEHOLDER}"')
    assert PLACEHOLDER not in after
    name = '{% endraw %}name = "{{ cookiecutter.project_slug | slugify }}"{% raw %}'
    return "{% raw %}" + before + name + after + "{% endraw %}"


def main() -> int:
    with_uvloop, without = lock(True), lock(False)
    text = (
        "{% if cookiecutter.use_uvloop -%}\n"
        + as_jinja(with_uvloop)
        + "\n{%- else -%}\n"
        + as_jinja(without)
        + "\n{%- endif %}"
    )
    (PROJECT / "uv.lock").write_text(text, encoding="utf-8")
    print(f"wrote {PROJECT / 'uv.lock'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
