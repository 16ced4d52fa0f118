"""Bake a project from the template at the repository root, with every default answer.

Why copy first: the working tree may hold build debris (``__pycache__/*.pyc``, venvs) that
cookiecutter would try to render as templates. The files git knows about (tracked, plus new
files not ignored) are copied to a scratch folder and baked from there, so the bench measures
exactly the template as it stands in the working tree, uncommitted edits included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BASELINE_COMMIT = "5c8c445"
"""Today's echo-first design (reply first, journal after; streams; one send per line): the
service every new figure is compared with side by side. Baked from git, so it stays fixed
while the working tree moves on."""


SKIPPED_WITHOUT_GIT = (
    "__pycache__",
    ".venv",
    ".git",
    "build",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
)


def _template_files(root: Path) -> list[str]:
    """Files git knows (tracked, or new and not ignored); outside git, all but known debris."""
    try:
        listing = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            check=True,
            capture_output=True,
        ).stdout.decode()
        files = [name for name in listing.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = [
            str(path.relative_to(root))
            for path in root.rglob("*")
            if not any(part in SKIPPED_WITHOUT_GIT for part in path.relative_to(root).parts)
            and path.suffix != ".pyc"
        ]
    return [name for name in files if not name.startswith("bench/") and (root / name).is_file()]


def describe_template(root: Path = REPO_ROOT) -> str:
    """The commit the template is at, marked '+dirty' when the working tree differs."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", ".", ":!bench"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def bake(workdir: Path, root: Path = REPO_ROOT) -> Path:
    """Render the template with defaults into `workdir`; return the project folder."""
    from cookiecutter.main import cookiecutter  # bench venv only

    template = workdir / "template"
    for name in _template_files(root):
        target = template / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    project = cookiecutter(
        str(template), no_input=True, output_dir=str(workdir / "baked"), overwrite_if_exists=True
    )
    return compiled(Path(project))


def bake_baseline(workdir: Path, commit: str = BASELINE_COMMIT, root: Path = REPO_ROOT) -> Path:
    """Bake the template as it was at `commit` (git archive of the repository); return the
    project folder. Raises RuntimeError with the reason when that commit cannot be had."""
    from cookiecutter.main import cookiecutter  # bench venv only

    template = workdir / f"template-{commit}"
    template.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", "--format=tar", commit],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(template)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise RuntimeError(
            f"cannot read commit {commit} from git at {root}: "
            f"{detail.decode(errors='replace').strip() or exc}"
        ) from exc
    project = cookiecutter(
        str(template.resolve()),
        no_input=True,
        output_dir=str(workdir / f"baked-{commit}"),
        overwrite_if_exists=True,
    )
    return compiled(Path(project))


def compiled(project: Path) -> Path:
    """Compile the project's .pyc files, as an installed service has them, and return it.

    Why here, for every section: a process started with PYTHONDONTWRITEBYTECODE set (as in
    many containers, and shells) compiles its modules at every start, and the compiler's
    freed memory stays in the heap. Measured from such a start, the first 5,000 idle
    connections reused it, and the footprint read 1.65 KiB per connection instead of 2.02
    with the same RSS at the end (bench/NOTES.md): a figure that depended on whether the
    start-up section had run first."""
    packages = [p for p in project.iterdir() if (p / "__init__.py").is_file()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *map(str, packages)], check=True)
    return project
