"""Turn the raw samples into bench/RESULTS.md: machine, method, headline with goals, details.

Why generated from results.json: the report can be rebuilt (`run.py --report-only DIR`) without
re-measuring, and every figure in it traces back to raw samples. Each goal row says "met" or
states the gap next to the figure with what limits it, computed from the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import alternated, goals
from .stats import fmt_number, fmt_seconds, median, ratio

HEAVY = (1000, 10000)
RUNNER_NAMES = {
    "vendored": "servicekit.aiorun (vendored)",
    "aiorun": "aiorun 2025.1.1",
    "asyncio": "asyncio.run (SIGINT)",
    "exit": "floor: os._exit",
}


def _shutdown_values(
    results: dict[str, Any], runner: str, conns: int, tasks: int, key: str = "seconds"
) -> list[float]:
    return [
        s[key]
        for s in results.get("shutdown", [])
        if s["runner"] == runner and s["conns"] == conns and s["tasks"] == tasks
    ]


def _in_runner(results: dict[str, Any], runner: str, conns: int, tasks: int) -> list[float]:
    """Seconds from the signal until the runner returned (its "runner returned" log line)."""
    return [
        v for v in _shutdown_values(results, runner, conns, tasks, "run_returned") if v is not None
    ]


def _after_runner(results: dict[str, Any], runner: str, conns: int, tasks: int) -> list[float]:
    """Seconds from the runner returning to the process exit: the interpreter's own exit."""
    return [
        s["seconds"] - s["run_returned"]
        for s in results.get("shutdown", [])
        if s["runner"] == runner
        and s["conns"] == conns
        and s["tasks"] == tasks
        and s.get("run_returned") is not None
    ]


def _throughput(
    results: dict[str, Any], variant: str, key: str = "roundtrips_per_s"
) -> list[float]:
    return [s[key] for s in results.get("throughput", []) if s["variant"] == variant]


def _goal_ratio(value: float, goal: float) -> str:
    """Two decimals, or three when two would round onto the goal and hide which side it is."""
    return f"{value:.3f}" if round(value, 2) == goal and value != goal else f"{value:.2f}"


def _range(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}\u2013{max(values):,.0f}"


def _ms(values: Sequence[float]) -> str:
    return f"{median(values) * 1000:.0f} ms" if values else "n/a"


def _verdict(ok: bool | None, gap: str = "") -> str:
    if ok is None:
        return "not measured"
    return "met" if ok else f"**not met**: {gap}"


