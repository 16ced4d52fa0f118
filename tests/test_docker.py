"""The generated image against a real Docker Engine: `docker stop` is a graceful, fast exit.

What is proven here, on every base (Debian bookworm with Python 3.11, trixie with 3.13, forky
with 3.14, sid's python3.15):

* the image builds from the baked project with nothing but the package index;
* it runs as a non-root user, and neither `.env` nor a secret in it reaches any layer, the
  history or the configuration;
* the service answers through the project's own client and Docker's health probe;
* with several connections open, `docker stop -t 10` ends it with exit 0, far inside the grace
  period; `docker logs` show the shutdown phases; the journal on the volume has every line;
* negative control: the same service behind a shell-form CMD with no signal handler ignores
  SIGTERM and is SIGKILLed at the end of a short grace period, exit 137;
* the project's own test suite passes inside the 3.14 and 3.15 images, under
  -W error::DeprecationWarning;
* any accepted description reaches the image's label unchanged (`'`, `&`, `<`, `$`, `é`).

The tests talk to whatever engine DOCKER_HOST points at, through the `docker` SDK. Without one
they skip, naming `scripts/docker-engine.sh`, which starts a private engine and builds the local
base images (no registry is needed). `pytest --require-docker` (or REQUIRE_DOCKER=1) turns the
skip into a failure, as CI does. Containers use the host's network, and the service is bound to
127.0.0.1 in them, so every byte stays on loopback.

The figures (build time, image size, stop time) are printed in the test output; with
AIORUN_DOCKER_FIGURES=path they are also written there as JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import journal_lines
from dockerlib import base_image, build_app_image
from dockerlib import bases as _bases
from dockerlib import build as _build
from dockerlib import free_port as _free_port
from dockerlib import logs as _logs
from dockerlib import report as _report
from dockerlib import wait_for as _wait_for

docker = pytest.importorskip(
    "docker", reason="the docker SDK is not installed (pip install docker)"
)

FIXTURES = Path(__file__).resolve().parent / "docker_fixtures"
SELFTEST_VERSIONS = ["3.14", "3.15"]

STOP_TIMEOUT = 10  # the explicit `docker stop -t`, Docker's default grace period
STOP_TARGET = 1.5  # seconds; the graceful stop should take a fraction of the grace period
CONTROL_TIMEOUT = 2  # the short `-t` of the negative control
CONNECTIONS = 5


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def secret() -> str:
    """A fake secret, written to the baked project's .env; it must reach no image."""
    return f"fake-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def baked(bake: Callable[..., Path], secret: str) -> Path:
    """A project baked with Docker on, with a .env that holds a (fake) secret."""
    project = bake(project_name="Docker Echo", use_docker=True)
    (project / ".env").write_text(f"APP_LOG_LEVEL=INFO\nDEPLOY_TOKEN={secret}\n")
    return project


@pytest.fixture(scope="session", params=sorted(_bases()))
def python_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def app_image(
    request: pytest.FixtureRequest, docker_client: Any, baked: Path, python_version: str
) -> Iterator[Any]:
    """The baked project's image on one base, built once per session."""
    tag = f"aiorun-template-test/app:{python_version}-{uuid.uuid4().hex[:8]}"
    image, seconds = build_app_image(request.config, docker_client, baked, python_version, tag)
    base = _bases()[python_version]
    size_mb = image.attrs["Size"] / 1e6
    _report(
        request.config,
        f"build_seconds_{python_version}",
        round(seconds, 1),
        f"python {python_version}: image built in {seconds:.1f}s from {base}",
    )
    _report(
        request.config,
        f"image_mb_{python_version}",
        round(size_mb, 1),
        f"python {python_version}: image size {size_mb:.1f} MB",
    )
    yield image
    docker_client.images.remove(image.id, force=True)


@pytest.fixture
def run_container(docker_client: Any) -> Iterator[Callable[..., Any]]:
    """Start containers on the host network; remove them and their volumes afterwards."""
    started: list[Any] = []
    volumes: list[str] = []

    def run(image: Any, port: int, **kwargs: Any) -> Any:
        volume = f"aiorun-test-{uuid.uuid4().hex[:12]}"
        volumes.append(volume)
        environment = {"APP_HOST": "127.0.0.1", "APP_PORT": str(port), "APP_LOG_LEVEL": "INFO"}
        container = docker_client.containers.run(
            image.id,
            detach=True,
            network_mode="host",
            environment=environment,
            volumes={volume: {"bind": "/data", "mode": "rw"}},
            **kwargs,
        )
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove(force=True, v=True)
    for volume in volumes:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(volume).remove(force=True)


# --------------------------------------------------------------------------- helpers


