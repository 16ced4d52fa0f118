"""The generated ``compose.yaml`` run for real: ``up --build``, traffic, ``stop``, exit status.

The baked project's ``compose.yaml`` is used as shipped, with its ``compose.build.yaml`` (which
builds the project instead of pulling the release compose.yaml names) and one override file
for this machine (written by the test): the locally built Python base image instead of the
registry's, and the host's network for the build and the container (these machines allow no
bridge, so the port mapping of compose.yaml is taken out; the service binds 127.0.0.1 on a
free port instead). Everything else -- the build, the environment, ``stop_signal``,
``stop_grace_period``, the health check and the ``journal`` volume -- is compose.yaml's own.

Proven: the image builds and the container becomes healthy through compose.yaml's health
check; lines are echoed; ``docker-compose stop`` with a connection open ends the service with
exit status 0, far inside ``stop_grace_period``, with the shutdown phases in the logs and
every echoed line in the journal on the named volume.

The Compose here is Debian bookworm's ``docker-compose`` 1.29 (v1). The v2 plugin
(``docker compose``) is used instead where it is installed; it could not be had on the
machines this was written on: bookworm packages none, Docker's own repositories and GitHub
releases are not reachable, and there is no Go toolchain to build it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import journal_lines
from dockerlib import bases, free_port, report, unavailable
from test_deploy import compose_command, seconds

VERSION = "3.11"
COMPOSE_HINT = "install it with `apt-get install docker-compose` (.ci/run does)"
WAIT_LIMIT = 90.0  # the health check's first run comes after its 10 s interval


def _override(port: int, base: str) -> dict[str, Any]:
    return {
        "services": {
            "app": {
                "build": {"args": {"PYTHON_IMAGE": base}, "network": "host"},
                "network_mode": "host",
                "environment": {"APP_HOST": "127.0.0.1", "APP_PORT": str(port)},
            }
        }
    }


def test_compose_up_and_stop(
    request: pytest.FixtureRequest,
    docker_client: Any,
    bake: Callable[..., Path],
    tmp_path: Path,
) -> None:
    compose = compose_command()
    if compose is None:
        unavailable(request.config, "Docker Compose is not installed", COMPOSE_HINT)
        return
    project = bake(project_name="Compose Echo", use_docker=True)
    port = free_port()
    override = tmp_path / "compose.host-network.yaml"
    override.write_text(yaml.safe_dump(_override(port, bases()[VERSION])))
    name = f"aiorun-compose-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "APP_"))}
    # Compose v1 cannot delete a key in an override, and a host-network container cannot
    # have port bindings: `ports:` is the one line of compose.yaml taken out.
    shipped = yaml.safe_load((project / "compose.yaml").read_text())
    assert shipped["services"]["app"].pop("ports")
    base_file = tmp_path / "compose.yaml"
    base_file.write_text(yaml.safe_dump(shipped))
    files = ["-f", str(base_file), "-f", str(project / "compose.build.yaml"), "-f", str(override)]

    def run(*args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [*compose, "-p", name, "--project-directory", str(project), *files, *args],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        output = result.stdout.decode(errors="replace")
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{output[-4000:]}"
        return output

    try:
        started = time.monotonic()
        run("up", "-d", "--build")
        up_seconds = time.monotonic() - started
        container_id = run("ps", "-q", "app").strip()
        container = docker_client.containers.get(container_id)

        def healthy() -> bool:
            container.reload()
            state = container.attrs["State"]
            assert state["Status"] == "running", run("logs", "--no-color")
            return bool(state.get("Health", {}).get("Status") == "healthy")

        deadline = time.monotonic() + WAIT_LIMIT
        while not healthy():
            assert time.monotonic() < deadline, f"not healthy in time:\n{run('logs')}"
            time.sleep(0.2)
        assert f"listening on 127.0.0.1:{port}" in run("logs", "--no-color")

        lines = [f"compose-{i}" for i in range(5)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            reader = sock.makefile("rb")
            for line in lines:
                sock.sendall(line.encode() + b"\n")
                assert reader.readline() == line.encode() + b"\n"
            started = time.monotonic()
            run("stop")
            stop_seconds = time.monotonic() - started

        container.reload()
        status = container.attrs["State"]["ExitCode"]
        logs = run("logs", "--no-color")
        grace = seconds(container.attrs["Config"].get("StopTimeout") or 10)
        volume = docker_client.volumes.get(f"{name}_journal")
        journal = journal_lines(Path(volume.attrs["Mountpoint"], "journal.log").read_bytes())
        version = run("version", "--short").strip()
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            run("down", "--volumes", "--rmi", "local", timeout=120)
        with contextlib.suppress(Exception):
            docker_client.images.remove("compose-echo:dev", force=True)
    report(
        request.config,
        "compose_stop_seconds",
        round(stop_seconds, 2),
        f"compose {version}: up --build took {up_seconds:.1f}s; stop with a connection open took "
        f"{stop_seconds:.2f}s (grace {grace:g}s), exit {status}",
        "compose",
    )
    assert status == 0, logs
    assert grace == 15, "stop_grace_period of compose.yaml did not reach the container"
    assert stop_seconds < grace / 2, logs
    for phase in ("stopped accepting connections", "journal flushed:", "shutdown: complete in"):
        assert phase in logs, logs
    assert "Traceback" not in logs, logs
    assert sorted(journal) == sorted(lines)
