"""Benchmark 3: echo throughput, ping-pong of 1 KiB lines over 50 connections.

Each server variant is started, loaded by procs/loadgen.py (a separate process: uvloop and a
bare Protocol, see its docstring) for a warm-up and then a fixed window, and stopped. Variants
are alternated, rotating the order every repetition. The machine has 2 cores: the server gets
one and the load generator the other; both processes' CPU use over the window is recorded, so
the report can say which side was the bottleneck.

glibc's malloc thresholds are pinned for the servers and the load generator (MALLOC_PIN).
Without that, glibc's dynamic mmap threshold decides from incidental heap history at start-up
whether each 256 KiB recv() buffer of asyncio's default loop is an mmap/munmap pair with page
faults on every read: the same server then runs at either of two speeds ~1.5x apart, and which
one a process gets changes with unrelated edits (seen here: 27k vs 41k round trips/s for one
unchanged command). Pinned, each variant is measured in the same, steady allocator state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import servers

LOADGEN = servers.PROCS / "loadgen.py"
MALLOC_PIN = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(8 << 20)}
"""Large buffers stay on the heap and the heap top is not returned after each read."""


def _pinned(env: dict[str, str] | None) -> dict[str, str]:
    return {**(os.environ if env is None else env), **MALLOC_PIN}


@dataclass
class Sample:
    variant: str
    roundtrips_per_s: float
    mib_per_s: float
    server_cpu: float
    client_cpu: float

    @property
    def per_cpu_second(self) -> float:
        """Round trips per second of server CPU: less sensitive than the rate to other jobs
        taking the core away, since both sides of the ratio shrink together."""
        return self.roundtrips_per_s / self.server_cpu if self.server_cpu > 0 else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "per_cpu_second": self.per_cpu_second}


def measure_once(
    spec: servers.ServerSpec, *, conns: int, size: int, warmup: float, seconds: float
) -> Sample:
    child, port = servers.start(dataclasses.replace(spec, env=_pinned(spec.env)))
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(LOADGEN),
                "--port",
                str(port),
                "--conns",
                str(conns),
                "--size",
                str(size),
                "--warmup",
                str(warmup),
                "--seconds",
                str(seconds),
                "--server-pid",
                str(child.pid),
            ],
            check=True,
            env=_pinned(None),
            capture_output=True,
            text=True,
            timeout=warmup + seconds + 60,
        ).stdout
    finally:
        servers.stop(child, spec.stop_signal)
    result = json.loads(out)
    return Sample(
        variant=spec.name,
        roundtrips_per_s=result["roundtrips_per_s"],
        mib_per_s=result["mib_per_s"],
        server_cpu=result["server_cpu"],
        client_cpu=result["client_cpu"],
    )


def run_all(
    specs: Sequence[servers.ServerSpec],
    *,
    reps: int,
    conns: int,
    size: int,
    warmup: float,
    seconds: float,
    log: Callable[[str], None],
) -> tuple[list[Sample], dict[str, str]]:
    """Every variant once per repetition, order rotated; returns samples and, for a variant
    that failed (it is then left out of later repetitions), why."""
    samples: list[Sample] = []
    failed: dict[str, str] = {}
    for rep in range(reps):
        shift = rep % len(specs)
        for spec in [*specs[shift:], *specs[:shift]]:
            if spec.name in failed:
                continue
            try:
                sample = measure_once(spec, conns=conns, size=size, warmup=warmup, seconds=seconds)
            except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                failed[spec.name] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                log(f"throughput {spec.name}: failed, left out: {failed[spec.name]}")
                continue
            samples.append(sample)
            log(
                f"throughput rep {rep + 1}/{reps} {spec.name}: "
                f"{sample.roundtrips_per_s:,.0f} rt/s, server cpu {sample.server_cpu:.0%}, "
                f"client cpu {sample.client_cpu:.0%}, {sample.per_cpu_second:,.0f} rt per cpu-s"
            )
    return samples, failed


def default_specs(project: Path, scratch: Path) -> list[servers.ServerSpec]:
    return [
        servers.generated_service(project, scratch / "j-default.log", APP_USE_UVLOOP="0"),
        servers.generated_service(project, scratch / "j-uvloop.log", APP_USE_UVLOOP="1"),
        servers.generated_service(
            project, scratch / "j-workers.log", APP_USE_UVLOOP="1", APP_WORKERS="2"
        ),
        servers.service_under_asyncio_run(project, scratch / "j-asyncio.log"),
        servers.service_ablation(project, scratch / "j-no-journal.log", "--no-journal"),
        servers.plain_streams_uvloop(),
        servers.ceiling(),
    ]
