"""The reference services in the generated project's ``docs/examples/``, swapped in for real.

Each example is written only in the user's files (``app/protocol.py``, ``app/lifespan.py``,
``app/settings.py``, ``app/__main__.py`` and ``tests/test_protocol.py``). The project is baked,
those files are copied over the echo's, and then the generated suite must pass unchanged,
the example's own tests included, and the project must stay clean under ruff and
``mypy --strict`` (Linux and Windows). Nothing inherited is touched: the test checks that
too, by comparing ``servicekit/`` and ``tests/servicekit/`` with the bake's.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Bake, swap_in

EXAMPLES = ("notes", "kv", "chat")


def inherited_files_unchanged(baked: Path, project: Path) -> list[str]:
    changed = []
    for folder in ("servicekit", "tests/servicekit"):
        comparison = filecmp.dircmp(baked / folder, project / folder, ignore=["__pycache__"])
        changed += comparison.diff_files + comparison.left_only + comparison.right_only
    for name in ("tests/conftest.py", "pyproject.toml"):
        if not filecmp.cmp(baked / name, project / name, shallow=False):
            changed.append(name)
    return changed


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("APP_")}


@pytest.fixture(scope="module", params=EXAMPLES)
def example(request: pytest.FixtureRequest, bake: Bake, tmp_path_factory: pytest.TempPathFactory):
    baked = bake()
    project = swap_in(baked, request.param, tmp_path_factory.mktemp(request.param))
    assert inherited_files_unchanged(baked, project) == []
    return project


def test_the_generated_suite_passes_with_the_example(example: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=example,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-6000:]}{result.stderr[-2000:]}"
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed, result.stdout[-2000:]
    print(f"{example.name}: {result.stdout.strip().splitlines()[-1]}")


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_the_example_is_clean_under_ruff_and_mypy(example: Path, platform: str) -> None:
    for command in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", *command], cwd=example, capture_output=True, text=True,
            check=False, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--platform", platform, "app", "servicekit"],
        cwd=example,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
