"""The rendered Kubernetes manifests run by a real engine: ``podman kube play``.

``deploy/kubernetes`` is rendered with kustomize exactly as ``kubectl apply -k`` would send it
(the offline schema checks are in test_deploy.py), and that output is played by podman: the
ConfigMap feeds the environment, the Deployment's pod template becomes a pod with the
generated image, its security context, volumes and probes. Proven: the pod starts as uid
10001 on a read-only root filesystem; podman turned the liveness probe into its health check
on ``/livez``; both ``httpGet`` probes pass when made as the kubelet makes them, from outside
the container; traffic is echoed; a graceful stop of the pod ends the service with exit
status 0 and every echoed line in the journal on the pod's ``data`` volume.

Podman runs an ``httpGet`` liveness probe as ``curl`` inside the container, which the slim
Python image does not have; the kubelet makes the request itself, so the image needs no HTTP
client, and this test makes the requests as the kubelet would.

What the test changes in the rendered output, and why (nothing else):

* ``APP_HOST``/``APP_PORT``/``APP_METRICS_PORT`` in the ConfigMap, and the probes' port: 127.0.0.1
  and free ports, because the pod uses the host's network here (these machines allow no bridge);
* ``replicas: 1``: two pods on one host network would fight over the port;
* the container's ``ports:`` are dropped: podman turns them into port mappings, which a
  host-network pod cannot have;
* the volumes get unique names: podman 4.3 makes each ``emptyDir`` a named volume called
  after it (``data``, ``tmp``), and would share or delete someone else's;
* the container's image: the release reference the manifests name (a ghcr.io tag with a
  placeholder digest, filled in per release) becomes the image built here from the project.

Podman before 5.1 SIGKILLs the containers on ``podman kube down`` (podman issue #22397,
fixed by PR #22398); the stop is therefore ``podman pod stop`` (SIGTERM, then SIGKILL after
the stop timeout), and ``kube down`` only removes what is left, as the podman maintainers
advise for those versions. Needs podman (scripts/podman.sh), kubectl, and the Docker engine
to build the image; skips without them, fails under --require-docker.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import journal_lines
from dockerlib import build_app_image, free_port, report, unavailable
from test_deploy import KUBERNETES, app_container, by_kind, render

PODMAN_HINT = "install and configure it with `sudo scripts/podman.sh`"
VERSION = "3.11"
WAIT_LIMIT = 60.0


def _podman(*args: str, check: bool = True, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        ["podman", *args], input=stdin, capture_output=True, timeout=300, check=False
    )
    output = result.stdout.decode(errors="replace")
    if check:
        assert result.returncode == 0, (
            f"podman {' '.join(args)} exited {result.returncode}:\n"
            f"{output}\n{result.stderr.decode(errors='replace')}"
        )
    return output


@pytest.fixture(scope="module")
def podman(request: pytest.FixtureRequest) -> str:
    if shutil.which("podman") is None:
        unavailable(request.config, "podman is not installed", PODMAN_HINT)
    version = _podman("version", "--format", "{{.Client.Version}}").strip()
    return version


@pytest.fixture(scope="module")
def project(bake: Callable[..., Path]) -> Path:
    return bake(project_name="Podman Echo", use_docker=True)


@pytest.fixture(scope="module")
def image(
    request: pytest.FixtureRequest, docker_client: Any, podman: str, project: Path
) -> Iterator[str]:
    """The generated image, built by the Docker engine and loaded into podman."""
    tag = f"aiorun-podman-test/app:{uuid.uuid4().hex[:8]}"
    built, _ = build_app_image(request.config, docker_client, project, VERSION, tag)
    try:
        archive = b"".join(built.save(named=True))
    finally:
        docker_client.images.remove(built.id, force=True)
    loaded = _podman("load", stdin=archive)
    assert tag in loaded, loaded
    name = "podman-echo:dev"
    _podman("tag", tag, name)
    yield name
    _podman("rmi", "--force", name, f"localhost/{tag}", check=False)


def _for_this_machine(
    resources: list[dict[str, Any]], port: int, metrics: int, suffix: str, image: str
) -> str:
    """The rendered manifests with the changes listed in the module docstring, as YAML."""
    kinds = by_kind(resources)
    config = next(r for r in resources if r["kind"] == "ConfigMap")
    config["data"].update(APP_HOST="127.0.0.1", APP_PORT=str(port), APP_METRICS_PORT=str(metrics))
    deployment = kinds["Deployment"]
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    container = app_container(deployment)
    container["image"] = image
    container.pop("ports")
    for probe in ("readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = metrics
    for volume in pod["volumes"]:
        volume["name"] += suffix
    for mount in container["volumeMounts"]:
        mount["name"] += suffix
    return yaml.safe_dump_all(resources)


def _http_status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def _wait_until(what: str, check: Callable[[], bool], log: Callable[[], str]) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT_LIMIT:g}s\n{log()}")
        time.sleep(0.1)


def test_kube_play_runs_the_deployment(
    request: pytest.FixtureRequest, podman: str, image: str, project: Path, tmp_path: Path
) -> None:
    resources = render(project / KUBERNETES)
    deployment = by_kind(resources)["Deployment"]
    assert app_container(deployment)["image"].startswith("ghcr.io/owner/podman-echo:0.1.0@")
    port, metrics = free_port(), free_port()
    suffix = f"-{uuid.uuid4().hex[:8]}"
    manifest = tmp_path / "kube.yaml"
    manifest.write_text(_for_this_machine(resources, port, metrics, suffix, image))

    played = _podman("kube", "play", "--network", "host", str(manifest))
    pod_id = re.search(r"Pod:\s*\n([0-9a-f]{64})", played)
    assert pod_id, played
    pod = pod_id[1]
    try:
        names = _podman("pod", "inspect", pod, "--format", "{{range .Containers}}{{.Name}} {{end}}")
        container = next(n for n in names.split() if n.endswith("-app"))

        def log() -> str:  # the service logs to stderr, which podman logs gives back there
            result = subprocess.run(
                ["podman", "logs", container],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
            return result.stdout.decode(errors="replace")

        _wait_until("'listening on' line", lambda: f"listening on 127.0.0.1:{port}" in log(), log)
        inspected = _podman(
            "inspect",
            container,
            "--format",
            "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.Config.StopTimeout}} "
            "{{.HostConfig.Memory}} {{json .Config.Healthcheck.Test}}",
        ).split(maxsplit=4)
        user, read_only, stop_timeout, memory, health = inspected
        assert user.split(":")[0] == "10001" and read_only == "true", inspected
        assert f":{metrics}/livez" in health, health  # podman's form of the liveness probe

        # The probes as the kubelet makes them: a GET from outside, any 2xx or 3xx passes.
        for probe in ("livenessProbe", "readinessProbe"):
            path = app_container(deployment)[probe]["httpGet"]["path"]
            status = _http_status(metrics, path)
            assert 200 <= status < 400, f"{probe} {path}: {status}\n{log()}"

        lines = [f"podman-{i}" for i in range(5)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            reader = sock.makefile("rb")
            for line in lines:
                sock.sendall(line.encode() + b"\n")
                assert reader.readline() == line.encode() + b"\n"

            started = time.monotonic()
            _podman("pod", "stop", pod)
            seconds = time.monotonic() - started
        status = _podman("inspect", container, "--format", "{{.State.ExitCode}}").strip()
        logs = log()
        volume = _podman("volume", "inspect", f"data{suffix}", "--format", "{{.Mountpoint}}")
        journal = journal_lines(Path(volume.strip(), "journal", "journal.log").read_bytes())
    finally:
        _podman("kube", "down", str(manifest), check=False)
        _podman("pod", "rm", "--force", pod, check=False)
        for name in ("data", "tmp"):
            _podman("volume", "rm", "--force", name + suffix, check=False)
    report(
        request.config,
        "podman_stop_seconds",
        round(seconds, 2),
        f"podman {podman}: pod stop took {seconds:.2f}s with a connection open, exit {status} "
        f"(stop timeout {stop_timeout}s, memory limit {int(memory) >> 20} MiB)",
        "podman",
    )
    assert status == "0", logs
    for phase in ("stopped accepting connections", "journal flushed:", "shutdown: complete in"):
        assert phase in logs, logs
    assert "Traceback" not in logs, logs
    assert sorted(journal) == sorted(lines)
