"""Run the benchmark's quick mode once, so the bench cannot rot unnoticed.

This checks that every section ran and produced its report, and that each goal got a verdict,
not the figures: speed is judged by bench/RESULTS.md from a full run, side by side, never by a
timed test.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import TEMPLATE, with_dispositions

RUN = TEMPLATE / "bench" / "run.py"
VERDICTS = ("met", "**not met**", "not measured", "skipped", "reported")


def _goal_rows(markdown: str) -> list[list[str]]:
    """The rows of the first table that follows the '## Goals' heading (or starts the text)."""
    body = markdown.split("## Goals", 1)[-1]
    rows = []
    for line in body.splitlines():
        if line.startswith("| Goal ") or line.startswith("|---"):
            continue
        if line.startswith("| "):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif rows:
            break
    return rows


def test_quick_bench_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = subprocess.run(
        # asyncio.run's server is stopped with SIGINT, which it hears only as a terminal gives it
        with_dispositions(signal.SIG_DFL, [sys.executable, str(RUN), "--quick", "--out", str(out)]),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (out / "RESULTS.md").read_text()
    for heading in (
        "## Goals",
        "## 1. Shutdown latency",
        "## 2. Drain",
        "## 3. Echo throughput",
        "### 3b. Write-ahead journal cost",
        "## 3c. The seam's cost",
        "## 3d. The metrics' cost",
        "## 3e. The journal checksum's cost",
        "## 4. Startup",
        "## 6. Idle connection cost",
        "## 7. Bystander latency under flood",
    ):
        assert heading in report, f"{heading!r} missing from the quick report"
    assert (out / "shutdown.png").read_bytes().startswith(b"\x89PNG")
    results = json.loads((out / "results.json").read_text())

    # Both load shapes ran against both ceilings, the service and the echo-first baseline.
    measured = {(s["variant"], s["mode"]) for s in results["throughput"]}
    for variant in (
        "bare uvloop Protocol echo",
        "bare echo + WAL",
        "service (uvloop)",
        "service (uvloop), journal-free requests",
        "echo-first 5c8c445 (uvloop)",
    ):
        for mode in ("pingpong", "pipeline"):
            assert (variant, mode) in measured, (variant, mode)
    # Every window reports the client's own CPU as well as the server's.
    for sample in results["throughput"]:
        assert sample["client_cpu"] > 0 and sample["server_cpu"] > 0, sample
    if shutil.which("cc"):
        assert results["loadgen"]["c"], results["loadgen"]["what"]
        assert {s["client"] for s in results["throughput"]} == {"c"}
    # The seam is measured through the service's public entry point: slices of both versions.
    assert results["seam_alternated"].get("runs"), results["seam_alternated"]
    # So is the batch timing metrics add, with the metrics endpoint on.
    assert results["metrics_alternated"].get("runs"), results["metrics_alternated"]
    # And the journal's checksum, in both load shapes, beside zlib's own time for one line.
    for mode in ("pingpong", "pipeline"):
        assert results["checksum_alternated"][mode].get("runs"), results["checksum_alternated"]
    assert results["checksum_alternated"]["floor"]["crc32_us"] > 0
    # The vendored runtime is found in the baked project and takes part in the shutdown grid.
    assert any(s["runner"] == "vendored" for s in results["shutdown"])

    rows = _goal_rows(report)
    names = " ".join(row[0] for row in rows)
    for goal in (
        "Ping-pong",
        "Pipelined",
        "Load generator",
        "Journal-free",
        "Idle connection",
        "Default loop",
        "Startup",
        "Bystander",
        "Seam cost",
        "Metrics cost",
        "Journal checksum cost",
    ):
        assert goal in names, f"no goal row for {goal!r}"
    # Throughput is judged against the fastest server that journals, not one that does not.
    for row in rows:
        if row[0].startswith(("Ping-pong", "Pipelined")):
            assert "bare uvloop Protocol echo + WAL" in row[0], row
    for row in rows:
        assert len(row) == 4, row
        assert row[3].startswith(VERDICTS), f"goal without a verdict: {row}"
        if row[3].startswith("**not met**"):
            assert "Limit:" in row[3] and "Way past:" in row[3], row

    table = subprocess.run(
        [sys.executable, str(RUN), "--readme-table", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert _goal_rows(table) == rows


def test_the_bench_never_rewrites_the_service_source() -> None:
    """Issue 25: a bench that recompiles the server from matching source lines freezes the
    server's code. The bench measures the service through its public entry points only, so
    no bench script may read, compile or execute source text."""
    reading_source = re.compile(r"getsource|(?<![\w.])(compile|exec)\(|dedent")
    offenders = [
        f"{path.relative_to(TEMPLATE)}: {found.group()}"
        for path in sorted((TEMPLATE / "bench").glob("[!.]*/*.py"))
        if (found := reading_source.search(path.read_text()))
    ]
    assert not offenders, offenders
