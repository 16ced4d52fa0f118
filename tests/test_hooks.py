"""The hooks' logic, called directly: validators (with properties), pruning, rendering."""

from __future__ import annotations

import ast
import importlib.util
import json
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

TEMPLATE = Path(__file__).resolve().parent.parent


def load_hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TEMPLATE / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pre = load_hook("pre_gen_project")
post = load_hook("post_gen_project")

GOOD_ANSWERS = {
    "project_name": "Echo Service",
    "project_slug": "echo-service",
    "description": "It echoes.",
    "author": "Ada O'Hara",
    "python_version": "3.14",
    "license": "MIT",
    "port": "8888",
    "use_uvloop": True,
    "use_docker": True,
    "windows_scripts": False,
    "_output_dir": "/nonexistent",
}


def test_good_answers_pass() -> None:
    pre.check_answers(GOOD_ANSWERS)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("project_slug", "a/b", "not a valid folder name"),
        ("project_slug", "../escape", "not a valid folder name"),
        ("project_slug", "Echo Service", "not a valid folder name"),
        ("project_slug", "nul", "reserved device name"),
        ("project_slug", "", "not a valid folder name"),
        ("port", "0", "not a number from 1 to 65535"),
        ("port", "65536", "not a number from 1 to 65535"),
        ("port", "99999999999999999999", "not a number from 1 to 65535"),
        ("port", "http", "not a number from 1 to 65535"),
        ("port", "-1", "not a number from 1 to 65535"),
        ("project_name", 'Echo "Service"', "double quote"),
        ("project_name", "Echo\nService", "control characters"),
        ("description", "C:\\path", "backslash"),
        ("author", "   ", "must not be empty"),
        ("python_version", "2.7", "must be one of"),
        ("python_version", "3.10", "must be one of"),
        ("license", "WTFPL", "must be one of"),
        ("use_docker", "yes", "must be one of"),
    ],
)
def test_bad_answer_is_refused_with_a_reason(field: str, value: str, message: str) -> None:
    with pytest.raises(pre.Refused, match=message):
        pre.check_answers({**GOOD_ANSWERS, field: value})


def test_main_prints_one_line_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert pre.main({**GOOD_ANSWERS, "port": "99999"}) == 1
    assert capsys.readouterr().err == "error: port '99999' is not a number from 1 to 65535\n"


@given(st.text(max_size=120))
@example('x"""')
@example("x\\")
@example("tab\there")
def test_accepted_text_survives_toml_and_python_literals(value: str) -> None:
    """Whatever the check lets through reads back unchanged from both kinds of literal."""
    try:
        pre.check_text("project_name", value, pre.MAX_NAME)
    except pre.Refused:
        return
    assert tomllib.loads(f'name = "{value}"')["name"] == value
    assert ast.literal_eval(f'"""{value} """') == value + " "


@given(st.text(max_size=120))
@example("Echo\u2028evil: 1")
@example("Echo\u2029x")
def test_accepted_text_stays_inside_a_yaml_comment(value: str) -> None:
    """The project name heads compose.yaml and the manifests as a comment: YAML ends a
    comment at U+2028 and U+2029 too, so those would turn the rest into YAML."""
    try:
        pre.check_text("project_name", value, pre.MAX_NAME)
    except pre.Refused:
        return
    assert yaml.safe_load(f"# {value}\nkey: 1\n") == {"key": 1}


@given(st.text(max_size=80))
@example("a/b")
@example("a\\b")
@example("..")
def test_accepted_slug_is_one_plain_folder(slug: str) -> None:
    try:
        pre.check_slug(slug)
    except pre.Refused:
        return
    assert Path(slug).name == slug
    assert slug not in {".", ".."}
    assert not set(slug) & set('/\\:*?"<>| ')


@given(st.one_of(st.integers(), st.text(max_size=8)))
def test_port_is_accepted_exactly_in_range(port: int | str) -> None:
    text = str(port).strip()
    in_range = text.isascii() and text.isdigit() and 1 <= int(text) <= 65535
    if in_range:
        pre.check_port(port)
    else:
        with pytest.raises(pre.Refused):
            pre.check_port(port)


@pytest.mark.parametrize(
    ("answers", "removed"),
    [
        ({"use_docker": True, "windows_scripts": True}, []),
        ({"use_docker": False, "windows_scripts": True}, ["compose.yaml", "deploy"]),
        ({"use_docker": True, "windows_scripts": False}, ["scripts", "servicekit/launcher.py"]),
    ],
)
def test_prune_removes_what_answers_turned_off(tmp_path: Path, answers, removed) -> None:
    files = [
        "compose.yaml",
        ".dockerignore",
        "deploy/kubernetes/deployment.yaml",
        "scripts/windows/run.bat",
        "servicekit/launcher.py",
        "servicekit/server.py",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    post.prune(tmp_path, answers)
    for name in removed:
        assert not (tmp_path / name).exists(), name
    assert (tmp_path / "servicekit/server.py").exists()
    if answers["windows_scripts"]:
        assert (tmp_path / "scripts/windows/run.bat").exists()


@pytest.mark.parametrize(("port", "docker", "warned"), [(80, True, True), (1024, True, False)])
def test_privileged_port_warning(port: int, docker: bool, warned: bool) -> None:
    warning = post.privileged_port_warning({"port": str(port), "use_docker": docker})
    assert (warning is not None) == warned
    assert post.privileged_port_warning({"port": "80", "use_docker": False}) is None


def test_answers_are_recorded_without_local_paths(tmp_path: Path) -> None:
    answers = {**GOOD_ANSWERS, "_template": "gh:org/aiorun-template", "_repo_dir": "/home/me/x"}
    post.record_answers(tmp_path, answers)
    recorded = json.loads((tmp_path / ".cookiecutter.json").read_text())["cookiecutter"]
    assert recorded["project_slug"] == "echo-service"
    assert recorded["_template"] == "gh:org/aiorun-template"
    assert "_repo_dir" not in recorded and "_output_dir" not in recorded


def test_prune_drops_tool_caches(tmp_path: Path) -> None:
    for cache in ("app/__pycache__/x.pyc", ".ruff_cache/0.1/y", ".pytest_cache/v/z"):
        (tmp_path / cache).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / cache).write_bytes(b"\x8b")
    (tmp_path / "servicekit").mkdir()
    (tmp_path / "servicekit/server.py").write_text("x")
    post.prune(tmp_path, {"use_docker": True, "windows_scripts": True})
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "app",
        "servicekit",
        "servicekit/server.py",
    ]
