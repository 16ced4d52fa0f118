"""The generated CI workflow's own steps, run here as each of its jobs runs them.

A generated project's first push runs `.github/workflows/ci.yml` on Linux and on Windows. The
other checks of this suite use this repository's .venv, which holds uvloop and every tool, so
a step that fails only in a job's own environment (mypy meeting an optional module that is not
installed, a lock that no longer matches) would pass here and fail on the user's first push.
So this test reads the steps from the rendered workflow (they are not copied here) and runs
them with bash, as the job's default shell does, in a fresh project venv made as the job makes
it:

* Linux: the venv the job's own install step makes (`uv sync --locked`), run as a step;
* Windows: the same, less every package the lock installs only off Windows (uvloop): its
  markers evaluated for win32. Mypy runs for win32 there because the step asks for it, so the
  view differs from Linux in what is installed, which is what made mypy fail before. Steps
  that need Windows itself (the demos through cmd and PowerShell) are not run in this view,
  nor the test step, whose Windows behaviour the Wine tests and the real workflow prove.

The actions are stood for: checkout by a copy of the bake, setup-python by this interpreter
(UV_PYTHON, set by the job from its matrix), setup-uv by the uv of this repository's .venv.
An action or an `if:` this test does not know fails it, so no step can go unrun unnoticed.

The test step runs for the variants whose suite runs here (all-on, all-off; see test_bake):
all-on's with SIGINT and SIGHUP ignored, as `nohup ... &` starts a command, all-off's with
the default dispositions a CI runner gives. The Python-version variants differ from all-on
only in files no step reads; a test below checks that, instead of running the same steps
again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TEMPLATE, Bake, with_dispositions
from packaging.markers import Marker
from test_bake import SUITE_VARIANTS, VARIANTS

BIN = Path(sys.executable).parent
PYTHON = Path(getattr(sys, "_base_executable", sys.executable))
"""The interpreter the job's setup-python stands for: this one, outside this .venv."""
FIGURES = TEMPLATE / "build" / "reliability.jsonl"
STANDS_FOR = {
    "actions/checkout": "the bake, copied to a folder of its own",
    "actions/setup-python": "this interpreter, as UV_PYTHON",
    "astral-sh/setup-uv": "this .venv's uv on PATH",
}
WINDOWS_ONLY = re.compile(r"runner\.os == 'Windows'( && hashFiles\('[^']+'\) != '')?")
WIN32 = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt"}
SAME_STEP_INPUTS = ("python-3.11", "python-3.15")
"""Variants whose step inputs equal all-on's (checked below), so their steps are not rerun."""
NOT_STEP_INPUTS = (
    ".github/",
    ".cookiecutter.json",
    ".python-version",
    "Dockerfile",
    "compose.yaml",
    "compose.build.yaml",
    "README.md",
    "docs/",
)
"""What the Python-version answer changes: read by GitHub, cookiecutter, uv (overridden by
the job's UV_PYTHON), Docker and people, not by any step."""
STEP_VARIANTS = tuple(name for name in VARIANTS if name not in SAME_STEP_INPUTS)


