"""Benchmark 3: echo throughput, 1 KiB lines over 50 connections, ping-pong and pipelined.

Modes: `pingpong` keeps one line in flight per connection; `pipeline` writes 16 lines at once
and waits for all 16 echoes, the load that shows whether a server writes once per read chunk
or once per line. Each server variant is started, loaded for a warm-up and a fixed window, and
stopped; variants are alternated, the order rotated every repetition.

Two references run beside the service in every run (procs/ceiling_server.py): the bare uvloop
Protocol echo, which journals nothing, and the same echo appending each read's lines to a file
before it replies ("bare echo + WAL"), the fastest server that keeps the write-ahead promise.
The service is judged against the second; the first shows what journalling itself costs.

The load generator is the C epoll client (procs/loadgen.c, built by harness/cbuild.py), so the
client is not the bottleneck; procs/loadgen.py only when no compiler is found. Both report the
CPU share of the client and of the server (the server's pid and its children, from /proc) over
the counted window, so every rate also has a per-server-CPU-second figure, which other jobs on
this shared machine disturb less.

No malloc tuning anywhere: what the bench measures is what users get. (An earlier version
pinned glibc's malloc thresholds; the default loop's speed then depended on them.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import servers

PY_LOADGEN = servers.PROCS / "loadgen.py"
UNKNOWN_SETTING = re.compile(r"unknown setting (APP_\w+)")
"""The service's warning for an APP_ variable it does not know (servicekit/config.py)."""
MODES = {"pingpong": 1, "pipeline": 16}
"""Lines per write in each mode."""


@dataclass
class Sample:
    variant: str
    mode: str
    lines_per_s: float
    mib_per_s: float
    server_cpu: float
    client_cpu: float
    client: str
    client_sys: float = float("nan")
    """The part of client_cpu spent in the kernel."""
    journal_bytes: int = 0
    """What the server appended to its journal file in this window."""

    @property
    def per_cpu_second(self) -> float:
        """Lines per second of server CPU: both sides shrink together when other jobs take
        the core away, so this is steadier than the rate."""
        return self.lines_per_s / self.server_cpu if self.server_cpu > 0 else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "per_cpu_second": self.per_cpu_second}


def _client_argv(
    loadgen: Path | None, mode: str, port: int, pid: int, conns: int, size: int, w: float, s: float
) -> list[str]:
    depth = MODES[mode]
    if loadgen is not None:
        return [str(loadgen), mode, str(port), str(conns), str(size), str(depth), str(w), str(s),
                str(pid)]  # fmt: skip
    return [
        sys.executable, str(PY_LOADGEN), "--port", str(port), "--conns", str(conns),
        "--size", str(size), "--depth", str(depth), "--warmup", str(w), "--seconds", str(s),
        "--server-pid", str(pid),
    ]  # fmt: skip


def unrecognised_settings(lines: Sequence[str]) -> list[str]:
    """APP_ variables the server warned it does not know (so they were not in effect)."""
    return sorted({m.group(1) for line in lines if (m := UNKNOWN_SETTING.search(line))})


@dataclasses.dataclass(frozen=True)
class Load:
    """One window of load: the client and how hard it pushes. The throughput and seam
    sections run the same windows, so they share this."""

    loadgen: Path | None
    conns: int
    size: int
    warmup: float
    seconds: float

    def run(self, mode: str, port: int, pid: int) -> subprocess.CompletedProcess[str]:
        """Run the client against ``port`` (the server's ``pid`` is for its CPU share)."""
        argv = _client_argv(
            self.loadgen, mode, port, pid, self.conns, self.size, self.warmup, self.seconds
        )
        return subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=self.warmup + self.seconds + 60,
        )


def measure_once(spec: servers.ServerSpec, mode: str, load: Load) -> tuple[Sample, list[str]]:
    """One window; returns the sample and the settings the server did not recognise."""
    child, port = servers.start(spec)
    try:
        run = load.run(mode, port, child.pid)
    finally:
        servers.stop(child, spec.stop_signal)
        journal_bytes = 0
        if spec.journal and spec.journal.exists():
            journal_bytes = spec.journal.stat().st_size
            spec.journal.unlink()  # a pipelined window journals hundreds of MiB: free the disk
    if run.returncode != 0:
        raise RuntimeError(
            f"load generator exited {run.returncode}: {run.stderr.strip()[-500:]}; "
            f"server stderr tail: {child.stderr.lines[-8:]!r}"
        )
    result = json.loads(run.stdout)
    sample = Sample(
        variant=spec.name,
        mode=mode,
        lines_per_s=result["lines_per_s"],
        mib_per_s=result["mib_per_s"],
        server_cpu=result["server_cpu"],
        client_cpu=result["client_cpu"],
        client=result.get("client", "?"),
        client_sys=result.get("client_sys", float("nan")),
        journal_bytes=journal_bytes,
    )
    return sample, unrecognised_settings(child.stderr.lines)


