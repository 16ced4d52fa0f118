"""The generated project's inner loop: `pytest -m quick`.

A change to `app/protocol.py` should not cost the whole inherited suite (minutes) on every
run. The quick run holds every test of `tests/test_protocol.py` (the user's, marked by the
conftest so the user marks nothing) and a smoke of each inherited guarantee (marked where
they are defined). Its time, about 12 s on the 2-core development machine, is measured and
reported in the README rather than asserted here, where the machine's load would decide it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import Bake, run

SMOKED = ("test_service.py", "test_journal.py", "test_reliability.py", "test_aiorun.py")
"""Inherited files with at least one test in the quick run: signals and drain, the journal
through kill -9, a forced exit, the runtime in process."""


def collected(project: Path, *args: str) -> list[str]:
    result = run(
        sys.executable,
        "-m",
        "pytest",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        *args,
        cwd=project,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_quick_runs_every_protocol_test_and_a_smoke_of_the_rest(bake: Bake) -> None:
    project = bake()
    everything = collected(project)
    quick = collected(project, "-m", "quick")
    protocol = [test for test in everything if test.startswith("tests/test_protocol.py::")]
    assert protocol, "the user's tests were not collected"
    assert set(protocol) <= set(quick), "every test of tests/test_protocol.py is quick"
    inherited = {Path(test.split("::")[0]).name for test in quick if test not in protocol}
    assert set(SMOKED) <= inherited, inherited
    assert len(quick) * 10 < len(everything), f"{len(quick)} of {len(everything)} is no smoke"
