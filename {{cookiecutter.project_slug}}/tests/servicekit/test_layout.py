"""The inherited package never imports the user's: the arrow between them runs one way.

``app/`` is yours and ``servicekit/`` is the template's. If the template's code reached into
``app``, a rename or a missing module there would break code you never edit, and ``cruft
update`` could not replace ``servicekit/`` without looking at yours. ``app/__main__.py`` hands
the protocol in instead. This test reads every inherited module with ``ast``, so an import
hidden inside a function, or spelled as ``importlib.import_module("app...")``, counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
INHERITED = PROJECT / "servicekit"
USERS_PACKAGE = "app"


def _is_users(module: str | None) -> bool:
    return module is not None and (
        module == USERS_PACKAGE or module.startswith(f"{USERS_PACKAGE}.")
    )


def imports_of_users_package(source: str, filename: str) -> list[str]:
    """Every place in ``source`` that imports the user's package, as ``file:line: code``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module] if node.level == 0 else []
        elif isinstance(node, ast.Call) and node.args:
            callee = node.func
            called = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            first = node.args[0]
            is_text = isinstance(first, ast.Constant) and isinstance(first.value, str)
            names = [first.value] if called in ("import_module", "__import__") and is_text else []
        else:
            continue
        if any(_is_users(name) for name in names):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_inherited_module_imports_the_users_package() -> None:
    modules = sorted(INHERITED.rglob("*.py"))
    assert len(modules) > 5, f"the inherited package is missing: {INHERITED}"
    offenders = [
        offence
        for module in modules
        for offence in imports_of_users_package(
            module.read_text(), str(module.relative_to(PROJECT))
        )
    ]
    assert offenders == [], "inherited code imports the user's package:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        "import app",
        "import app.protocol as p",
        "from app import protocol",
        "from app.protocol import handle",
        "def f():\n    from app import protocol",
        "import importlib\nimportlib.import_module('app.protocol')",
        "__import__('app')",
    ],
)
def test_the_check_sees_every_spelling(source: str) -> None:
    assert imports_of_users_package(source, "x.py"), source


@pytest.mark.parametrize(
    "source", ["import application", "from apps import x", "from . import app", "x = 'app'"]
)
def test_the_check_ignores_what_is_not_the_users_package(source: str) -> None:
    assert imports_of_users_package(source, "x.py") == []
