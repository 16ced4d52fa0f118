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

A thread swaps the two every 50 ms (``alternating.py``, which goes first drawn at random) and
prints, for each slice it ends, ``slice crc|plain REQUESTS CPU_S`` on stderr: the requests
``handle`` saw and the process CPU time (all threads) spent while that version was in place. The
journal it leaves mixes both kinds of record and would fail verification at replay; the bench
removes it, and this refuses to start on one it finds.

    python checksum_service.py PROJECT_DIR     (run with the project as cwd; stopped with SIGKILL)
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from alternating import alternate, counting_echo
from unchecked_journal_service import unchecked


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    import servicekit.journal
    from servicekit.main import main as service_main

    path = os.environ.get("APP_JOURNAL_PATH")
    if path and os.path.exists(path):
        sys.exit(f"checksum_service: {path} exists; this run's records would fail to verify")
    protocol, count = counting_echo("bench_checksum_protocol")
    journal: Any = servicekit.journal
    checked = journal.encode

    def use(crc: bool) -> None:
        journal.encode = checked if crc else unchecked

    threading.Thread(target=alternate, args=(("plain", "crc"), use, count), daemon=True).start()
    return int(service_main(protocol, []))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
