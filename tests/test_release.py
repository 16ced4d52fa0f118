"""The generated release workflow: what it publishes, with what rights, and its image, built here.

`.github/workflows/release.yml` runs only on GitHub when a version tag is pushed, so two
parts are checked here. Statically: the trigger, the permissions (nothing by default, the
job only what pushing and releasing need), the two platforms, the attestations, and that the
release notes carry the digest the build step reports. On a real engine: the image the
workflow describes is built from the same context, Dockerfile and build arguments, for
linux/amd64, and runs. Two substitutions, both forced by this machine: the base image is the
local one (PYTHON_IMAGE, the Dockerfile's one build argument, which the workflow leaves at its
default; no registry is reachable here), and the builder is the engine's classic one rather
than buildx. What cannot be exercised here at all: the push to ghcr.io with its SBOM and
provenance attestations (they are made by BuildKit during the push), the release itself, and
linux/arm64 (the local bases are amd64 only and no emulator is registered). The README says so.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerlib import base_image, build

VERSION = "3.14"  # the default answer, so the Dockerfile's default base is python:3.14-slim


def release_workflow(project: Path) -> dict[str, Any]:
    workflow = yaml.safe_load((project / ".github" / "workflows" / "release.yml").read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on` as true
    return dict(workflow)


def build_step(workflow: dict[str, Any]) -> dict[str, Any]:
    (job,) = workflow["jobs"].values()
    (step,) = [s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    return dict(step["with"])


def test_release_runs_on_version_tags_with_least_privilege(bake: Callable[..., Path]) -> None:
    workflow = release_workflow(bake())
    assert workflow["on"] == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}
    assert workflow["permissions"] == {}, "nothing by default"
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "write", "packages": "write"}
    assert workflow["concurrency"]["cancel-in-progress"] is False, "never cancelled half-pushed"


def test_release_pushes_both_platforms_with_attestations_and_reports_the_digest(
    bake: Callable[..., Path],
) -> None:
    workflow = release_workflow(bake())
    built = build_step(workflow)
    assert built["platforms"].split(",") == ["linux/amd64", "linux/arm64"]
    assert built["push"] is True
    assert built["sbom"] is True
    assert built["provenance"] == "mode=max"
    (job,) = workflow["jobs"].values()
    uses = [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]
    assert "docker/setup-qemu-action" in uses, "arm64 is built under emulation"
    (release,) = [s for s in job["steps"] if "gh release create" in s.get("run", "")]
    assert release["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert "${DIGEST}" in release["run"]


def test_release_workflow_is_pruned_without_docker(bake: Callable[..., Path]) -> None:
    assert not (bake(use_docker=False) / ".github" / "workflows" / "release.yml").exists()


def test_release_image_builds_here_for_amd64(
    request: pytest.FixtureRequest, docker_client: Any, bake: Callable[..., Path]
) -> None:
    project = bake()
    built = build_step(release_workflow(project))
    arguments = dict(line.split("=", 1) for line in built.get("build-args", "").split())
    assert not set(arguments) - {"UV_VERSION"}, f"pass these here too: {arguments}"
    dockerfile = (project / built["file"]).read_text()
    assert re.search(rf"^ARG PYTHON_IMAGE=python:{VERSION}-slim$", dockerfile, re.MULTILINE)
    arguments["PYTHON_IMAGE"] = base_image(request.config, docker_client, VERSION)
    tag = f"aiorun-template-release:{uuid.uuid4().hex[:12]}"
    image, _, _ = build(
        docker_client,
        tag,
        path=str(project / built["context"]),
        dockerfile=built["file"],
        buildargs=arguments,
        platform="linux/amd64",
    )
    try:
        assert image.attrs["Os"] == "linux"
        assert image.attrs["Architecture"] == "amd64"
        output = docker_client.containers.run(
            tag,
            ["--help"],
            remove=True,
            network_mode="none",  # the ENTRYPOINT is python -m app
        )
        assert b"APP_PORT" in output
    finally:
        docker_client.images.remove(image.id, force=True)
