"""Run every benchmark side by side and write the report: `python bench/run.py [--quick]`.

Why one command: the figures must be reproducible by anyone. This script builds its own venv
(bench/.venv: aiorun 2025.1.1, uvloop, matplotlib, cookiecutter, python-dotenv) and re-runs
itself inside it, bakes a project with default answers from the template at the repository
root and another from the echo-first baseline commit (harness/bake.py), builds the C load
generator, runs the benchmarks (see bench/harness/*.py), and writes into the output folder:
RESULTS.md (the report), shutdown.png (the plot) and results.json (every raw sample).

    python bench/run.py                # full run, writes into bench/
    python bench/run.py --quick        # smoke run (< 30 s), writes into bench/.quick/
    python bench/run.py --out DIR      # anywhere else
    python bench/run.py --only shutdown,drain --reps 2
    python bench/run.py --report-only DIR   # rebuild RESULTS.md and the plot from DIR/results.json
    python bench/run.py --readme-table DIR  # print docs/benchmarks.md's table from DIR/results.json
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from harness import bootstrap  # noqa: E402  (stdlib only; must run before anything else)

if __name__ == "__main__":
    if sys.version_info < (3, 11) or not sys.platform.startswith("linux"):
        sys.exit("bench: needs Python 3.11+ on Linux (it times exits through pidfds and /proc)")
    bootstrap.reexec_in_venv(Path(__file__).resolve(), sys.argv[1:])

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

SECTIONS = (
    "startup",
    "shutdown",
    "shutdown314",
    "drain",
    "throughput",
    "seam",
    "metrics",
    "checksum",
    "footprint",
    "flood",
    "container",
)


@dataclass(frozen=True)
class Plan:
    """How much of everything to run; the two modes differ only here."""

    shutdown_conns: tuple[int, ...]
    shutdown_tasks: tuple[int, ...]
    shutdown_reps: int
    drain_clients: int
    drain_reps: int
    drain_warm: int
    idle_clients: int
    idle_reps: int
    tp_conns: int
    tp_size: int
    tp_warmup: float
    tp_seconds: float
    tp_reps: int
    tp_all_variants: bool
    """False: only the variants the goals need (ceiling, service, echo-first baseline)."""
    alternated_reps: int
    """Runs of each service that alternates two versions of itself in one process (the seam,
    the metrics' batch timing, the journal checksum in each mode: harness/alternated.py)."""
    idle_mem_conns: int
    idle_mem_reps: int
    flood_reps: int
    flood_warmup: float
    flood_seconds: float
    startup_reps: int
    journal_lines: int
    docker_reps: int
    py314_reps: int


FULL = Plan(
    shutdown_conns=(0, 100, 1000),
    shutdown_tasks=(0, 10000),
    shutdown_reps=9,
    drain_clients=200,
    drain_reps=7,
    drain_warm=3,
    idle_clients=20,
    idle_reps=3,
    tp_conns=50,
    tp_size=1024,
    tp_warmup=0.5,
    tp_seconds=3.0,
    tp_reps=5,
    tp_all_variants=True,
    alternated_reps=10,
    idle_mem_conns=5000,
    idle_mem_reps=3,
    flood_reps=3,
    flood_warmup=0.5,
    flood_seconds=3.0,
    startup_reps=15,
    journal_lines=1_000_000,
    docker_reps=5,
    py314_reps=5,
)
QUICK = Plan(
    shutdown_conns=(0, 1000),
    shutdown_tasks=(10000,),
    shutdown_reps=1,
    drain_clients=200,
    drain_reps=1,
    drain_warm=3,
    idle_clients=20,
    idle_reps=1,
    tp_conns=50,
    tp_size=1024,
    tp_warmup=0.2,
    tp_seconds=0.4,
    tp_reps=1,
    tp_all_variants=False,
    alternated_reps=1,
    idle_mem_conns=300,
    idle_mem_reps=1,
    flood_reps=1,
    flood_warmup=0.2,
    flood_seconds=0.4,
    startup_reps=2,
    journal_lines=50_000,
    docker_reps=0,
    py314_reps=0,
)


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


STARTED = time.monotonic()


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "uvloop": importlib.metadata.version("uvloop"),
        "aiorun": importlib.metadata.version("aiorun"),
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(
    plan: Plan, only: set[str], scratch: Path, python_version: str, template: Path
) -> dict[str, Any]:
    from harness import (
        alternated,
        bake,
        cbuild,
        container,
        drain,
        flood,
        footprint,
        py314,
        shutdown,
        startup,
        throughput,
    )

    results: dict[str, Any] = {
        "headline_cell": [max(plan.shutdown_conns), max(plan.shutdown_tasks)]
    }
    log("baking the template with default answers")
    project = bake.bake(scratch, root=template)
    results["meta_template"] = bake.describe_template(template)
    baseline: Path | None = None
    if only & {"throughput", "footprint", "flood"}:
        log(f"baking the echo-first baseline from commit {bake.BASELINE_COMMIT}")
        try:
            baseline = bake.bake_baseline(scratch)
        except RuntimeError as exc:
            results["baseline_skipped"] = str(exc)
            log(f"echo-first baseline: not available: {exc}")
    results["baseline_commit"] = bake.BASELINE_COMMIT
    loadgen, how = cbuild.build()
    load = throughput.Load(loadgen, plan.tp_conns, plan.tp_size, plan.tp_warmup, plan.tp_seconds)
    results["loadgen"] = {
        "what": f"C epoll client (bench/procs/loadgen.c, built with {how})"
        if loadgen
        else f"**Python fallback** (bench/procs/loadgen.py): {how}; its own CPU may cap the "
        "fastest servers, see the client CPU column",
        "c": loadgen is not None,
    }
    vendored = (project / "servicekit" / "aiorun.py").exists()
    if "startup" in only:
        results["startup"] = startup.run_all(
            project, scratch, reps=plan.startup_reps, journal_lines=plan.journal_lines, log=log
        )
    if "shutdown" in only:
        runners = [r for r in shutdown.RUNNERS if vendored or r != "vendored"]
        grid = shutdown.run_grid(
            runners=runners,
            conns_grid=plan.shutdown_conns,
            tasks_grid=plan.shutdown_tasks,
            reps=plan.shutdown_reps,
            project=project,
            log=log,
        )
        results["shutdown"] = [s.as_dict() for s in grid]
    if "shutdown314" in only:
        if plan.py314_reps == 0:
            results["shutdown_py314"] = {"skipped": "not part of --quick (runs in a container)"}
        else:
            results["shutdown_py314"] = py314.run_grid(
                project,
                conns_grid=plan.shutdown_conns,
                tasks_grid=plan.shutdown_tasks,
                reps=plan.py314_reps,
                log=log,
            )
            if results["shutdown_py314"].get("skipped"):
                log(f"shutdown on 3.14: skipped: {results['shutdown_py314']['skipped']}")
    if "drain" in only:
        drained = drain.run_all(
            project, scratch, reps=plan.drain_reps, clients=plan.drain_clients, log=log
        )
        results["drain"] = [s.as_dict() for s in drained]
        idle_runs = drain.run_idle(
            project, scratch, reps=plan.idle_reps, count=plan.idle_clients, log=log
        )
        results["drain_idle"] = [asdict(s) for s in idle_runs]
    if "throughput" in only:
        specs = throughput.specs(project, baseline, scratch, full=plan.tp_all_variants)
        results["throughput_variants"] = [s.name for s in specs]
        results["throughput_settings"] = {s.name: s.settings() for s in specs}
        samples, failed, unrecognised = throughput.run_all(specs, load, reps=plan.tp_reps, log=log)
        optional = {s.name for s in specs if s.optional}
        results["throughput"] = [s.as_dict() for s in samples]
        results["throughput_failed"] = {n: w for n, w in failed.items() if n not in optional}
        results["throughput_unavailable"] = {n: w for n, w in failed.items() if n in optional}
        results["throughput_unrecognised"] = unrecognised
    if "seam" in only:
        results["seam_alternated"] = alternated.seam(
            project, scratch, load, reps=plan.alternated_reps, log=log
        )
    if "metrics" in only:
        results["metrics_alternated"] = alternated.metrics(
            project, scratch, load, reps=plan.alternated_reps, log=log
        )
    if "checksum" in only:
        results["checksum_alternated"] = alternated.checksum(
            project, scratch, load, reps=plan.alternated_reps, log=log
        )
    if "footprint" in only:
        results["footprint"] = footprint.run_all(
            footprint.specs(project, baseline, scratch, plan.idle_mem_conns),
            count=plan.idle_mem_conns,
            reps=plan.idle_mem_reps,
            log=log,
        )
    if "flood" in only:
        results["flood"] = flood.run_all(
            flood.specs(project, baseline, scratch),
            loadgen,
            reps=plan.flood_reps,
            warmup=plan.flood_warmup,
            seconds=plan.flood_seconds,
            log=log,
        )
    if "container" in only:
        if plan.docker_reps == 0:
            results["container"] = {
                "skipped": "not part of --quick (an image build takes "
                "longer than the whole quick run)"
            }
        else:
            box = container.run_all(
                project, scratch, reps=plan.docker_reps, python_version=python_version, log=log
            )
            results["container"] = asdict(box)
            if box.skipped:
                log(f"container: skipped: {box.skipped}")
    return results


def write_outputs(results: dict[str, Any], out: Path) -> None:
    from harness import plot, report

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if results.get("shutdown"):
        meta = results["meta"]
        plot.shutdown_plot(
            results["shutdown"],
            out / "shutdown.png",
            f"Shutdown latency, same echo server under each runner\n"
            f"{meta['date']}, {meta['cores']} cores, Python {meta['python']}",
        )
    py314 = results.get("shutdown_py314") or {}
    if py314.get("samples"):
        meta = results["meta"]
        plot.shutdown_plot(
            py314["samples"],
            out / "shutdown-py314.png",
            f"Shutdown latency on Python {py314['python']} (container {py314['image']})\n"
            f"{meta['date']}, {meta['cores']} cores",
        )
    notes = BENCH_DIR / "NOTES.md"
    (out / "RESULTS.md").write_text(
        report.render(results, notes=notes.read_text() if notes.exists() else None)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: bench/, or bench/.quick/ with --quick)"
    )
    parser.add_argument(
        "--template",
        type=Path,
        default=BENCH_DIR.parent,
        help="template checkout to bake (default: this repository's working tree)",
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions of every section (default: the mode's own)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument(
        "--readme-table",
        type=Path,
        metavar="DIR",
        help="print the benchmark table of docs/benchmarks.md from DIR/results.json",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="DIR",
        help="rebuild RESULTS.md and the plot from DIR/results.json",
    )
    args = parser.parse_args(argv)

    if args.readme_table:
        from harness import goals

        print(
            "\n".join(
                goals.readme_table(json.loads((args.readme_table / "results.json").read_text()))
            )
        )
        return 0
    if args.report_only:
        write_outputs(json.loads((args.report_only / "results.json").read_text()), args.report_only)
        return 0
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = dataclasses.replace(
            plan,
            **{
                f.name: args.reps
                for f in dataclasses.fields(plan)
                if f.name.endswith("_reps") and getattr(plan, f.name) > 0
            },
        )
    out = args.out or (BENCH_DIR / ".quick" if args.quick else BENCH_DIR)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    from cookiecutter.config import get_config  # noqa: F401  (fail early if the venv is broken)

    defaults = json.loads((BENCH_DIR.parent / "cookiecutter.json").read_text())
    python_version = defaults["python_version"][0]
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="aiorun-bench-") as tmp:
        results = measure(plan, only, Path(tmp), python_version, args.template.resolve())
    template = results.pop("meta_template")
    results["meta"] = {
        **machine(),
        "command": "python bench/run.py"
        + (" --quick" if args.quick else "")
        + (f" --reps {args.reps}" if args.reps else "")
        + (f" --only {args.only}" if args.only else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "template": template,
        "elapsed_s": time.monotonic() - STARTED,
        "load_before": load_before,
        "load_after": load_average(),
    }
    results["config"] = asdict(plan)
    write_outputs(results, out)
    log(f"wrote {out / 'RESULTS.md'}")
    if results.get("throughput_failed"):
        log(f"failed (see RESULTS.md): {', '.join(results['throughput_failed'])}")
        return 1  # the report is written, but a bench that lost a variant must not pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