def headline_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, result, goal, verdict) rows; also what the README shows."""
    rows: list[tuple[str, str, str, str]] = []
    conns, tasks = results.get("headline_cell", HEAVY)
    cell = f"{conns:,} conns + {tasks:,} tasks"
    ours = _shutdown_values(results, "vendored", conns, tasks)
    plain = _shutdown_values(results, "asyncio", conns, tasks)
    if ours and plain:
        rows.append(
            (
                f"Shutdown, {cell}: vendored / asyncio.run",
                f"**{ratio(ours, plain):.2f}** ({_ms(ours)} vs {_ms(plain)})",
                "—",
                "",
            )
        )
    tb = {
        r: _shutdown_values(results, r, conns, tasks, "tracebacks")
        for r in ("vendored", "aiorun", "asyncio")
    }
    if any(tb.values()):
        shown = " / ".join(f"{median(v):,.0f}" if v else "n/a" for v in tb.values())
        worst_ours = max(tb["vendored"]) if tb["vendored"] else None
        rows.append(
            (
                f"Tracebacks on stderr at {cell}: vendored / aiorun / asyncio.run (median per run)",
                shown,
                "0 for ours",
                _verdict(
                    None if worst_ours is None else worst_ours == 0,
                    f"up to {worst_ours} in one run",
                ),
            )
        )
    drain = results.get("drain", [])
    if drain:
        lost = max(s["lost"] for s in drain)
        statuses = sorted({s["returncode"] for s in drain})
        after = [s["answered_after_signal"] for s in drain]
        rows.append(
            (
                f"Drain, {drain[0]['clients']} clients mid-conversation: lines lost",
                f"**{lost}** (exit in {fmt_seconds([s['seconds'] for s in drain])}, "
                f"{median(after):,.0f} lines answered after SIGTERM, exit status "
                f"{'/'.join(map(str, statuses))})",
                "0",
                _verdict(lost == 0, f"{lost} line(s) lost in the worst run"),
            )
        )
    idle_runs = results.get("drain_idle", [])
    if idle_runs:
        idle_statuses = "/".join(sorted({str(s["returncode"]) for s in idle_runs}))
        held = median([s["seconds"] for s in idle_runs]) > 1.0
        rows.append(
            (
                f"Drain with {idle_runs[0]['idle']} idle clients that never close: time to exit",
                f"{fmt_seconds([s['seconds'] for s in idle_runs])}, exit status {idle_statuses}",
                "—",
                "idle clients hold the shutdown up, see section 2" if held else "",
            )
        )
    box = results.get("container", {})
    if box and not box.get("skipped"):
        rows.append(
            (
                "`docker stop`: generated image / trivial exec-form image",
                f"**{ratio(box['stop']['app'], box['stop']['floor']):.2f}** "
                f"({_ms(box['stop']['app'])} vs {_ms(box['stop']['floor'])})",
                "—",
                "",
            )
        )
        rows.append(
            (
                "Image size over its base",
                f"+{(box['app_bytes'] - box['base_bytes']) / 2**20:.0f} MiB "
                f"({box['app_bytes'] / 2**20:.0f} MiB on {box['base']})",
                "—",
                "",
            )
        )
    elif box:
        rows.append(("`docker stop` and image size", "skipped", "—", box["skipped"]))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(
    results: dict[str, Any], plot_name: str = "shutdown.png", notes: str | None = None
) -> str:
    """The report; ``notes`` (bench/NOTES.md: the profile and what would pay, written by
    hand because a profile is read, not computed) goes in before the reproduce section."""
    meta, cfg = results["meta"], results["config"]
    out: list[str] = [
        "# Benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"(template at `{meta['template']}`), in {meta['elapsed_s']:.0f} s.",
        "",
        f"Machine: {meta['cores']} cores ({meta['cpu']}), {meta['os']}, Python {meta['python']}, "
        f"uvloop {meta['uvloop']}, aiorun {meta['aiorun']}. The machine is shared with other "
        f"jobs (load average {meta['load_before']} before, {meta['load_after']} after), so "
        "every figure is a median of alternated runs taken in this same run, given with its "
        "min-max, and compared as a ratio.",
        "",
        "## Goals",
        "",
        *goals.table(goals.all_rows(results)),
        "",
        "## Other headline figures",
        "",
        *_table(("Measure", "Result", "Goal", "Verdict"), headline_rows(results)),
        "",
    ]
    out += _shutdown_section(results, cfg, plot_name)
    out += _py314_section(results, cfg)
    out += _drain_section(results, cfg)
    out += _throughput_section(results, cfg)
    out += _seam_section(results, cfg)
    out += _metrics_section(results, cfg)
    out += _checksum_section(results, cfg)
    out += _startup_section(results, cfg)
    out += _container_section(results)
    out += _footprint_section(results)
    out += _flood_section(results)
    if notes:
        out += [notes.strip(), ""]
    out += [
        "## Reproduce",
        "",
        "```sh",
        "python bench/run.py            # full run, writes "
        "bench/RESULTS.md, bench/shutdown.png, bench/results.json",
        "python bench/run.py --quick    # < 30 s smoke run, writes bench/.quick/",
        "python bench/run.py --readme-table bench   # docs/benchmarks.md's table",
        "```",
        "",
        "The first run builds bench/.venv (aiorun 2025.1.1, uvloop, matplotlib, cookiecutter, "
        "python-dotenv from the package index) and compiles bench/procs/loadgen.c with `cc`. "
        "Sections 1b and 5 need a Docker engine at `DOCKER_HOST` (`source "
        "scripts/docker-engine.sh`, which also builds the `aiorun-template/python:3.14` image).",
        "",
    ]
    return "\n".join(out)


def _shutdown_section(results: dict[str, Any], cfg: dict[str, Any], plot: str) -> list[str]:
    samples = results.get("shutdown", [])
    if not samples:
        return []
    runners = [r for r in RUNNER_NAMES if any(s["runner"] == r for s in samples)]
    rows = []
    for tasks in cfg["shutdown_tasks"]:
        for conns in cfg["shutdown_conns"]:
            v = {r: _shutdown_values(results, r, conns, tasks) for r in runners}
            tb = {r: _shutdown_values(results, r, conns, tasks, "tracebacks") for r in runners}
            row = [f"{conns:,}", f"{tasks:,}"] + [fmt_seconds(v[r]) for r in runners]
            if v.get("vendored") and v.get("aiorun"):
                row.append(f"{ratio(v['vendored'], v['aiorun']):.2f}")
            if v.get("vendored") and v.get("asyncio"):
                row.append(f"{ratio(v['vendored'], v['asyncio']):.2f}")
            row.append(" / ".join(f"{median(tb[r]):,.0f}" for r in runners if r != "exit"))
            rows.append(row)
    breakdown = []
    for tasks in cfg["shutdown_tasks"]:
        for conns in cfg["shutdown_conns"]:
            row = [f"{conns:,}", f"{tasks:,}"]
            for r in runners:
                if r == "exit":
                    continue
                inside = _in_runner(results, r, conns, tasks)
                after = _after_runner(results, r, conns, tasks)
                row.append(
                    f"{median(inside) * 1000:.0f} + {median(after) * 1000:.0f}" if inside else "n/a"
                )
            if "vendored" in runners:
                vin = _in_runner(results, "vendored", conns, tasks)
                ain = _in_runner(results, "aiorun", conns, tasks)
                row.append(f"{ratio(vin, ain):.2f}" if vin and ain else "n/a")
            breakdown.append(row)
    header = ["conns", "tasks"] + [RUNNER_NAMES[r] for r in runners]
    if "vendored" in runners:
        header += ["vendored / aiorun", "vendored / asyncio.run"]
    header.append("tracebacks (" + " / ".join(r for r in runners if r != "exit") + ")")
    return [
        "## 1. Shutdown latency (SIGTERM → exit)",
        "",
        f"One streams echo server (`bench/procs/echo_server.py`) under each runner; "
        f"{cfg['shutdown_reps']} alternated runs per cell, runner order rotated. Idle "
        "connections are held by the bench process, each confirmed by an echo (so its handler "
        "task is running) before the signal; the sleeping tasks exist before the `ready` line. "
        "Time runs from `kill()` to the moment a pidfd reports the exit. asyncio.run gets "
        "SIGINT (it has no SIGTERM handling); its program catches the KeyboardInterrupt. "
        "Tracebacks are counted as `Traceback (most recent call last)` lines on stderr.",
        "",
        *_table(header, rows),
        "",
        f"![Shutdown latency vs idle connections]({plot})",
        "",
        "Where the time goes: each server logs `runner returned` when `run()` / `asyncio.run()` "
        "gives control back; the rest is the interpreter's own exit (freeing what the program "
        "still holds, such as its list of cancelled tasks). Medians, ms:",
        "",
        *_table(
            ["conns", "tasks"]
            + [f"{r}: runner + exit" for r in runners if r != "exit"]
            + (["vendored / aiorun, runner only"] if "vendored" in runners else []),
            breakdown,
        ),
        "",
    ]


def _drain_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    drain = results.get("drain", [])
    if not drain:
        return []
    fields = [
        ("exit after SIGTERM", fmt_seconds([s["seconds"] for s in drain])),
        ("exit status", ", ".join(str(s["returncode"]) for s in drain)),
        ("lines answered after SIGTERM", fmt_number([s["answered_after_signal"] for s in drain])),
        ("lines sent after SIGTERM", fmt_number([s["sent_after_signal"] for s in drain])),
        (
            "of which not answered (the client sees no echo: not taken, not lost)",
            fmt_number([s.get("unanswered_sent_after_signal", 0) for s in drain]),
        ),
        (
            "**lost**: answered but not in the journal",
            str(sum(s["lost_answered_not_journaled"] for s in drain)),
        ),
        (
            "**lost**: sent before SIGTERM, neither answered nor journaled",
            str(sum(s["lost_received_then_dropped"] for s in drain)),
        ),
        (
            "sent before SIGTERM, unanswered (all runs)",
            str(sum(s["unanswered_sent_before_signal"] for s in drain)),
        ),
        (
            "journaled but never answered (all runs)",
            str(sum(s["journaled_not_answered"] for s in drain)),
        ),
        ("duplicate journal lines (all runs)", str(sum(s["journal_duplicates"] for s in drain))),
        ("wrong echoes (all runs)", str(sum(s["bad_echoes"] for s in drain))),
        ("how client connections ended", _merge_counts([s["ends"] for s in drain])),
    ]
    log = drain[-1]["drain_log"]
    return [
        "## 2. Drain of the generated service",
        "",
        f"`python -m app` from the baked project (APP_PORT=0, default settings otherwise). "
        f"{drain[0]['clients']} clients each run a strict ping-pong of numbered 64-byte lines; "
        f"once every client has had {cfg['drain_warm']} answers, SIGTERM is sent while all are "
        f"still talking. {len(drain)} run(s). Afterwards every client's answered lines are "
        "looked up in the journal file, and so are the lines each had sent before the signal.",
        "",
        *_table(("", "result"), fields),
        "",
        _ends_note([s["ends"] for s in drain]),
        "",
        *_idle_note(results.get("drain_idle", [])),
        "The service's shutdown log from the last run:",
        "",
        "```",
        *log,
        "```",
        "",
    ]


def _held_note(box: dict[str, Any]) -> list[str]:
    """Say so when the generated image's stop is not the quick graceful exit it should be."""
    slow = median(box["stop"]["app"]) > 1.0
    failed = sorted({c for c in box["exit_codes"]["app"] if c != 0})
    if not slow and not failed:
        return []
    what = []
    if slow:
        what.append(f"takes {fmt_seconds(box['stop']['app'])}")
    if failed:
        what.append(f"exits with status {', '.join(map(str, failed))}")
    return [
        f"**The generated image {' and '.join(what)}**: the idle connections held open "
        "during the stop keep its drain waiting (the idle-clients case of section 2 shows the "
        "same outside Docker).",
        "",
    ]


