"""Generation as users run it: every way of calling cookiecutter, cruft, licences, answers.

Each way of pointing cookiecutter at the template (the template folder itself, relative and
absolute paths, a git clone through the `gh:` abbreviation, a zip, a replay file) and cruft's
create and update run here as real commands against a git copy of this working tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import LISTENING, TEMPLATE, Bake, copy_template, git, run
from cookiecutter.main import cookiecutter
from packaging.licenses import canonicalize_license_expression
from test_bake import VARIANTS

BIN = Path(sys.executable).parent
COOKIECUTTER = [sys.executable, "-m", "cookiecutter", "--no-input"]
LICENSES = ("MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0-or-later", "Proprietary")
LICENSE_PHRASES = {
    "MIT": "Permission is hereby granted, free of charge",
    "Apache-2.0": "Apache License",
    "BSD-3-Clause": "Neither the name of the copyright holder",
    "GPL-3.0-or-later": "GNU GENERAL PUBLIC LICENSE",
    "Proprietary": "All rights reserved",
}


def cookiecutter_config(tmp_path: Path, template_repo: Path) -> Path:
    """A user config whose `gh:` abbreviation points at a local bare clone of the template."""
    remote = tmp_path / "remote" / "org" / "aiorun-template.git"
    remote.parent.mkdir(parents=True)
    git("clone", "-q", "--bare", str(template_repo), str(remote), cwd=tmp_path)
    config = tmp_path / "cookiecutter.yaml"
    config.write_text(
        f"cookiecutters_dir: {tmp_path / 'clones'}\n"
        f"replay_dir: {tmp_path / 'replay'}\n"
        "abbreviations:\n"
        f"  gh: 'git+file://{tmp_path / 'remote'}/{{0}}.git'\n"
    )
    return config


def zip_template(template_repo: Path, destination: Path) -> Path:
    """A zip such as GitHub's "Download ZIP": one top folder holding the template."""
    with zipfile.ZipFile(destination, "w") as archive:
        archive.writestr("aiorun-template-main/", "")
        for path in sorted(template_repo.rglob("*")):
            if path.is_file() and ".git" not in path.relative_to(template_repo).parts:
                archive.write(path, Path("aiorun-template-main") / path.relative_to(template_repo))
    return destination


def assert_complete_project(project: Path, answers: dict[str, str]) -> None:
    dockerfile = (project / "Dockerfile").read_text()
    assert f"python:{answers.get('python_version', '3.14')}-slim" in dockerfile
    assert "{{" not in dockerfile
    assert (project / "servicekit" / "aiorun.py").is_file()
    recorded = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    for key, value in answers.items():
        assert recorded[key] == value


WAYS = ("dot", "relative", "absolute", "gh", "zip", "replay")


@pytest.mark.parametrize("way", WAYS)
def test_every_way_of_running_cookiecutter(tmp_path: Path, template_repo: Path, way: str) -> None:
    """The same project comes out however cookiecutter is pointed at the template."""
    config = cookiecutter_config(tmp_path, template_repo)
    out = tmp_path / "out"
    answers = {"project_name": "Way Test", "python_version": "3.12"}
    given = [f"{key}={value}" for key, value in answers.items()]
    common = [*COOKIECUTTER, "--config-file", str(config), "-o", str(out)]
    caller = tmp_path / "caller"
    caller.mkdir()
    if way == "dot":
        result = run(*common, ".", *given, cwd=template_repo)
    elif way == "relative":
        relative = Path("..") / template_repo.parent.name / template_repo.name
        sibling = template_repo.parent.parent / "sibling"
        sibling.mkdir(exist_ok=True)
        result = run(*common, relative, *given, cwd=sibling)
    elif way == "absolute":
        result = run(*common, template_repo, *given, cwd=caller)
    elif way == "gh":
        result = run(*common, "gh:org/aiorun-template", *given, cwd=caller)
    elif way == "zip":
        archive = zip_template(template_repo, tmp_path / "aiorun-template-main.zip")
        result = run(*common, archive, *given, cwd=caller)
    else:
        first = run(*common, template_repo, *given, cwd=caller)
        assert first.returncode == 0, first.stderr
        replay = out / "way-test" / ".cookiecutter.json"
        again = tmp_path / "again"
        result = run(
            *COOKIECUTTER[:-1],
            "--config-file",
            str(config),
            "--replay-file",
            replay,
            "-o",
            str(again),
            template_repo,
            cwd=caller,
        )
        assert result.returncode == 0, result.stderr
        regenerated = again / "way-test"
        assert_complete_project(regenerated, answers)
        assert tree(regenerated) == tree(out / "way-test")
        return
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete_project(out / "way-test", answers)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".cookiecutter.json"
    }


