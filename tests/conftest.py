"""Options shared by the template's tests: engines that must be present in CI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-docker",
        action="store_true",
        help="fail, instead of skipping, when no Docker engine answers (CI)",
    )
    parser.addoption(
        "--require-wine",
        action="store_true",
        help="fail, instead of skipping, when Wine or the Windows Python is missing (CI)",
    )


TEMPLATE = Path(__file__).resolve().parent.parent
Bake = Callable[..., Path]


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
