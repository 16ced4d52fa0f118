"""The deployment files of a baked project, checked offline: no cluster, no Docker engine.

- ``deploy/kubernetes`` is rendered with kustomize (built into kubectl) exactly as
  ``kubectl apply -k`` would send it, and every resource is validated against the Kubernetes
  OpenAPI schemas shipped by PyPI ``kubernetes-validate``, in strict mode (unknown fields are
  errors), for the oldest and the newest Kubernetes the manifests are meant for.
- The shutdown budget holds: preStop delay + APP_SHUTDOWN_TIMEOUT + margin fits in
  terminationGracePeriodSeconds, with the numbers read from the rendered manifests, and the
  check is shown to fail on a budget that does not fit.
- ``compose.yaml`` is validated by Docker Compose itself (``docker compose config``, or the
  Debian ``docker-compose`` package), which is shown to reject a broken file.

kubectl and Compose are not Python packages: without them these tests skip, except under CI
(``CI`` set), where a missing tool is a failure. ``.ci/run`` installs Debian's
``docker-compose``; kubectl comes with the CI machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import Bake

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""1.30 is the first release with the preStop ``sleep`` action on by default; 1.37 the newest
schema kubernetes-validate ships."""
MARGIN = 2.0
"""Seconds the grace period must leave after preStop + APP_SHUTDOWN_TIMEOUT: the interpreter's
exit, and the multi-worker supervisor's wait beyond the timeout (servicekit/supervisor.py)."""
KUBERNETES = Path("deploy/kubernetes")
RAW_MANIFESTS = ("deployment.yaml", "service.yaml", "poddisruptionbudget.yaml")
Resource = dict[str, Any]


def require_tool(command: list[str] | None, what: str, install: str) -> list[str]:
    """The command, or a skip (a failure under CI) that says how to get it."""
    if command is not None:
        return command
    message = f"{what} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def kustomize_command() -> list[str] | None:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


def compose_command() -> list[str] | None:
    """Compose v2 (the docker CLI plugin) if present, else the standalone docker-compose."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=60
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    if legacy := shutil.which("docker-compose"):
        return [legacy]
    return None


def render(folder: Path) -> list[Resource]:
    """What ``kubectl apply -k folder`` would send to the cluster."""
    command = require_tool(kustomize_command(), "kubectl", "it ships kustomize")
    result = subprocess.run(
        [*command, str(folder)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(resources: list[Resource]) -> dict[str, Resource]:
    kinds = {resource["kind"]: resource for resource in resources}
    assert len(kinds) == len(resources), "one resource of each kind expected"
    return kinds


def app_container(deployment: Resource) -> Resource:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "app")


def budget(resources: list[Resource]) -> tuple[float, float, float]:
    """(preStop seconds, APP_SHUTDOWN_TIMEOUT, terminationGracePeriodSeconds) as deployed."""
    kinds = by_kind(resources)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = app_container(kinds["Deployment"])
    pre_stop = float(container["lifecycle"]["preStop"]["sleep"]["seconds"])
    config = kinds["ConfigMap"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    timeout = float(config["data"]["APP_SHUTDOWN_TIMEOUT"])
    return pre_stop, timeout, float(pod["terminationGracePeriodSeconds"])


def budget_problem(resources: list[Resource]) -> str | None:
    """Why the shutdown does not fit in the grace period, or None if it does."""
    pre_stop, timeout, grace = budget(resources)
    if pre_stop <= 0:
        return f"no preStop delay ({pre_stop}s): the endpoints-removal race is uncovered"
    if pre_stop + timeout + MARGIN > grace:
        return (
            f"preStop {pre_stop}s + APP_SHUTDOWN_TIMEOUT {timeout}s + margin {MARGIN}s"
            f" > terminationGracePeriodSeconds {grace}s"
        )
    return None


def seconds(duration: str | int | float) -> float:
    """A Compose duration (``15s``, ``1m30s``, or a bare number of seconds) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def project(bake: Bake) -> Path:
    return bake()  # the defaults have use_docker on


