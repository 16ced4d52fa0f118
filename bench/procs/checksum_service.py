"""The real service writing its journal records with and without their CRC-32, alternated in
one process: what the checksum costs.

Why this way: every journal record carries a CRC-32 of its request
(``servicekit.journal.encode``), paid per byte on the hot path. Its cost per 1 KiB line is a few
percent of a round trip, and two processes run one after the other (the service, then
procs/unchecked_journal_service.py) spread further than that on a shared machine: the same pair
read 0.80, 0.95 and 1.04 of each other in ping-pong in three full runs. This runs the generated
service exactly as ``python -m app`` does, through ``servicekit.main.main(protocol)``, and
swaps the journal's ``encode`` (looked up per append) between the shipped one (``crc``) and
the newline join the journal used before records were checksummed (``plain``).

A thread swaps the two every SLICE seconds (which goes first is drawn at random) and prints,
for each slice it ends, ``slice crc|plain REQUESTS CPU_S`` on stderr: the requests ``handle``
saw and the process CPU time (all threads) spent while that version was in place. The journal
it leaves mixes both kinds of record and would fail verification at replay; the bench removes
it, and this refuses to start on one it finds.

    python checksum_service.py PROJECT_DIR     (run with the project as cwd; stopped with SIGKILL)
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import types
from typing import Any

from unchecked_journal_service import unchecked

SLICE = 0.05
"""Seconds each version runs before the other takes over."""


def bench_protocol() -> tuple[types.ModuleType, list[int]]:
    """An echo protocol module for ``servicekit.main.main``, and its request count."""
    count = [0]

    async def handle(request: bytes) -> bytes:
        count[0] += 1
        return request

    def recover(request: bytes) -> None:
        """Stateless: the service need not read the journal."""

    protocol = types.ModuleType("bench_checksum_protocol")
    protocol.handle = handle  # type: ignore[attr-defined]
    protocol.recover = recover  # type: ignore[attr-defined]
    return protocol, count


def swap(journal: Any, count: list[int]) -> None:
    """Alternate the versions forever, printing each finished slice's requests and CPU."""
    checked = journal.encode
    crc = random.random() < 0.5  # which goes first: see seam_service.py
    journal.encode = checked if crc else unchecked
    cpu, seen = time.process_time(), count[0]
    while True:
        time.sleep(SLICE)
        name = "crc" if crc else "plain"
        crc = not crc
        journal.encode = checked if crc else unchecked
        now, total = time.process_time(), count[0]
        print(f"slice {name} {total - seen} {now - cpu:.6f}", file=sys.stderr, flush=True)
        cpu, seen = time.process_time(), total  # the print is charged to neither


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    import servicekit.journal
    from servicekit.main import main as service_main

    path = os.environ.get("APP_JOURNAL_PATH")
    if path and os.path.exists(path):
        sys.exit(f"checksum_service: {path} exists; this run's records would fail to verify")
    protocol, count = bench_protocol()
    threading.Thread(target=swap, args=(servicekit.journal, count), daemon=True).start()
    return int(service_main(protocol, []))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
