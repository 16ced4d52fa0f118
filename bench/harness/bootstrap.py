"""Create the bench's own virtual environment and re-run the bench inside it.

Why: the comparison needs aiorun 2025.1.1 and matplotlib, which the template itself must not
depend on, so the bench installs them into a private venv (bench/.venv by default, gitignored)
from the package index. The venv is reused while bench/requirements.txt and the Python version
are unchanged; a stamp file inside it records what it was built from. Stdlib only: this runs
under whatever interpreter the user started `bench/run.py` with.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS = BENCH_DIR / "requirements.txt"
STAMP_NAME = "bench-stamp.txt"


def venv_dir() -> Path:
    """Where the bench venv lives: $BENCH_VENV if set, else bench/.venv."""
    return Path(os.environ.get("BENCH_VENV", BENCH_DIR / ".venv")).resolve()


def _wanted_stamp() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"{sys.version_info[0]}.{sys.version_info[1]} {digest}\n"


def _venv_python(where: Path) -> Path:
    return where / "bin" / "python"


def running_inside(where: Path) -> bool:
    """True when this interpreter is the bench venv's own."""
    return Path(sys.prefix).resolve() == where


def ensure_venv(where: Path) -> Path:
    """Build or refresh the venv (under a file lock, so concurrent runs don't race) and
    return its interpreter."""
    where.parent.mkdir(parents=True, exist_ok=True)
    lock_path = where.parent / (where.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = where / STAMP_NAME
        if stamp.exists() and stamp.read_text() == _wanted_stamp():
            return _venv_python(where)
        print(f"bench: building {where} (one-off, ~15 s)", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=not stamp.exists()).create(where)
        subprocess.run(
            [
                str(_venv_python(where)),
                "-m",
                "pip",
                "install",
                "-qq",
                "--disable-pip-version-check",
                "-r",
                str(REQUIREMENTS),
            ],
            check=True,
        )
        stamp.write_text(_wanted_stamp())
    return _venv_python(where)


def reexec_in_venv(script: Path, argv: list[str]) -> None:
    """Replace this process with the same command run by the bench venv's Python,
    unless we already are that Python."""
    where = venv_dir()
    if running_inside(where):
        return
    python = ensure_venv(where)
    os.execv(str(python), [str(python), str(script), *argv])
