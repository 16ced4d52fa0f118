"""What the tests that need a Docker engine share: finding the engine, skipping or failing
when it is missing, building images, waiting, and reporting figures.

A test module uses it as ``from dockerlib import ...``; the ``docker_client`` fixture is in
``conftest.py``. Without an engine the tests skip with a reason naming the setup script, and
``--require-docker`` (or REQUIRE_DOCKER=1) turns the skip into a failure, as CI does.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ENGINE_SCRIPT = "scripts/docker-engine.sh"
SETUP_HINT = (
    f"start one with `sudo {ENGINE_SCRIPT}` and export the DOCKER_HOST line it prints "
    f"(or `source {ENGINE_SCRIPT}`)"
)
# Base images per Python version; scripts/docker-engine.sh builds these with debootstrap.
# AIORUN_DOCKER_BASES="3.11=python:3.11-slim,3.13=python:3.13-slim" uses others instead.
DEFAULT_BASES = {v: f"aiorun-template/python:{v}" for v in ("3.11", "3.13", "3.14", "3.15")}
WAIT_LIMIT = 30.0  # bound on waiting for a log line or a health status; catches hangs only

FIGURES: dict[str, Any] = {}


def bases() -> dict[str, str]:
    raw = os.environ.get("AIORUN_DOCKER_BASES", "")
    if not raw:
        return dict(DEFAULT_BASES)
    pairs = (item.split("=", 1) for item in raw.split(",") if item.strip())
    return {version.strip(): image.strip() for version, image in pairs}


def required(config: pytest.Config) -> bool:
    return bool(config.getoption("--require-docker", default=False)) or (
        os.environ.get("REQUIRE_DOCKER") == "1"
    )


def unavailable(config: pytest.Config, why: str, hint: str = SETUP_HINT) -> None:
    """Skip, naming what is missing and the script that sets it up; fail if it is required."""
    message = f"{why}; {hint}"
    if required(config):
        pytest.fail(f"Docker tests are required here but cannot run: {message}", pytrace=False)
    pytest.skip(message)


def report(config: pytest.Config, key: str, value: Any, text: str, tag: str = "docker") -> None:
    """Put a measured figure in the test output, and in the figures file if one is asked for."""
    FIGURES[key] = value
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    line = f"[{tag}] {text}"
    lines_for_controller = getattr(config, "workeroutput", None)
    if lines_for_controller is not None:  # an xdist worker's terminal is nobody's
        lines_for_controller.setdefault("figures", []).append(line)  # conftest prints them
        return
    if reporter is None or capture is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():  # shown even when output is captured
        reporter.write_line(line)


def write_figures() -> None:
    path = os.environ.get("AIORUN_DOCKER_FIGURES")
    if path and FIGURES:
        Path(path).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def logs(container: Any) -> str:
    return str(container.logs(stdout=True, stderr=True).decode(errors="replace"))


def wait_for(
    what: str,
    check: Callable[[], bool],
    container: Any | None = None,
    limit: float = WAIT_LIMIT,
) -> None:
    """Poll a condition (a log line, a health status) until it holds; fail after ``limit``."""
    deadline = time.monotonic() + limit
    while not check():
        if container is not None:
            container.reload()
            if container.status not in ("created", "running"):
                pytest.fail(f"container exited before {what}:\n{logs(container)}")
        if time.monotonic() > deadline:
            text = logs(container) if container is not None else ""
            pytest.fail(f"no {what} within {limit:g}s\n{text}")
        time.sleep(0.05)


def build(client: Any, tag: str, **kwargs: Any) -> tuple[Any, float, str]:
    """Build with the engine's classic builder on the host network; return image, secs, log."""
    started = time.monotonic()
    log: list[str] = []
    for chunk in client.api.build(
        tag=tag, network_mode="host", rm=True, forcerm=True, pull=False, decode=True, **kwargs
    ):
        if "stream" in chunk:
            log.append(chunk["stream"])
        if "error" in chunk:
            pytest.fail(f"docker build of {tag} failed: {chunk['error']}\n{''.join(log)[-4000:]}")
    return client.images.get(tag), time.monotonic() - started, "".join(log)


def build_app_image(
    config: pytest.Config, client: Any, project: Path, version: str, tag: str
) -> tuple[Any, float]:
    """The baked project's image on the local base for ``version``; skip if that is missing."""
    base = base_image(config, client, version)
    image, seconds, _ = build(client, tag, path=str(project), buildargs={"PYTHON_IMAGE": base})
    return image, seconds


def base_image(config: pytest.Config, client: Any, version: str) -> str:
    """The base image for a Python version, present on the engine, or a skip (a failure)."""
    import docker

    base = bases().get(version)
    if base is None:
        unavailable(config, f"AIORUN_DOCKER_BASES names no base for Python {version}")
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        unavailable(config, f"base image {base} is missing")
    return str(base)
