"""Bystander latency under flood: one client floods, another measures its round trips.

The flooder sends blocks of 1 MiB of empty lines (health pings) as fast as the server takes
them and reads the replies (C client `loadgen flood`, or procs/flooder.py without a compiler).
Meanwhile a bystander on its own connection sends one short line at a time and times each
echo. The same bystander also runs with no flood, as the control. The bystander's connection
is made and answered first; its pings count from WARMUP seconds after the flood starts (the
flood is load, not a signal to wait for). A ping sent in the window is timed to its reply,
however late (up to TIMEOUT).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import servers

FLOOD_BLOCK = 1 << 20
LINE = b"bystander ping\n"
TIMEOUT = 10.0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ping(sock: socket.socket) -> float:
    """One round trip of LINE; its time in seconds (TIMEOUT if no reply came in time)."""
    now = time.perf_counter()
    sock.sendall(LINE)
    reply = b""
    try:
        while not reply.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                raise RuntimeError("the server closed the bystander's connection")
            reply += chunk
    except TimeoutError:
        return TIMEOUT
    if reply != LINE:
        raise RuntimeError(f"bystander got {reply[:40]!r}")
    return time.perf_counter() - now


def bystander(sock: socket.socket, seconds: float) -> list[float]:
    """Round-trip times (s) of LINE, one in flight, for pings sent within `seconds`."""
    rtts: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        rtts.append(_ping(sock))
        if rtts[-1] >= TIMEOUT:
            break
    return rtts


def _flooder(loadgen: Path | None, port: int, seconds: float) -> subprocess.Popen[bytes]:
    if loadgen is not None:
        argv = [
            str(loadgen),
            "flood",
            str(port),
            "1",
            str(FLOOD_BLOCK),
            "1",
            "0",
            str(seconds),
            "0",
        ]
    else:
        argv = [
            sys.executable,
            str(servers.PROCS / "flooder.py"),
            str(port),
            str(FLOOD_BLOCK),
            str(seconds),
        ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def measure_once(
    spec: servers.ServerSpec, loadgen: Path | None, *, flood: bool, warmup: float, seconds: float
) -> list[float]:
    child, port = servers.start(spec)
    flooder = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _ping(sock)  # the bystander's connection is served before the flood starts
            if flood:
                flooder = _flooder(loadgen, port, warmup + seconds + 2 * TIMEOUT)
            # Warm-up is load, not synchronisation: the flood fills the socket buffers and
            # the server's queue before the bystander's pings count.
            time.sleep(warmup)
            return bystander(sock, seconds)
    finally:
        if flooder is not None:
            flooder.kill()
            flooder.wait()
        servers.stop(child, spec.stop_signal)
        journal = (spec.env or {}).get("APP_JOURNAL_PATH")
        if journal:
            Path(journal).unlink(missing_ok=True)


def specs(project: Path, baseline: Path | None, scratch: Path) -> list[servers.ServerSpec]:
    out = [servers.generated_service(project, scratch / "fl-uvloop.log", APP_USE_UVLOOP="1")]
    if baseline is not None:
        out.append(
            servers.baseline_service(baseline, scratch / "flb-uvloop.log", APP_USE_UVLOOP="1")
        )
    return out


def run_all(
    specs: Sequence[servers.ServerSpec],
    loadgen: Path | None,
    *,
    reps: int,
    warmup: float,
    seconds: float,
    log: Callable[[str], None],
) -> dict[str, object]:
    samples: list[dict[str, object]] = []
    failed: dict[str, str] = {}
    for rep in range(reps):
        for spec in specs if rep % 2 == 0 else list(reversed(specs)):
            for flood in (True, False):
                if spec.name in failed:
                    continue
                try:
                    rtts = measure_once(spec, loadgen, flood=flood, warmup=warmup, seconds=seconds)
                except (RuntimeError, OSError) as exc:
                    failed[spec.name] = f"{type(exc).__name__}: {str(exc)[-800:]}"
                    log(f"flood {spec.name}: failed: {failed[spec.name]}")
                    continue
                sample = {
                    "variant": spec.name,
                    "flood": flood,
                    "count": len(rtts),
                    "p50": percentile(rtts, 0.5),
                    "p99": percentile(rtts, 0.99),
                    "max": max(rtts) if rtts else float("nan"),
                }
                samples.append(sample)
                log(
                    f"flood rep {rep + 1}/{reps} {spec.name} {'flood' if flood else 'quiet'}: "
                    f"{len(rtts)} pings, p50 {sample['p50'] * 1000:.2f} ms, "
                    f"p99 {sample['p99'] * 1000:.2f} ms, max {sample['max'] * 1000:.1f} ms"
                )
    return {"samples": samples, "failed": failed, "block": FLOOD_BLOCK}