# --------------------------------------------------------------------------- cruft


def cruft(*args: str | Path, cwd: Path) -> str:
    result = run(BIN / "cruft", *args, cwd=cwd)
    assert result.returncode == 0, f"cruft {args}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cruft_create_works_for_every_answer_set(
    tmp_path: Path, template_repo: Path, variant: str
) -> None:
    extra = json.dumps(VARIANTS[variant])
    cruft("create", "--no-input", "--output-dir", tmp_path, "--extra-context", extra,
          f"file://{template_repo}", cwd=tmp_path)  # fmt: skip
    (project,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == git("rev-parse", "HEAD", cwd=template_repo)
    assert (project / "app" / "__main__.py").is_file()
    assert (project / "Dockerfile").is_file() == VARIANTS[variant].get("use_docker", True)


def test_cruft_update_round_trip(tmp_path: Path) -> None:
    """Generate at commit A, edit the project, change the template in B, `cruft update`."""
    template = copy_template(tmp_path / "template")
    commit_a = git("rev-parse", "HEAD", cwd=template)
    out = tmp_path / "projects"
    out.mkdir()
    cruft("create", "--no-input", "--output-dir", out, f"file://{template}", cwd=tmp_path)
    project = out / "echo-service"
    assert json.loads((project / ".cruft.json").read_text())["commit"] == commit_a
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "generated", cwd=project)

    server = project / "servicekit" / "server.py"
    server.write_text(server.read_text() + "\n# my own change, kept across updates\n")
    git("commit", "-q", "-am", "user edit", cwd=project)

    ignore = template / "{{cookiecutter.project_slug}}" / ".gitignore"
    ignore.write_text(ignore.read_text() + "# from template commit B\n")
    git("commit", "-q", "-am", "template change", cwd=template)
    commit_b = git("rev-parse", "HEAD", cwd=template)

    cruft("update", "-y", cwd=project)
    assert "# from template commit B" in (project / ".gitignore").read_text()
    assert "# my own change, kept across updates" in server.read_text()
    assert json.loads((project / ".cruft.json").read_text())["commit"] == commit_b
    check = run(BIN / "cruft", "check", cwd=project)
    assert check.returncode == 0, check.stdout + check.stderr


BEFORE_THE_SPLIT = "cf2b14721eafff23103ff0918d49e9f9b60daf0a"
"""The last template commit whose projects kept everything in ``app/`` (before ``servicekit/``)."""

UPPERCASE_PROTOCOL = """\
async def handle(request: bytes) -> bytes:
    return request.upper()  # the user's own change


def recover(request: bytes) -> None:
    pass
"""


