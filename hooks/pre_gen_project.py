"""Refuse bad answers before anything is generated: one line on stderr, exit status 1.

cookiecutter runs this after the answers are in and the project folder exists but is still
empty; when it exits non-zero, cookiecutter deletes that folder. The answers are read as
JSON through ``tojson`` into a raw string (Jinja's ``tojson`` never emits a single quote),
never pasted into Python source, so no answer can change what this file does.

The checks are plain functions so the template's tests can call them directly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

MAX_NAME = 100
MAX_DESCRIPTION = 300
PYTHON_VERSIONS = ("3.11", "3.12", "3.13", "3.14", "3.15")
LICENSES = ("MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0-or-later", "Proprietary")
SLUG = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {
    f"{p}{n}" for p in ("com", "lpt") for n in "123456789"
}
FORBIDDEN_IN_TEXT = {'"': "double quote", "\\": "backslash", "`": "backtick"}


class Refused(Exception):
    """An answer cannot be used; the message says which and why."""


def check_slug(slug: str) -> None:
    """The folder name, also the distribution name in pyproject.toml."""
    if not SLUG.fullmatch(slug):
        raise Refused(
            f"project_slug {slug!r} is not a valid folder name: use 1-64 lowercase letters, "
            "digits, '.', '_' or '-', starting and ending with a letter or digit"
        )
    if slug.split(".")[0] in WINDOWS_RESERVED:
        raise Refused(f"project_slug {slug!r} is a reserved device name on Windows")


def check_port(port: object) -> None:
    """A TCP port a server can be configured to listen on by default."""
    text = str(port).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise Refused(f"port {str(port)!r} is not a number from 1 to 65535")


def check_text(field: str, value: str, max_length: int) -> None:
    """Free text that ends up in TOML strings, Python docstrings and Markdown."""
    if not value.strip():
        raise Refused(f"{field} must not be empty")
    if len(value) > max_length:
        raise Refused(f"{field} is longer than {max_length} characters")
    for char in value:
        if char in FORBIDDEN_IN_TEXT:
            raise Refused(f"{field} must not contain a {FORBIDDEN_IN_TEXT[char]}")
        # Zl and Zp (U+2028, U+2029) end a line in YAML, where the name heads comments.
        if unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp"):
            raise Refused(f"{field} must not contain control characters such as {char!r}")


def check_choice(field: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise Refused(f"{field} must be one of {', '.join(map(str, choices))}, not {value!r}")


def check_answers(answers: dict[str, Any]) -> None:
    """Raise Refused for the first unusable answer."""
    check_text("project_name", answers["project_name"], MAX_NAME)
    check_slug(answers["project_slug"])
    check_text("description", answers["description"], MAX_DESCRIPTION)
    check_text("author", answers["author"], MAX_NAME)
    check_choice("python_version", answers["python_version"], PYTHON_VERSIONS)
    check_choice("license", answers["license"], LICENSES)
    check_port(answers["port"])
    for flag in ("use_uvloop", "use_docker", "windows_scripts"):
        check_choice(flag, answers[flag], (True, False))


def remove_created_parents_later(project_dir: Path, output_dir: Path) -> None:
    """Undo the folders cookiecutter made for a slug such as ``a/b``.

    cookiecutter creates the whole path before this hook runs and, after a refusal, removes
    only the last folder. A short-lived detached process waits for that removal, then removes
    the now-empty folders between the output folder and the project folder.
    """
    project_dir, output_dir = project_dir.resolve(), output_dir.resolve()
    if output_dir not in project_dir.parents or project_dir.parent == output_dir:
        return
    script = (
        "import os, sys, time\n"
        "project, *parents = sys.argv[1:]\n"
        "deadline = time.monotonic() + 10\n"
        "while os.path.exists(project) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "for folder in parents:\n"
        "    try:\n"
        "        os.rmdir(folder)\n"
        "    except OSError:\n"
        "        break\n"
    )
    parents = project_dir.relative_to(output_dir).parents
    chain = [str(output_dir / p) for p in parents if str(p) != "."]
    subprocess.Popen(
        [sys.executable, "-c", script, str(project_dir), *chain],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main(answers: dict[str, Any]) -> int:
    try:
        check_answers(answers)
    except Refused as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        remove_created_parents_later(Path.cwd(), Path(answers["_output_dir"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(r"""{{ cookiecutter | tojson }}""")))