def _client(project: Path, port: int, *messages: str, count: int = 1) -> list[str]:
    """Echo through the project's own client, from the host, as a user would."""
    env = {**os.environ, "APP_PORT": str(port), "PYTHONPATH": str(project)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "servicekit.client",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--count",
            str(count),
            *messages,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _exchange(sock: socket.socket, line: bytes) -> None:
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before the echo of {line!r}"
        reply += chunk
    assert reply == line


def _read_file(container: Any, path: str) -> bytes:
    """A file from a (stopped) container's filesystem or volume, through the archive API."""
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read()


def _stop(container: Any, timeout: int) -> tuple[float, int]:
    """`docker stop -t timeout`; return how long it took and the exit status."""
    started = time.monotonic()
    container.stop(timeout=timeout)
    seconds = time.monotonic() - started
    status = container.wait(timeout=30)["StatusCode"]
    return seconds, int(status)


# --------------------------------------------------------------------------- tests


def test_image_config(app_image: Any) -> None:
    """The settings that make `docker stop` work and keep the image safe are in the image."""
    config = app_image.attrs["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["User"] == "10001:10001"  # numeric, so runAsNonRoot can check it
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["python", "-m", "app"]  # exec form: no /bin/sh -c
    assert not config.get("Cmd")
    # Liveness: a service busy at its connection limit is alive, not broken.
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "servicekit.health", "--live"]
    assert "/data" in config["Volumes"]
    assert env["APP_HOST"] == "0.0.0.0"
    assert env["APP_JOURNAL_PATH"].startswith("/data/")
    assert env["PYTHONUNBUFFERED"] == "1"


def test_docker_stop_is_graceful(
    request: pytest.FixtureRequest,
    app_image: Any,
    baked: Path,
    run_container: Callable[..., Any],
    python_version: str,
) -> None:
    """Echo, hold connections open, `docker stop -t 10`: exit 0, fast, drained, all journaled."""
    port = _free_port()
    # Docker's own health machinery, with the image's probe command, polled often for the test.
    container = run_container(
        app_image,
        port,
        healthcheck={
            "interval": 200_000_000,
            "timeout": 3_000_000_000,
            "retries": 3,
            "start_period": 0,
        },
    )
    _wait_for(
        "'listening on' line",
        lambda: f"listening on 127.0.0.1:{port}" in _logs(container),
        container,
    )

    uid = container.exec_run(["sh", "-c", "stat -c %u /proc/1"]).output.decode().strip()
    assert uid not in ("", "0"), f"PID 1 runs as uid {uid!r}"

    echoed = [f"{python_version}-client-{i}" for i in range(3)]
    assert _client(baked, port, *echoed) == echoed

    def healthy() -> bool:
        container.reload()
        return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")

    _wait_for("healthy status", healthy, container)

    sockets = [
        socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CONNECTIONS)
    ]
    try:
        for i, sock in enumerate(sockets):
            line = f"{python_version}-held-{i}"
            _exchange(sock, line.encode() + b"\n")
            echoed.append(line)
        seconds, status = _stop(container, STOP_TIMEOUT)
    finally:
        for sock in sockets:
            sock.close()

    logs = _logs(container)
    _report(
        request.config,
        f"stop_seconds_{python_version}",
        round(seconds, 3),
        f"python {python_version}: docker stop -t {STOP_TIMEOUT} took {seconds:.3f}s "
        f"with {CONNECTIONS} connections open, exit {status}",
    )
    assert status == 0, logs
    assert seconds < STOP_TARGET, f"stop took {seconds:.2f}s\n{logs}"
    for phase in ("stopped accepting connections", "journal flushed:", "shutdown: complete in"):
        assert phase in logs, f"no {phase!r} in docker logs:\n{logs}"
    draining = re.search(r"draining (\d+) connection\(s\)", logs)
    assert draining and int(draining.group(1)) >= CONNECTIONS, logs
    assert "Traceback" not in logs, logs

    journal = journal_lines(_read_file(container, "/data/journal.log"))
    assert sorted(journal) == sorted(echoed)


def test_shell_form_without_handler_is_killed(
    request: pytest.FixtureRequest,
    docker_client: Any,
    app_image: Any,
    run_container: Callable[..., Any],
    python_version: str,
) -> None:
    """Negative control: shell-form CMD, no SIGTERM handler -> SIGKILL after -t, exit 137."""
    tag = f"{app_image.tags[0]}-no-handler"
    image, _, _ = _build(
        docker_client,
        tag,
        path=str(FIXTURES),
        dockerfile="Dockerfile.no-handler",
        buildargs={"APP_IMAGE": app_image.id},
    )
    try:
        assert image.attrs["Config"]["Cmd"][:2] == ["/bin/sh", "-c"]  # shell form
        port = _free_port()
        container = run_container(image, port)
        _wait_for(
            "'listening on' line",
            lambda: f"listening on 127.0.0.1:{port}" in _logs(container),
            container,
        )
        pid1 = container.exec_run(["cat", "/proc/1/cmdline"]).output.replace(b"\0", b" ")
        seconds, status = _stop(container, CONTROL_TIMEOUT)
        _report(
            request.config,
            f"control_stop_seconds_{python_version}",
            round(seconds, 3),
            f"python {python_version}: negative control (PID 1: {pid1.decode().strip()}), "
            f"docker stop -t {CONTROL_TIMEOUT} took {seconds:.3f}s, exit {status}",
        )
        assert status == 137, _logs(container)
        assert seconds >= CONTROL_TIMEOUT - 0.1
        assert "journal flushed" not in _logs(container)
    finally:
        docker_client.images.remove(image.id, force=True)


