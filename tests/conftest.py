"""Options shared by the template's tests: engines that must be present in CI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def docker_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A client for the engine at DOCKER_HOST, or a skip (a failure with --require-docker)."""
    from dockerlib import unavailable, write_figures

    try:
        import docker
    except ImportError:
        unavailable(request.config, "the docker SDK is not installed (pip install docker)")
    where = os.environ.get("DOCKER_HOST", "the default socket")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:  # requests errors are OSErrors
        unavailable(request.config, f"no Docker engine answers at {where} ({exc})")
    yield client
    write_figures()
    client.close()
