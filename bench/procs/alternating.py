"""What the procs that alternate two versions of the service in one process share
(seam_service.py, metrics_service.py, checksum_service.py): a counting echo protocol, and the
thread that swaps the versions and reports each slice for harness/alternated.py.

Why one place: the slices' format and timing are what the harness parses and compares, so the
three measurements must produce them the same way.
"""

from __future__ import annotations

import random
import sys
import time
import types
from collections.abc import Callable

SLICE = 0.05
"""Seconds each version runs before the other takes over."""


def counting_echo(name: str) -> tuple[types.ModuleType, list[int]]:
    """An echo protocol module for ``servicekit.main.main``, and its request count."""
    count = [0]

    async def handle(request: bytes) -> bytes:
        count[0] += 1
        return request

    def recover(request: bytes) -> None:
        """Stateless: the service need not read the journal."""

    protocol = types.ModuleType(name)
    protocol.handle = handle  # type: ignore[attr-defined]
    protocol.recover = recover  # type: ignore[attr-defined]
    return protocol, count


def alternate(names: tuple[str, str], use: Callable[[bool], None], count: list[int]) -> None:
    """Swap the versions forever: ``use(False)`` puts ``names[0]``'s in place, ``use(True)``
    ``names[1]``'s. For each slice it ends, print ``slice NAME REQUESTS CPU_S`` on stderr:
    the requests ``handle`` saw and the process CPU time (all threads) spent while that
    version was in place.

    Which goes first is drawn at random, so that work coming at a fixed time after the start
    does not always land on the same side.
    """
    second = random.random() < 0.5
    use(second)
    cpu, seen = time.process_time(), count[0]
    while True:
        time.sleep(SLICE)
        name = names[second]
        second = not second
        use(second)
        now, total = time.process_time(), count[0]
        print(f"slice {name} {total - seen} {now - cpu:.6f}", file=sys.stderr, flush=True)
        cpu, seen = time.process_time(), total  # the print is charged to neither