def test_cruft_update_across_the_split_keeps_the_users_protocol(tmp_path: Path) -> None:
    """A project generated before ``app/`` and ``servicekit/`` were split updates cleanly."""
    if run("git", "cat-file", "-e", BEFORE_THE_SPLIT, cwd=TEMPLATE).returncode != 0:
        pytest.skip("the template's git history is not here (not a clone)")
    old = tmp_path / "old"
    old.mkdir()
    archive = tmp_path / "old.tar"
    git("archive", "-o", str(archive), BEFORE_THE_SPLIT, cwd=TEMPLATE)
    shutil.unpack_archive(archive, old)
    git("init", "-q", cwd=old)
    git("add", "-A", cwd=old)
    git("commit", "-q", "-m", "before the split", cwd=old)
    out = tmp_path / "projects"
    out.mkdir()
    cruft("create", "--no-input", "--output-dir", out, f"file://{old}", cwd=tmp_path)
    project = out / "echo-service"
    assert (project / "app" / "server.py").is_file()
    git("init", "-q", cwd=project)
    (project / "app" / "protocol.py").write_text(UPPERCASE_PROTOCOL)
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "generated, then made mine", cwd=project)

    new = copy_template(tmp_path / "new")
    shutil.rmtree(old / "{{cookiecutter.project_slug}}")
    for path in new.iterdir():
        if path.name != ".git":
            target = old / path.name
            if target.is_dir():
                shutil.rmtree(target)
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
    git("add", "-A", cwd=old)
    git("commit", "-q", "-m", "the split", cwd=old)

    cruft("update", "-y", cwd=project)
    assert (project / "app" / "protocol.py").read_text() == UPPERCASE_PROTOCOL
    assert sorted(p.name for p in (project / "app").glob("*.py")) == [
        "__init__.py",
        "__main__.py",
        "lifespan.py",
        "protocol.py",
        "settings.py",
    ]
    assert (project / "servicekit" / "server.py").is_file()
    # The template's own edit of the protocol's docstring cannot apply to the user's rewrite:
    # cruft keeps the user's file and leaves that hunk beside it, and nowhere else.
    rejected = [str(p.relative_to(project)) for p in project.rglob("*.rej")]
    assert rejected == ["app/protocol.py.rej"]
    service = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=project,
        env={**os.environ, "APP_PORT": "0", "APP_JOURNAL_PATH": str(tmp_path / "j.log")},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stderr is not None
        for line in service.stderr:
            if found := LISTENING.search(line):
                break
        else:
            pytest.fail("the updated project did not start")
        with socket.create_connection((found[1], int(found[2])), timeout=10) as conn:
            conn.sendall(b"made mine\n")
            assert conn.makefile("rb").readline() == b"MADE MINE\n"
    finally:
        service.terminate()
        assert service.wait(timeout=20) == 0


def test_readme_documents_the_cruft_round_trip(bake: Bake) -> None:
    readme = (bake() / "README.md").read_text()
    for command in ("cruft create", "cruft update", "cruft check", ".cruft.json"):
        assert command in readme, command


# --------------------------------------------------------------------------- licences