@pytest.fixture(scope="module")
def rendered(project: Path) -> list[Resource]:
    return render(project / KUBERNETES)


def test_manifests_exist_only_with_docker(project: Path, bake: Bake) -> None:
    for name in ("kustomization.yaml", *RAW_MANIFESTS, "README.md"):
        assert (project / KUBERNETES / name).is_file(), name
    assert not (bake(use_docker=False) / "deploy").exists()


def test_rendered_manifests_are_the_expected_resources(rendered: list[Resource]) -> None:
    assert sorted(r["kind"] for r in rendered) == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    ]
    assert all(r["metadata"]["name"].startswith("echo-service") for r in rendered)
    # the shutdown-budget ConfigMap is kustomize's own input, never sent to the cluster
    assert not any(r["metadata"]["name"] == "shutdown-budget" for r in rendered)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(
    project: Path, rendered: list[Resource], version: str
) -> None:
    raw = [
        doc
        for name in RAW_MANIFESTS
        for doc in yaml.safe_load_all((project / KUBERNETES / name).read_text())
        if doc
    ]
    for resource in [*rendered, *raw]:
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {exc.message}")


def test_schema_validation_can_fail(rendered: list[Resource]) -> None:
    deployment = by_kind(rendered)["Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    app_container(broken)["securityContext"]["readOnlyRootFileSystem"] = True  # typo: wrong case
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_shutdown_fits_in_the_grace_period(rendered: list[Resource]) -> None:
    assert budget_problem(rendered) is None
    pre_stop, timeout, grace = budget(rendered)
    print(f"kubernetes budget: preStop {pre_stop}s + shutdown {timeout}s < grace {grace}s")


def test_budget_check_catches_a_grace_period_that_is_too_short(
    project: Path, tmp_path: Path
) -> None:
    """Edit the one place the numbers live; the rendered manifests must follow, and fail."""
    folder = tmp_path / "kubernetes"
    shutil.copytree(project / KUBERNETES, folder)
    kustomization = folder / "kustomization.yaml"
    text = kustomization.read_text()
    edited = re.sub(r"terminationGracePeriodSeconds=\d+", "terminationGracePeriodSeconds=12", text)
    assert edited != text
    kustomization.write_text(edited)
    resources = render(folder)
    assert budget(resources)[2] == 12.0, "the grace period is not wired from the budget"
    problem = budget_problem(resources)
    assert problem is not None
    assert "> terminationGracePeriodSeconds 12.0s" in problem


def test_pods_are_wired_to_the_service_the_budget_and_the_volume(
    rendered: list[Resource],
) -> None:
    kinds = by_kind(rendered)
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for selector in (
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"],
        kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()

    container = app_container(deployment)
    config = kinds["ConfigMap"]["data"]
    assert config["APP_HOST"] == "0.0.0.0"
    assert config["APP_JOURNAL_PATH"] == "/data/journal/journal.log"
    port = int(config["APP_PORT"])
    metrics = int(config["APP_METRICS_PORT"])
    assert container["ports"] == [
        {"name": "echo", "containerPort": port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": metrics, "protocol": "TCP"},
    ]
    assert service["spec"]["ports"][0]["targetPort"] == "echo"

    # HTTP probes on the metrics port: readiness fails at the connection limit (a full pod is
    # taken out of the Service), liveness does not (it is not restarted).
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": metrics}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": metrics}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics)
    assert annotations["prometheus.io/path"] == "/metrics"
    liveness = container["livenessProbe"]
    _, _, grace = budget(rendered)
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= grace, (
        "liveness could restart a pod that is only draining"
    )
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()

    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "/data" in mounts
    assert "emptyDir" in volumes[mounts["/data"]]


def test_answers_flow_into_the_manifests(bake: Bake) -> None:
    project = bake(project_name="Ping Pong", port="9999", author="Ada O'Hara")
    kinds = by_kind(render(project / KUBERNETES))
    assert app_container(kinds["Deployment"])["ports"][0]["containerPort"] == 9999
    assert kinds["Service"]["spec"]["ports"][0]["port"] == 9999
    assert app_container(kinds["Deployment"])["image"] == release_reference("ping-pong")
    assert {r["metadata"]["name"] for r in kinds.values() if r["kind"] != "ConfigMap"} == {
        "ping-pong"
    }


DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
"""A Service name (RFC 1035 label): the strictest name rule among the resources."""
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
"""The name rule for the other kinds (RFC 1123 subdomain)."""


@pytest.mark.parametrize("slug", ["echo_service", "2fa.proxy", "x" * 32 + "_" + "y" * 31])
def test_any_accepted_slug_makes_names_kubernetes_accepts(bake: Bake, slug: str) -> None:
    """Python projects are often called ``my_service``; the API server refuses ``_`` in a
    resource name, a Service name starting with a digit or a '.', or one over 63 characters,
    and the schema check above does not look at names."""
    kinds = by_kind(render(bake(project_slug=slug) / KUBERNETES))
    assert DNS_LABEL.fullmatch(kinds["Service"]["metadata"]["name"]), kinds["Service"]
    for resource in kinds.values():
        assert DNS_SUBDOMAIN.fullmatch(resource["metadata"]["name"]), resource["metadata"]
    deployment, config = kinds["Deployment"], kinds["ConfigMap"]
    [source] = app_container(deployment)["envFrom"]
    assert source["configMapRef"]["name"] == config["metadata"]["name"]
    selector = kinds["Service"]["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


@pytest.fixture(scope="module")
def compose() -> Iterator[list[str]]:
    yield require_tool(
        compose_command(), "Docker Compose", "apt-get install docker-compose, or the compose plugin"
    )


def run_compose(
    compose: list[str], folder: Path, *args: str, files: tuple[str, ...] = ("compose.yaml",)
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "APP_"))}
    chosen = [option for name in files for option in ("-f", str(folder / name))]
    return subprocess.run(
        [*compose, "--project-directory", str(folder), *chosen, *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_compose_file_validates(project: Path, compose: list[str]) -> None:
    result = run_compose(compose, project, "config")
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["app"]
    timeout = float(service["environment"]["APP_SHUTDOWN_TIMEOUT"])
    grace = seconds(service["stop_grace_period"])
    assert timeout + MARGIN <= grace, f"compose: shutdown {timeout}s vs stop_grace_period {grace}s"


def test_compose_build_overlay_builds_this_folder(project: Path, compose: list[str]) -> None:
    """compose.build.yaml turns the release compose.yaml runs into a build of the project."""
    files = ("compose.yaml", "compose.build.yaml")
    result = run_compose(compose, project, "config", files=files)
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["app"]
    assert Path(service["build"]["context"]) == project
    assert service["image"] == f"{project.name}:dev"
    assert service["stop_grace_period"], "the rest is compose.yaml's"


def release_reference(slug: str) -> str:
    return f"ghcr.io/owner/{slug}:0.1.0@sha256:{'0' * 64}"


def test_every_deployment_names_the_release_by_tag_and_digest(project: Path) -> None:
    """Compose, Swarm and Kubernetes run one release, named by version and digest: a release
    is one edit in each (the reference the release notes print), and nothing runs ':latest'."""
    reference = release_reference(project.name)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert compose["services"]["app"]["image"] == reference
    assert "build" not in compose["services"]["app"], "the build is compose.build.yaml's"
    stack = yaml.safe_load((project / "deploy" / "swarm" / "stack.yaml").read_text())
    assert stack["services"]["app"]["image"] == "${IMAGE:-" + reference + "}"
    deployment = by_kind(render(project / KUBERNETES))["Deployment"]
    assert app_container(deployment)["image"] == reference
    for path in [project / "compose.yaml", *(project / "deploy").rglob("*.yaml")]:
        assert ":latest" not in path.read_text(), path


def test_compose_validation_can_fail(project: Path, compose: list[str], tmp_path: Path) -> None:
    text = (project / "compose.yaml").read_text()
    broken = text.replace("    stop_signal:", "    stop_signals:", 1)
    assert broken != text
    (tmp_path / "compose.yaml").write_text(broken)
    result = run_compose(compose, tmp_path, "config", "--quiet")
    assert result.returncode != 0
    assert "stop_signals" in result.stderr


# --------------------------------------------------------------------------- with state

STATEFUL_SWITCH = "# components:\n#   - stateful\n"
"""The two commented lines in kustomization.yaml that switch the stateful component on."""
STATEFUL_FILES = (
    "deploy/kubernetes/stateful/kustomization.yaml",
    "deploy/kubernetes/stateful/statefulset.yaml",
    "deploy/kubernetes/stateful/service-pods.yaml",
    "deploy/kubernetes/stateful/pod-template/kustomization.yaml",
)


def switch_to_stateful(project: Path, destination: Path) -> Path:
    """deploy/kubernetes with the stateful component switched on, as its comment says."""
    folder = destination / "kubernetes"
    shutil.copytree(project / KUBERNETES, folder)
    kustomization = folder / "kustomization.yaml"
    text = kustomization.read_text()
    assert STATEFUL_SWITCH in text, "the documented switch is not in kustomization.yaml"
    kustomization.write_text(text.replace(STATEFUL_SWITCH, "components:\n  - stateful\n"))
    return folder


@pytest.fixture(scope="module")
def stateful(project: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Resource]:
    return render(switch_to_stateful(project, tmp_path_factory.mktemp("stateful")))


def one(resources: list[Resource], kind: str) -> Resource:
    [resource] = [r for r in resources if r["kind"] == kind]
    return resource


def test_the_stateful_variant_replaces_the_deployment_with_a_statefulset(
    stateful: list[Resource],
) -> None:
    assert sorted(r["kind"] for r in stateful) == [
        "ConfigMap",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "StatefulSet",
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_stateful_variant_validates_against_the_kubernetes_schemas(
    project: Path, stateful: list[Resource], version: str
) -> None:
    for name in STATEFUL_FILES:
        assert (project / name).is_file(), name
    for resource in stateful:
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {exc.message}")


def test_a_replaced_pod_gets_its_journal_back(stateful: list[Resource]) -> None:
    """One pod, whose /data is a claim of its own that outlives it, and a scale-down."""
    statefulset = one(stateful, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["mountPath"]: m["name"] for m in app_container(statefulset)["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    volumes = {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert claim["metadata"]["name"] not in volumes, "an emptyDir would shadow the claim"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    config = one(stateful, "ConfigMap")["data"]
    assert config["APP_JOURNAL_PATH"].startswith("/data/")
    assert config["APP_WORKERS"] == "1", "several workers would each hold their own state"
    headless = [s for s in stateful if s["kind"] == "Service" and s["spec"].get("clusterIP")]
    assert [s["metadata"]["name"] for s in headless] == [spec["serviceName"]]
    assert headless[0]["spec"]["clusterIP"] == "None"


def test_the_stateful_pod_is_the_deployments_pod(
    rendered: list[Resource], stateful: list[Resource]
) -> None:
    """Probes, security, resources and budget are written once: only /data differs."""
    deployment = by_kind(rendered)["Deployment"]["spec"]["template"]
    statefulset = one(stateful, "StatefulSet")["spec"]["template"]
    without_data = yaml.safe_load(yaml.safe_dump(deployment))
    without_data["spec"]["volumes"] = [
        v for v in without_data["spec"]["volumes"] if v["name"] != "data"
    ]
    assert statefulset == without_data


def test_the_stateful_budget_comes_from_the_one_place_and_fits(
    project: Path, tmp_path: Path
) -> None:
    folder = switch_to_stateful(project, tmp_path)
    kustomization = folder / "kustomization.yaml"
    text = kustomization.read_text()
    edited = re.sub(r"terminationGracePeriodSeconds=\d+", "terminationGracePeriodSeconds=12", text)
    kustomization.write_text(re.sub(r"preStopSeconds=\d+", "preStopSeconds=3", edited))
    statefulset = one(render(folder), "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 12
    assert app_container(statefulset)["lifecycle"]["preStop"]["sleep"]["seconds"] == 3
