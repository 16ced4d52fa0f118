"""Build the C load generator (procs/loadgen.c) with the machine's `cc`, once per source change.

Why at bench time: a binary cannot be committed for every machine, and a C client is what keeps
the load generator from being the bottleneck (see loadgen.c). The binary goes to bench/.build/
(gitignored) and is rebuilt when the source is newer. Without a compiler the bench falls back to
procs/loadgen.py and the report says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
SOURCE = BENCH_DIR / "procs" / "loadgen.c"
BUILD_DIR = BENCH_DIR / ".build"


def build() -> tuple[Path | None, str]:
    """Return (binary, how it was built) or (None, why the Python client is used instead).

    BENCH_LOADGEN=python forces the fallback (to compare the two clients, or to check it).
    """
    if os.environ.get("BENCH_LOADGEN") == "python":
        return None, "BENCH_LOADGEN=python was set"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler (`cc`) on this machine"
    binary = BUILD_DIR / "loadgen"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary, f"{compiler} -O2 (cached in {binary.parent})"
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None, f"`{compiler}` failed to build loadgen.c: {result.stderr.strip()[-300:]}"
    partial.replace(binary)  # atomic, so concurrent bench runs never run a half-written file
    return binary, f"{compiler} -O2"