def run_all(
    specs: Sequence[servers.ServerSpec],
    load: Load,
    *,
    reps: int,
    log: Callable[[str], None],
) -> tuple[list[Sample], dict[str, str], dict[str, list[str]]]:
    """Every (variant, mode) once per repetition, order rotated.

    Returns the samples; for each variant that failed (left out of later repetitions) why;
    and for each variant the APP_ settings it warned it did not recognise.
    """
    samples: list[Sample] = []
    failed: dict[str, str] = {}
    unrecognised: dict[str, list[str]] = {}
    cells = [(spec, mode) for spec in specs for mode in spec.modes]
    for rep in range(reps):
        shift = rep % len(cells)
        for spec, mode in [*cells[shift:], *cells[:shift]]:
            if spec.name in failed:
                continue
            try:
                sample, unknown = measure_once(spec, mode, load)
            except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                failed[spec.name] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                log(f"throughput {spec.name}: failed, left out: {failed[spec.name]}")
                continue
            unrecognised[spec.name] = unknown
            samples.append(sample)
            log(
                f"throughput rep {rep + 1}/{reps} {mode} {spec.name}: "
                f"{sample.lines_per_s:,.0f} lines/s, server cpu {sample.server_cpu:.0%}, "
                f"client cpu {sample.client_cpu:.0%}, {sample.per_cpu_second:,.0f} per cpu-s"
            )
    return samples, failed, unrecognised


def specs(
    project: Path, baseline: Path | None, scratch: Path, *, full: bool
) -> list[servers.ServerSpec]:
    """The variants, each with the modes it runs in. --quick keeps the goal rows only."""
    both = ("pingpong", "pipeline")
    out = [
        dataclasses.replace(servers.ceiling(), modes=both),
        dataclasses.replace(servers.ceiling(scratch / "j-bare-wal.log"), modes=both),
        dataclasses.replace(
            servers.generated_service(project, scratch / "j-uvloop.log", APP_USE_UVLOOP="1"),
            modes=both,
        ),
        dataclasses.replace(
            servers.generated_service(project, scratch / "j-default.log", APP_USE_UVLOOP="0"),
            modes=("pingpong",),
        ),
        # The same service with APP_METRICS_PORT on: its counters are kept either way; on,
        # each batch is also timed, and a scrape would read them (none during the window).
        dataclasses.replace(
            servers.generated_service(
                project,
                scratch / "j-metrics.log",
                APP_USE_UVLOOP="1",
                APP_METRICS_PORT=str(servers.free_port()),
            ),
            modes=both,
        ),
    ]
    if baseline is not None:
        out += [
            dataclasses.replace(
                servers.baseline_service(baseline, scratch / "jb-uvloop.log", APP_USE_UVLOOP="1"),
                modes=both,
            ),
            dataclasses.replace(
                servers.baseline_service(baseline, scratch / "jb-default.log", APP_USE_UVLOOP="0"),
                modes=("pingpong",),
            ),
        ]
    out.append(
        dataclasses.replace(
            servers.journal_free_service(project, scratch / "j-free.log"), modes=both
        )
    )
    out.append(
        dataclasses.replace(
            servers.unchecked_journal_service(project, scratch / "j-unchecked.log"), modes=both
        )
    )
    for policy in ("always", "never") if full else ():
        out.append(
            dataclasses.replace(
                servers.generated_service(
                    project,
                    scratch / f"j-fsync-{policy}.log",
                    APP_USE_UVLOOP="1",
                    APP_JOURNAL_FSYNC=policy,
                ),
                modes=both,
            )
        )
    if full:
        out += [
            dataclasses.replace(
                servers.service_under_asyncio_run(project, scratch / "j-asyncio.log"),
                modes=("pingpong",),
                optional=True,
            ),
        ]
    return out