def _idle_note(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The second drain case: clients that hold a connection open and do nothing."""
    if not runs:
        return []
    warnings = sorted({w.split(": ", 1)[-1] for s in runs for w in s["warnings"]})
    lines = [
        f"A second case: {runs[0]['idle']} idle clients, each confirmed by one echo and then "
        "silent, that neither read nor close (as a connection pool does between uses). "
        f"SIGTERM to exit: {fmt_seconds([s['seconds'] for s in runs])}, exit status "
        f"{', '.join(str(s['returncode']) for s in runs)} ({len(runs)} run(s)).",
        "",
    ]
    if warnings:
        lines += ["Its warnings:", "", "```", *warnings, "```", ""]
    return lines


def _ends_note(ends: Sequence[dict[str, int]]) -> str:
    """What the way connections ended says about the drain."""
    resets = sum(d.get("ConnectionResetError", 0) for d in ends)
    if not resets:
        return (
            "Every client saw an orderly end of stream (EOF) after its last answer, never a "
            "reset: a reset can destroy replies the client has not read yet."
        )
    return (
        f"{resets} connection(s) ended with a reset rather than an EOF: the service closed "
        "with input still unread, and the kernel then sends a RST, which can also destroy "
        "replies the client has not read yet (here none was: see the lost and unanswered rows)."
    )


def _merge_counts(dicts: Sequence[dict[str, int]]) -> str:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items()))


def _throughput_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    samples = results.get("throughput", [])
    if not samples:
        return []
    failures = [
        f"**{name} failed and is left out**: `{why}`"
        for name, why in results.get("throughput_failed", {}).items()
    ]
    failures += [
        f"{name}: not available in this build (`{why[:300]}`)"
        for name, why in results.get("throughput_unavailable", {}).items()
    ]

    def against(variant: str, ref: str, mode: str) -> str:
        values, ref_values = goals.tp(results, variant, mode), goals.tp(results, ref, mode)
        if variant == ref or not ref_values:
            return ""
        per_cpu = ratio(
            goals.tp(results, variant, mode, "per_cpu_second"),
            goals.tp(results, ref, mode, "per_cpu_second"),
        )
        return f"{ratio(values, ref_values):.2f} / {per_cpu:.2f}"

    rows = []
    for mode in goals_modes(results):
        for variant in results["throughput_variants"]:
            values = goals.tp(results, variant, mode)
            if not values:
                continue
            rows.append(
                [
                    mode,
                    variant,
                    fmt_number(values),
                    f"{median(goals.tp(results, variant, mode, 'server_cpu')):.0%}",
                    f"{median(goals.tp(results, variant, mode, 'client_cpu')):.0%}",
                    f"{goals.us_per_line(results, variant, mode):.2f}",
                    f"{goals.us_per_line(results, variant, mode, 'client'):.2f}",
                    against(variant, goals.CEILING_WAL, mode),
                    against(variant, goals.CEILING, mode),
                ]
            )
    client = results.get("loadgen", {})
    client_note = ""
    bare = [
        x
        for x in samples
        if x["variant"] == goals.CEILING and x["mode"] == "pingpong" and x["lines_per_s"] > 0
    ]
    if bare and all("client_sys" in x for x in bare):
        us = median([x["client_cpu"] / x["lines_per_s"] * 1e6 for x in bare])
        server_us = median([x["server_cpu"] / x["lines_per_s"] * 1e6 for x in bare])
        kernel = median([x["client_sys"] / x["client_cpu"] for x in bare if x["client_cpu"] > 0])
        client_note = (
            f" Against the bare echo in ping-pong the client spends {us:.1f} µs of CPU per round "
            f"trip (the server {server_us:.1f} µs), {kernel:.0%} of it in the kernel: on "
            "loopback the sender's send() also runs the receiver's TCP processing, so no client "
            "can be much cheaper than the bare server, and two such processes share the 2 "
            "cores. The rate of the fastest servers is therefore partly the client's; the ratio "
            "per server CPU-second does not depend on it."
        )
    return [
        "## 3. Echo throughput",
        "",
        f"{cfg['tp_conns']} connections of {cfg['tp_size']}-byte lines. `pingpong`: one line in "
        "flight per connection. `pipeline`: 16 lines per write, all 16 echoes awaited before "
        "the next write. Every echoed byte is checked. "
        f"{cfg['tp_warmup']} s warm-up then {cfg['tp_seconds']} s counted, {cfg['tp_reps']} "
        "alternated run(s) per server and mode, order rotated.",
        "",
        f"The two references: `{goals.CEILING}` (procs/ceiling_server.py) journals nothing; "
        f"`{goals.CEILING_WAL}` is the same echo appending each read's complete lines to an "
        "O_APPEND file with one `os.write` before it replies, no fsync on the reply path (as "
        "the service's default `APP_JOURNAL_FSYNC=interval`): the fastest server here that "
        "keeps the write-ahead promise. Every row is given against both, as rate / per server "
        "CPU-second.",
        "",
        f"Load generator: {client.get('what', 'n/a')}.{client_note} CPU columns are each "
        "side's user+system time over the counted window (100% = one core; the server's "
        "includes its threads and child processes), and the same per line in µs. The machine "
        "has 2 cores shared with other jobs, so the ratios per server CPU-second are the "
        "steadier ones.",
        "",
        "No malloc tuning in any process: these are the figures users get. Settings of each "
        "service variant are its `APP_` variables (section 3b); the echo-first baseline is "
        f"the template at commit {goals.BASELINE_COMMIT}, baked beside the working tree.",
        "",
        *[line for failure in failures for line in (failure, "")],
        *_table(
            (
                "mode",
                "server",
                "lines/s, median (min-max)",
                "server CPU",
                "client CPU",
                "server µs per line",
                "client µs per line",
                f"vs {goals.CEILING_WAL}: rate / per CPU-s",
                f"vs {goals.CEILING}: rate / per CPU-s",
            ),
            rows,
        ),
        "",
        "### 3b. Write-ahead journal cost, per fsync policy, against the echo-first design",
        "",
        *_table(
            (
                "mode",
                "server",
                "APP_JOURNAL_FSYNC",
                "lines/s",
                "per server CPU-second",
                f"rate / echo-first {goals.BASELINE_COMMIT}",
            ),
            goals.wal_rows(results),
        ),
        "",
        "Settings in effect (`APP_` variables each service was started with):",
        "",
        *[
            f"- {name}: "
            + (", ".join(f"`{k}={_short(v)}`" for k, v in sorted(env.items())) or "none")
            + (
                f"; **not recognised** (warned as unknown): {', '.join(unknown)}"
                if (unknown := results.get("throughput_unrecognised", {}).get(name))
                else ""
            )
            for name, env in results.get("throughput_settings", {}).items()
        ],
        "",
    ]


def _seam_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    section = results.get("seam_alternated") or {}
    alt = alternated.summary(section, alternated.SEAM)
    if not alt:
        why = section.get("unavailable")
        if not why:
            return []
        return ["## 3c. The seam's cost", "", f"Not available in this build (`{why[:300]}`).", ""]
    rows = [
        [str(n), str(len(pairs)), f"{alternated.run_cost(run, alternated.SEAM):+.1%}"]
        for n, run in enumerate(section["runs"], 1)
        if (pairs := alternated.slice_pairs(run, alternated.SEAM))
    ]
    return [
        "## 3c. The seam's cost",
        "",
        "The seam is the server's call into the user's `handle` per request. "
        "`procs/seam_service.py` runs the real service through `servicekit.main.main(protocol)` "
        "with a protocol whose `handle` answers either at once (the one seam the server has) or "
        "through a second seam built like the first (one more awaited async echo, its reply "
        "checked), and swaps the two every "
        f"{section.get('slice_seconds', 0.05) * 1000:.0f} ms (which goes first drawn at random). "
        "Each slice is charged with the process CPU time and the requests of its version; a "
        "run's cost is the median over its pairs of neighbouring slices, so a slice that "
        "something else hit (a collection, another job) does not decide it. Nothing in the "
        "service is patched: the figure follows the server as it is. Ping-pong, "
        f"{cfg['tp_conns']} connections of {cfg['tp_size']}-byte lines, {cfg['tp_warmup']} s "
        f"warm-up then {cfg['tp_seconds']} s counted per run, so every read is a batch of one "
        "and a call's share of a round trip is the largest it gets.",
        "",
        *_table(("run", "slice pairs", "cost of one more seam"), rows),
        "",
        f"Median **{alt['median']:+.1%}** ({alt['min']:+.1%} to {alt['max']:+.1%} over "
        f"{alt['runs']} runs, {alt['slice_pairs']} slice pairs): {alt['us_extra']:.2f} µs of "
        f"server CPU per request with two seams, {alt['us_base']:.2f} µs with one (median "
        "slices).",
        "",
    ]


def _metrics_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    section = results.get("metrics_alternated") or {}
    alt = alternated.summary(section, alternated.METRICS)
    title = "## 3d. The metrics' cost"
    if not alt:
        why = section.get("unavailable")
        return [title, "", f"Not available in this build (`{why[:300]}`).", ""] if why else []
    rows = [
        [str(n), str(len(pairs)), f"{alternated.run_cost(run, alternated.METRICS):+.1%}"]
        for n, run in enumerate(section["runs"], 1)
        if (pairs := alternated.slice_pairs(run, alternated.METRICS))
    ]
    return [
        title,
        "",
        "With `APP_METRICS_PORT` on, the one thing the service does per batch that it does not "
        "do with metrics off is time the batch into a histogram: its counters are kept either "
        "way, and the endpoint is served by the event loop only when scraped (none here). "
        "`procs/metrics_service.py` runs the real service with metrics on through "
        "`servicekit.main.main(protocol)` and takes the batch histogram out and puts it back "
        f"every {section.get('slice_seconds', 0.05) * 1000:.0f} ms (`server.handling`, the "
        "switch the server checks per batch), charging each slice with the process CPU time "
        "and the requests of its version, as section 3c does. Ping-pong, "
        f"{cfg['tp_conns']} connections of {cfg['tp_size']}-byte lines, so every read is a "
        "batch of one and the timing's share of a round trip is the largest it gets. Section "
        "3's two services, metrics on and off, are processes run one after the other; their "
        "ratio is in the goal row too, but it spreads further than this cost.",
        "",
        *_table(("run", "slice pairs", "cost of timing every batch"), rows),
        "",
        f"Median **{alt['median']:+.1%}** ({alt['min']:+.1%} to {alt['max']:+.1%} over "
        f"{alt['runs']} runs, {alt['slice_pairs']} slice pairs): {alt['us_extra']:.2f} µs of "
        f"server CPU per request with batches timed, {alt['us_base']:.2f} µs without (median "
        "slices).",
        "",
    ]


def _checksum_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    section = results.get("checksum_alternated") or {}
    title = "## 3e. The journal checksum's cost"
    summaries = {
        mode: alternated.summary(section.get(mode) or {}, alternated.CHECKSUM)
        for mode in alternated.MODES
    }
    if not any(summaries.values()):
        why = alternated.unavailable(section)
        return [title, "", f"Not available in this build (`{why[:300]}`).", ""] if why else []
    rows = [
        [mode, str(n), str(len(pairs)), f"{alternated.run_cost(run, alternated.CHECKSUM):+.1%}"]
        for mode in alternated.MODES
        for n, run in enumerate((section.get(mode) or {}).get("runs") or [], 1)
        if (pairs := alternated.slice_pairs(run, alternated.CHECKSUM))
    ]
    medians = [
        f"{mode} **{alt['median']:+.1%}** ({alt['min']:+.1%} to {alt['max']:+.1%} over "
        f"{alt['runs']} runs, {alt['slice_pairs']} slice pairs): {alt['us_extra']:.2f} µs of "
        f"server CPU per line with the checksum, {alt['us_base']:.2f} µs without"
        for mode, alt in summaries.items()
        if alt
    ]
    floor = section.get("floor") or {}
    return [
        title,
        "",
        "Every journal record carries a CRC-32 of its request, paid per byte on the hot path. "
        "`procs/checksum_service.py` runs the real service through "
        "`servicekit.main.main(protocol)` and swaps the journal's `encode` between the shipped "
        "one and the plain newline join it used before records were checksummed, every "
        f"{(section.get('pingpong') or {}).get('slice_seconds', 0.05) * 1000:.0f} ms, charging "
        "each slice with the process CPU time and the requests of its version, as section 3c "
        f"does. {cfg['tp_conns']} connections of {cfg['tp_size']}-byte lines, ping-pong and "
        "pipelined: the checksum's cost is per byte, so pipelined lines, whose other work is "
        "the least, pay the largest share. Section 3's two services, with and without CRC-32, "
        "are processes run one after the other; their ratio spreads further than this cost.",
        "",
        *_table(("mode", "run", "slice pairs", "cost of the checksum"), rows),
        "",
        "Median " + "; ".join(medians) + " (median slices).",
        "",
        *(
            [
                f"The floor, measured in the bench's own Python: zlib's CRC-32 of one "
                f"{cfg['tp_size']}-byte line takes {floor['crc32_us']:.2f} µs, and with the "
                f"record's suffix formatted {floor['record_us']:.2f} µs (best of 5, before "
                "and after the runs).",
                "",
            ]
            if floor
            else []
        ),
    ]


def _short(value: str) -> str:
    """A scratch path shown by its file name: the folder is a temporary one."""
    return f".../{value.rsplit('/', 1)[1]}" if value.startswith("/") else value


def goals_modes(results: dict[str, Any]) -> list[str]:
    seen = {s.get("mode", "pingpong") for s in results.get("throughput", [])}
    return [m for m in ("pingpong", "pipeline") if m in seen]


def _footprint_section(results: dict[str, Any]) -> list[str]:
    foot = results.get("footprint") or {}
    if foot.get("skipped"):
        return ["## 6. Idle connection cost", "", f"Skipped: {foot['skipped']}.", ""]
    samples = foot.get("samples", [])
    if not samples:
        return []
    rows = []
    for variant in dict.fromkeys(s["variant"] for s in samples):
        mine = [s for s in samples if s["variant"] == variant]
        rows.append(
            [
                variant,
                f"{median([s['rss_before_kib'] for s in mine]) / 1024:.1f} MiB",
                f"{median([s['rss_after_kib'] for s in mine]) / 1024:.1f} MiB",
                fmt_number([s["kib_per_conn"] for s in mine], digits=2),
            ]
        )
    failed = [f"{n}: failed: `{why[:300]}`" for n, why in foot.get("failed", {}).items()]
    return [
        "## 6. Idle connection cost",
        "",
        f"RSS of the server (and its children) before the first and after the last of "
        f"{foot['count']:,} idle connections, each confirmed by one echo. "
        f"`APP_MAX_CONNECTIONS` is raised above that for the services; the bench raises its "
        "soft RLIMIT_NOFILE, which the servers inherit.",
        "",
        *[line for f in failed for line in (f, "")],
        *_table(("server", "RSS at 0", f"RSS at {foot['count']:,}", "KiB per connection"), rows),
        "",
    ]


def _flood_section(results: dict[str, Any]) -> list[str]:
    flood = results.get("flood") or {}
    samples = flood.get("samples", [])
    if not samples and not flood.get("failed"):
        return []
    rows = []
    for variant in dict.fromkeys(s["variant"] for s in samples):
        for flooded in (True, False):
            mine = [s for s in samples if s["variant"] == variant and s["flood"] is flooded]
            if not mine:
                continue
            rows.append(
                [
                    variant,
                    "flood" if flooded else "quiet",
                    f"{sum(s['count'] for s in mine):,}",
                    f"{median([s['p50'] for s in mine]) * 1000:.2f} ms",
                    f"{median([s['p99'] for s in mine]) * 1000:.2f} ms",
                    f"{max(s['max'] for s in mine) * 1000:.1f} ms",
                ]
            )
    failed = [f"{n}: failed: `{why[:300]}`" for n, why in flood.get("failed", {}).items()]
    return [
        "## 7. Bystander latency under flood",
        "",
        f"One client writes blocks of {flood.get('block', 0) // 1024} KiB of empty lines as "
        "fast as the server takes them and drops the replies; a bystander on its own "
        "connection sends one short line at a time and times each echo. The control (quiet) "
        "is the same bystander with no flood. p99 is the median over runs of each run's p99.",
        "",
        *[line for f in failed for line in (f, "")],
        *_table(("server", "load", "pings", "p50", "p99", "worst"), rows),
        "",
    ]


def _startup_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    start = results.get("startup", {})
    if not start.get("service"):
        return []
    rows = [
        ("`python -m app` → `listening on`", fmt_seconds(start["service"])),
        ("bare uvloop Protocol server → `ready`", fmt_seconds(start.get("bare_uvloop", []))),
        ('`python -c "import asyncio"` → exit', fmt_seconds(start.get("floor", []))),
    ]
    if start.get("service_big_journal"):
        rows.append(
            (
                f"`python -m app` with a {start['journal_lines']:,}-line journal → `listening on`",
                fmt_seconds(start["service_big_journal"]),
            )
        )
    return [
        "## 4. Startup to ready",
        "",
        "From just before the fork to the ready line (default settings, uvloop where "
        f"installed), {cfg['startup_reps']} alternated runs each, after one warm-up start of "
        f"each (compiled .pyc files present: {start.get('pyc_files', '?')} under `app/`). The "
        f"big journal is {start.get('journal_bytes', 0) / 2**20:.0f} MiB of complete lines "
        f"written before the first start; the services grew it by "
        f"{start.get('journal_grown_bytes', 0):,} bytes over all starts.",
        "",
        *_table(("", "time, median (min-max)"), rows),
        "",
    ]


def _py314_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    py314 = results.get("shutdown_py314") or {}
    if py314.get("skipped"):
        return ["## 1b. Shutdown latency on Python 3.14", "", f"Skipped: {py314['skipped']}.", ""]
    if not py314.get("samples"):
        return []
    inner = _shutdown_section(
        {"shutdown": py314["samples"]},
        {**cfg, "shutdown_reps": cfg.get("py314_reps", cfg["shutdown_reps"])},
        plot="",
    )
    body = [line for line in inner[1:] if not line.startswith("![")]
    return [
        f"## 1b. Shutdown latency on Python {py314['python']} (container `{py314['image']}`)",
        "",
        "The same grid and server, run inside the image (host network, the bench and the "
        "baked project mounted read-only, aiorun 2025.1.1 from the bench venv on PYTHONPATH).",
        *body,
        "![Shutdown latency on Python 3.14](shutdown-py314.png)",
        "",
    ]


def _container_section(results: dict[str, Any]) -> list[str]:
    box = results.get("container")
    if not box:
        return []
    if box.get("skipped"):
        return ["## 5. Container", "", f"Skipped: {box['skipped']}.", ""]
    mib = 2**20
    return [
        "## 5. Container",
        "",
        f"The generated Dockerfile built on `{box['base']}` (a local Debian base from "
        "scripts/docker-engine.sh when the registry's python image is not present; build took "
        f"{box['build_seconds']:.0f} s). `docker stop -t 10` is timed with "
        f"{box.get('idle_connections', 20)} idle connections open, against a trivial exec-form "
        "image on the same base whose Python exits on SIGTERM (Docker's own stop overhead). "
        "Containers use the host network, bound to 127.0.0.1.",
        "",
        *_held_note(box),
        *_table(
            ("", "generated image", "trivial image", "ratio"),
            [
                (
                    "`docker stop`",
                    fmt_seconds(box["stop"]["app"]),
                    fmt_seconds(box["stop"]["floor"]),
                    f"{ratio(box['stop']['app'], box['stop']['floor']):.2f}",
                ),
                (
                    "exit status",
                    ", ".join(map(str, box["exit_codes"]["app"])),
                    ", ".join(map(str, box["exit_codes"]["floor"])),
                    "",
                ),
                (
                    "image size",
                    f"{box['app_bytes'] / mib:.0f} MiB",
                    f"{box['floor_bytes'] / mib:.0f} MiB",
                    f"base {box['base_bytes'] / mib:.0f} MiB, "
                    f"+{(box['app_bytes'] - box['base_bytes']) / mib:.0f} MiB",
                ),
            ],
        ),
        "",
    ]
