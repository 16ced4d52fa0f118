"""Idle connection cost: the server's RSS growth from 0 to N idle connections, per connection.

Each connection is opened and confirmed with one echo (harness/idle.py), so the server holds
whatever it keeps per live, parked connection: buffers, the protocol or task, timers. RSS is
read from /proc (the process and its children) once before the first connection and once after
the last. The file-descriptor limit is raised for the bench and, by inheritance, its servers
(raise_fd_limit).
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Sequence
from pathlib import Path

from . import idle, servers


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `needed` (children inherit it);
    return the soft limit now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` and its live children, in KiB."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for kid in children.read_text().split() if children.exists() else []:
        total += rss_kib(int(kid))
    return total


def measure_once(spec: servers.ServerSpec, count: int) -> dict[str, float]:
    child, port = servers.start(spec)
    held = []
    try:
        before = rss_kib(child.pid)
        held = idle.open_idle(port, count)
        after = rss_kib(child.pid)
    finally:
        idle.close_all(held)
        servers.stop(child, spec.stop_signal)
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": (after - before) / count,
    }


def specs(
    project: Path, baseline: Path | None, scratch: Path, count: int
) -> list[servers.ServerSpec]:
    limit = str(count + 1000)
    out = [
        servers.generated_service(
            project, scratch / "f-uvloop.log", APP_USE_UVLOOP="1", APP_MAX_CONNECTIONS=limit
        ),
        servers.generated_service(
            project, scratch / "f-default.log", APP_USE_UVLOOP="0", APP_MAX_CONNECTIONS=limit
        ),
        servers.ceiling(),
    ]
    if baseline is not None:
        out.append(
            servers.baseline_service(
                baseline, scratch / "fb-uvloop.log", APP_USE_UVLOOP="1", APP_MAX_CONNECTIONS=limit
            )
        )
    return out


def run_all(
    specs: Sequence[servers.ServerSpec], *, count: int, reps: int, log: Callable[[str], None]
) -> dict[str, object]:
    limit = raise_fd_limit(count + 200)
    if limit < count + 200:
        return {"skipped": f"RLIMIT_NOFILE is {limit}, {count + 200} needed"}
    samples: list[dict[str, object]] = []
    failed: dict[str, str] = {}
    for rep in range(reps):
        shift = rep % len(specs)
        for spec in [*specs[shift:], *specs[:shift]]:
            if spec.name in failed:
                continue
            try:
                sample = {"variant": spec.name, **measure_once(spec, count)}
            except (RuntimeError, OSError) as exc:
                failed[spec.name] = f"{type(exc).__name__}: {str(exc)[-800:]}"
                log(f"idle memory {spec.name}: failed: {failed[spec.name]}")
                continue
            samples.append(sample)
            log(
                f"idle memory rep {rep + 1}/{reps} {spec.name}: "
                f"{sample['kib_per_conn']:.2f} KiB per connection"
            )
    return {
        "count": count,
        "samples": samples,
        "failed": failed,
        "settings": {s.name: s.settings() for s in specs},
    }