def test_no_secret_in_image(app_image: Any, secret: str) -> None:
    """`.env` and its secret are in no layer, not in the history, not in the configuration."""
    found: list[str] = []
    needle = secret.encode()
    saved = io.BytesIO(b"".join(app_image.save(named=False)))
    with tarfile.open(fileobj=saved) as archive:
        for member in archive.getmembers():
            blob = archive.extractfile(member) if member.isfile() else None
            data = blob.read() if blob is not None else b""
            if needle in data:  # layers are saved uncompressed: this sees file contents too
                found.append(f"secret in {member.name}")
            if _is_tar(data):  # a layer (layer.tar, or an OCI blob on newer engines)
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    found += [
                        f"{member.name}: {entry.name}"
                        for entry in layer.getmembers()
                        if Path(entry.name).name == ".env"
                    ]
    assert secret not in json.dumps(app_image.history())
    assert secret not in json.dumps(app_image.attrs)
    assert not found, found


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


@pytest.mark.parametrize("python_version", SELFTEST_VERSIONS, indirect=True)
def test_project_suite_in_container(
    request: pytest.FixtureRequest,
    docker_client: Any,
    app_image: Any,
    baked: Path,
    python_version: str,
) -> None:
    """The generated project's own tests pass on the image's Python, not only the host's."""
    if not any((baked / "tests").glob("test_*.py")):
        pytest.skip("the baked project has no tests yet")
    tag = f"{app_image.tags[0]}-selftest"
    image, build_seconds, _ = _build(
        docker_client,
        tag,
        path=str(baked),
        dockerfile=str(FIXTURES / "Dockerfile.selftest"),
        buildargs={"APP_IMAGE": app_image.id},
    )
    # --init: pytest is not meant to be PID 1 (the reaper of every orphan its tests leave).
    container = docker_client.containers.run(image.id, detach=True, network_mode="host", init=True)
    try:
        started = time.monotonic()
        status = container.wait(timeout=900)["StatusCode"]
        seconds = time.monotonic() - started
        output = _logs(container)
    finally:
        container.remove(force=True, v=True)
        docker_client.images.remove(image.id, force=True)
    summary = output.strip().splitlines()[-1] if output.strip() else "(no output)"
    _report(
        request.config,
        f"project_suite_seconds_{python_version}",
        round(seconds, 1),
        f"python {python_version}: project suite in the image: {summary} "
        f"(build {build_seconds:.1f}s, run {seconds:.1f}s)",
    )
    assert status == 0, output[-8000:]


TRICKY_DESCRIPTION = "Tom's café & <bar> costs $5 (${HOME}) — ünïcödé"


def test_label_and_port_survive_any_accepted_text(
    request: pytest.FixtureRequest, docker_client: Any, bake: Callable[..., Path]
) -> None:
    """Built for real and read back with `docker inspect`: the label is the text as written."""
    base = base_image(request.config, docker_client, "3.14")
    project = bake(project_name="Label Test", description=TRICKY_DESCRIPTION, port="80")
    tag = f"aiorun-template-test/label:{uuid.uuid4().hex[:8]}"
    image, _, _ = _build(docker_client, tag, path=str(project), buildargs={"PYTHON_IMAGE": base})
    try:
        inspected = subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config}}", image.id],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        config = json.loads(inspected.stdout)
        labels = config["Labels"]
        assert labels["org.opencontainers.image.description"] == TRICKY_DESCRIPTION
        assert labels["org.opencontainers.image.title"] == "label-test"
        assert config["User"] == "10001:10001"
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["APP_PORT"] == "8080"  # port 80 is privileged: the container uses 8080
        assert list(config["ExposedPorts"]) == ["8080/tcp"]
    finally:
        docker_client.images.remove(image.id, force=True)


# --------------------------------------------------------------------------- no engine needed


def test_compose_grace_period_covers_shutdown(baked: Path) -> None:
    """compose.yaml: the grace period before SIGKILL exceeds the service's shutdown timeout."""
    compose = yaml.safe_load((baked / "compose.yaml").read_text())
    service = compose["services"]["app"]
    grace = _seconds(service["stop_grace_period"])
    timeout = float(service["environment"]["APP_SHUTDOWN_TIMEOUT"])
    assert grace > timeout
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "servicekit.health", "--live"]
    assert any(str(v).endswith(":/data") for v in service["volumes"])
    assert "network_mode" not in service


def test_dockerfile_builds_with_either_builder(baked: Path) -> None:
    """No BuildKit-only syntax and no frontend to pull, so the classic builder works too."""
    text = (baked / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in instructions if "--mount" in line]
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d\.\d+-slim$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "-m", "app"\]$', text, re.MULTILINE)
    ignored = (baked / ".dockerignore").read_text().splitlines()
    for entry in (".env", ".git", ".venv", "data"):
        assert entry in ignored


def _seconds(duration: str) -> float:
    """A compose duration such as '15s', '1m30s' or '500ms', in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts, duration
    return sum(float(value) * units[unit] for value, unit in parts)