def test_each_fsync_policy_says_what_it_survives(bake: Bake) -> None:
    """A reply's promise depends on what fails: a process crash, a kernel crash, a power loss
    each get a column, and each policy the service accepts a row (issue: "loses nothing, ever"
    overclaimed for the default, which a power loss can take a second of)."""
    project = bake()
    doc = (project / "docs" / "reliability.md").read_text()
    header = next(line for line in doc.splitlines() if line.startswith("| `APP_JOURNAL_FSYNC`"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert [c.split(" (")[0] for c in columns[1:4]] == [
        "Process crash",
        "Kernel crash",
        "Power loss",
    ]
    config = (project / "servicekit" / "config.py").read_text()
    policies = re.findall(r'^    \w+ = "(\w+)"$', config.split("class FsyncPolicy")[1], re.M)
    assert policies == ["always", "interval", "never"]
    for policy in policies:
        [row] = [line for line in doc.splitlines() if line.startswith(f"| `{policy}`")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == len(columns) and all(cells), row
    readme = (project / "README.md").read_text()
    assert "loses nothing" not in readme
    assert "APP_JOURNAL_FSYNC=interval" in readme.split("## Make it yours")[0]


def test_template_repo_has_an_mit_licence() -> None:
    text = (TEMPLATE / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert LICENSE_PHRASES["MIT"] in text


@pytest.mark.parametrize("licence", LICENSES)
def test_licence_answer_writes_licence_and_pep639_expression(bake: Bake, licence: str) -> None:
    project = bake(license=licence, author="Ada O'Hara")
    text = (project / "LICENSE").read_text()
    assert LICENSE_PHRASES[licence] in text
    for other, phrase in LICENSE_PHRASES.items():
        if other != licence and other != "GPL-3.0-or-later":
            assert phrase not in text, other
    expression = tomllib.loads((project / "pyproject.toml").read_text())["project"]["license"]
    assert canonicalize_license_expression(expression) == expression
    if licence == "Proprietary":
        assert expression == "LicenseRef-Proprietary"
        metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
        assert metadata["classifiers"] == ["Private :: Do Not Upload"]
    else:
        assert expression == licence
    if licence in ("MIT", "BSD-3-Clause", "Proprietary"):
        assert "Ada O'Hara" in text
    # The vendored runtime keeps its own licence, whatever the project's is.
    runtime = (project / "servicekit" / "aiorun.py").read_text()
    assert "SPDX-License-Identifier: MIT" in runtime
    assert "MIT" in (project / "README.md").read_text().split("## Licence", 1)[1]


# --------------------------------------------------------------------------- answers


def test_python_versions_offered_with_314_default() -> None:
    context = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    assert context["python_version"][0] == "3.14"
    assert sorted(context["python_version"]) == ["3.11", "3.12", "3.13", "3.14", "3.15"]
    keys = list(context)
    assert keys.index("python_version") > keys.index("use_docker")
    assert context["license"] == list(LICENSES)


@pytest.mark.parametrize(
    ("chosen", "matrix"),
    [("3.14", ["3.11", "3.14", "3.15"]), ("3.11", ["3.11", "3.15"]), ("3.15", ["3.11", "3.15"])],
)
def test_workflow_matrix_follows_python_version(bake: Bake, chosen: str, matrix: list[str]):
    project = bake(python_version=chosen)
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    assert workflow["jobs"]["test"]["strategy"]["matrix"]["python"] == matrix
    assert (project / ".python-version").read_text() == f"{chosen}\n", "what uv sync follows"


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflow_actions_are_pinned_by_sha(bake: Bake, name: str) -> None:
    text = (bake() / ".github/workflows" / name).read_text()
    uses = re.findall(r"uses: (\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r"\s+# v\d+\.\d+\.\d+", comment), (action, comment)
    workflow = yaml.safe_load(text)
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_project_has_precommit_and_dependabot(bake: Bake) -> None:
    for answers, ecosystems in (
        ({}, {"uv", "github-actions", "docker"}),
        ({"use_docker": False}, {"uv", "github-actions"}),
    ):
        project = bake(**answers)
        precommit = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
        hooks = {hook["id"] for repo in precommit["repos"] for hook in repo["hooks"]}
        assert {"ruff-check", "ruff-format", "mypy"} <= hooks
        for repo in precommit["repos"]:
            assert repo["repo"] == "local" or re.fullmatch(r"v?\d+(\.\d+)+", repo["rev"])
        dependabot = yaml.safe_load((project / ".github/dependabot.yml").read_text())
        assert {u["package-ecosystem"] for u in dependabot["updates"]} == ecosystems


def test_readme_shows_uv_and_pip_installs(bake: Bake) -> None:
    readme = (bake() / "README.md").read_text()
    assert "uv sync" in readme
    assert "pip install -e . --group dev" in readme
    assert "pip install -e '.[dev]'" not in readme


def test_slug_of_nothing_falls_back(tmp_path: Path) -> None:
    """A name with no letters or digits (☕☕) still gets a usable folder and package name."""
    result = run(*COOKIECUTTER, "-o", tmp_path, TEMPLATE, "project_name=☕☕", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (project,) = list(tmp_path.iterdir())
    assert project.name == "service"
    assert tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"] == "service"


def test_privileged_port_warns_and_container_listens_unprivileged(tmp_path: Path) -> None:
    result = run(*COOKIECUTTER, "-o", tmp_path, TEMPLATE, "port=80", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "8080" in warnings[0] and "80" in warnings[0]
    project = tmp_path / "echo-service"
    dockerfile = (project / "Dockerfile").read_text()
    assert re.search(r"^\s+APP_PORT=8080 \\$", dockerfile, re.MULTILINE), dockerfile
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.MULTILINE)
    kube = project / "deploy" / "kubernetes"
    service = yaml.safe_load((kube / "service.yaml").read_text())
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    deployment = yaml.safe_load((kube / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_port, _metrics = container["ports"]
    assert container_port["containerPort"] == 8080
    assert port["targetPort"] in (8080, container_port["name"])
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert any(str(p).endswith(":80:8080") for p in compose["services"]["app"]["ports"])
    # An unprivileged port answer changes nothing and warns about nothing.
    quiet = run(*COOKIECUTTER, "-o", tmp_path / "q", TEMPLATE, "port=8888", cwd=tmp_path)
    assert "warning:" not in quiet.stderr


def test_dockerfile_user_is_numeric(bake: Bake) -> None:
    dockerfile = (bake() / "Dockerfile").read_text()
    assert re.findall(r"^USER (.*)$", dockerfile, re.MULTILINE) == ["10001:10001"]


TEMPLATE_TALK = re.compile(
    r"(pre|post)-gen hook|(?<!\.)cookiecutter\.json|template folder", re.IGNORECASE
)


@pytest.mark.parametrize("variant", ["all-on", "all-off"])
def test_no_template_internal_comments_leak(bake: Bake, variant: str) -> None:
    project = bake(**VARIANTS[variant])
    leaks = [
        f"{path.relative_to(project)}:{number}: {line.strip()}"
        for path in project.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        # errors="ignore": files the project's own suite may have left (journals, caches)
        for number, line in enumerate(path.read_bytes().decode(errors="ignore").splitlines(), 1)
        if TEMPLATE_TALK.search(line)
    ]
    assert not leaks, "\n".join(leaks)


def test_template_code_is_lint_clean() -> None:
    """hooks/, tests/, scripts/ and bench/ meet the same ruff bar as the generated projects."""
    ruff = shutil.which("ruff", path=str(BIN)) or "ruff"
    check = run(ruff, "check", ".", cwd=TEMPLATE)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = run(ruff, "format", "--check", ".", cwd=TEMPLATE)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def _wheel_for_oldest_python(requirement: str, tmp_path: Path) -> bool:
    """Whether PyPI has a CPython 3.11 manylinux x86_64 wheel for the requirement."""
    result = run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
        "--platform", "manylinux2014_x86_64", "--disable-pip-version-check", "--quiet",
        "-d", tmp_path, requirement, cwd=tmp_path,
    )  # fmt: skip
    return result.returncode == 0


def test_uvloop_floor_is_the_first_release_with_wheels_for_the_oldest_python(
    bake: Bake, tmp_path: Path
) -> None:
    """A floor below it would let pip try to compile uvloop on 3.11; above it, refuse for no
    reason. Checked against the package index."""
    dependencies = tomllib.loads((bake() / "pyproject.toml").read_text())["project"]
    (uvloop,) = [d for d in dependencies["dependencies"] if d.startswith("uvloop")]
    floor = re.fullmatch(r"uvloop>=([\d.]+); sys_platform != 'win32'", uvloop)
    assert floor, uvloop
    assert _wheel_for_oldest_python(f"uvloop=={floor.group(1)}", tmp_path)
    assert not _wheel_for_oldest_python(f"uvloop<{floor.group(1)}", tmp_path)


def test_percent_in_the_project_name_is_not_a_systemd_specifier(tmp_path: Path) -> None:
    """systemd expands %n, %h, ... in Description=; a name such as "Echo 100% %n" must be
    shown as written, so each % is doubled in the unit."""
    name = "Echo 100% %n"
    project = Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(tmp_path),
            extra_context={"project_name": name, "project_slug": "pct"},
        )
    )
    unit = (project / "deploy" / "systemd" / "pct.service").read_text()
    [description] = [line for line in unit.splitlines() if line.startswith("Description=")]
    value = description.removeprefix("Description=")
    assert re.fullmatch(r"(?:[^%]|%%)*", value), f"a lone % is a specifier: {value}"
    assert value.replace("%%", "%") == name
