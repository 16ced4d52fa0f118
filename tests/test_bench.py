"""Run the benchmark's quick mode once, so the bench cannot rot unnoticed.

This checks that every section ran and produced its report, not the figures: speed is
judged by bench/RESULTS.md from a full run, side by side, never by a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TEMPLATE


def test_quick_bench_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, str(TEMPLATE / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (out / "RESULTS.md").read_text()
    for heading in ("## 1. Shutdown latency", "## 2. Drain", "## 3. Echo throughput", "## 4."):
        assert heading in report, f"{heading!r} missing from the quick report"
    assert (out / "shutdown.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "results.json").read_text())