def steps_of(project: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The test job's environment and steps, as rendered in the project's workflow."""
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    job = workflow["jobs"]["test"]
    assert job.get("defaults", {}).get("run", {}).get("shell") == "bash", "steps run as bash"
    return job.get("env", {}), job["steps"]


def job_env(project: Path, declared: dict[str, str], runner_os: str) -> dict[str, str]:
    """The environment a step sees: the job's variables (its matrix's Python is this one)."""
    tools = project.parent / "tools"  # what setup-python and setup-uv put on PATH
    tools.mkdir(exist_ok=True)
    for name, target in (("uv", BIN / "uv"), ("python", PYTHON), ("python3", PYTHON)):
        if not (tools / name).exists():
            (tools / name).symlink_to(target)
    skipped = ("APP_", "UV_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "COVERAGE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    env["PATH"] = os.pathsep.join([str(tools), *path])
    env.update(CI="true", GITHUB_ACTIONS="true", RUNNER_OS=runner_os)
    for name, value in declared.items():
        value = str(value).replace("${{ matrix.python }}", str(PYTHON))
        assert "${{" not in value, f"teach this test the expression in {name}: {value}"
        env[name] = value
    assert env.get("UV_PYTHON") == str(PYTHON), "the job no longer tells uv its Python"
    return env


def only_off_windows(project: Path) -> list[str]:
    """Packages the lock installs on Linux but not on Windows (their markers exclude win32)."""
    lock = tomllib.loads((project / "uv.lock").read_text())
    names = []
    for package in lock["package"]:
        if package.get("source", {}).get("editable"):  # the project: its dependencies' markers
            for dependency in package.get("dependencies", []):
                marker = dependency.get("marker")
                if marker and not Marker(marker).evaluate(WIN32):
                    names.append(dependency["name"])
    return names


def run_step(
    step: dict[str, Any], project: Path, env: dict[str, str], disposition: signal.Handlers
) -> None:
    argv = with_dispositions(disposition, ["bash", "--noprofile", "--norc", "-eo", "pipefail"])
    result = subprocess.run(
        [*argv, "-c", step["run"]],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    name = step.get("name", step["run"].splitlines()[0])
    output = f"{result.stdout[-8000:]}{result.stderr[-3000:]}"
    assert result.returncode == 0, f"step {name!r} failed ({result.returncode}):\n{output}"


@pytest.mark.parametrize("runner_os", ["Linux", "Windows"])
@pytest.mark.parametrize("variant", STEP_VARIANTS)
def test_workflow_steps_pass_as_each_job_runs_them(
    bake: Bake, tmp_path: Path, variant: str, runner_os: str
) -> None:
    project = tmp_path / "checkout"
    shutil.copytree(bake(**VARIANTS[variant]), project)
    declared, steps = steps_of(project)
    env = job_env(project, declared, runner_os)
    suite_here = runner_os == "Linux" and variant in SUITE_VARIANTS
    ran: list[str] = []
    for step in steps:
        if "uses" in step:
            action = step["uses"].split("@")[0]
            assert action in STANDS_FOR, f"teach this test what {action} does in the job"
            continue
        condition = step.get("if")
        if condition is not None:
            assert WINDOWS_ONLY.fullmatch(condition), f"teach this test the condition {condition}"
            continue  # needs Windows itself; the generated workflow runs it there
        assert step.get("shell", "bash") == "bash", step
        is_test = "pytest" in step["run"]
        if is_test and not suite_here:
            continue
        disposition = signal.SIG_DFL
        if is_test and variant == "all-on":  # as `nohup ... &` starts it
            disposition = signal.SIG_IGN
            FIGURES.parent.mkdir(exist_ok=True)  # its figures feed scripts/reliability_table.py
            FIGURES.write_text("")
            env = {**env, "RELIABILITY_FIGURES": str(FIGURES)}
        run_step(step, project, env, disposition)
        ran.append(step["run"])
        if runner_os == "Windows" and "uv sync" in step["run"]:
            removed = only_off_windows(project)
            if VARIANTS[variant].get("use_uvloop", True):
                assert removed == ["uvloop"], removed  # the view really differs from Linux
            if removed:
                uv = [str(BIN / "uv"), "pip", "uninstall", "--python", ".venv", *removed]
                result = subprocess.run(uv, cwd=project, env=env, capture_output=True, check=False)
                assert result.returncode == 0, result.stderr
    expected = {"uv lock --check", "uv sync --locked", "ruff check", "mypy --platform win32"}
    if suite_here:
        expected.add("coverage report")
    missing = [command for command in expected if command not in "\n".join(ran)]
    assert not missing, f"these no longer ran: {missing}; ran: {ran}"


def step_inputs(project: Path) -> str:
    """A digest of every file a step can read."""
    digest = hashlib.sha256()
    for path in sorted(p for p in project.rglob("*") if p.is_file()):
        name = path.relative_to(project).as_posix()
        if "__pycache__" in name or name.startswith(NOT_STEP_INPUTS):
            continue
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.mark.parametrize("variant", SAME_STEP_INPUTS)
def test_python_version_variants_give_the_steps_what_all_on_gives(tmp_path: Path, variant: str):
    """Why their steps are not run again: nothing a step reads differs from all-on.

    Both are baked fresh here: the session's shared bakes collect what other tests leave in
    them (data/, caches), which no step reads but which would change the digest.
    """
    from cookiecutter.main import cookiecutter

    def fresh(name: str, **answers: object) -> Path:
        out = tmp_path / name
        return Path(
            cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out), extra_context=answers)
        )

    assert step_inputs(fresh("variant", **VARIANTS[variant])) == step_inputs(fresh("all-on"))
