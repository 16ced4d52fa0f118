"""Rewrite the reliability table in docs/reliability.md from the figures of the last test run.

The generated project's reliability tests record what they tried and what held (via the
``figure`` fixture) into ``build/reliability.jsonl`` when the template's suite runs them
(the all-on project's test step in tests/test_workflow_steps.py). This script turns that file
into the table between the ``reliability:begin`` and ``reliability:end`` markers of
docs/reliability.md, so the published figures are the measured ones:

    ./test.sh tests/test_workflow_steps.py -k "all-on and Linux"
    .venv/bin/python scripts/reliability_table.py
"""

from __future__ import annotations

import json
import platform
import re
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "build" / "reliability.jsonl"
DOC = ROOT / "docs" / "reliability.md"
SECTION = re.compile(r"(<!-- reliability:begin -->\n).*?(<!-- reliability:end -->)", re.S)


def render(lines: list[str]) -> str:
    figures: dict[str, list[str]] = {}
    for line in lines:
        record = json.loads(line)
        figures.setdefault(record["key"], []).append(record["text"])
    rows = [f"| {key} | {'; '.join(dict.fromkeys(texts))} |" for key, texts in figures.items()]
    machine = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    header = f"Measured {date.today()} on {machine} by the generated project's tests.\n\n"
    return header + "| Test | Result |\n|---|---|\n" + "\n".join(rows) + "\n"


def main() -> int:
    if not FIGURES.exists():
        print(f"error: {FIGURES} is missing: run the tests first (see this file's docstring)")
        return 1
    readme = DOC.read_text(encoding="utf-8")
    if not SECTION.search(readme):
        print(f"error: {DOC} has no reliability:begin/end markers")
        return 1
    table = render(FIGURES.read_text(encoding="utf-8").splitlines())
    DOC.write_text(SECTION.sub(lambda m: m[1] + table + m[2], readme), encoding="utf-8")
    print(f"{DOC}: reliability table updated from {FIGURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
