"""The real service with a protocol whose requests need no journal: what skipping it saves.

Why: a protocol may declare, with ``needs_journal(request) -> False``, that a request changes
nothing, so the service answers it without a journal write. Such a request must then cost less
than a journaled one; the bench runs this beside the plain service to show by how much. It
runs the service through its public entry point, ``servicekit.main.main(protocol)``, with the
echo as ``handle``. A build that does not know ``needs_journal`` journals every request anyway;
the bench sees the journal grow and reports the row as not measured.

    python journal_free_service.py PROJECT_DIR     (run with the project as cwd)
"""

from __future__ import annotations

import sys
import types


def bench_protocol() -> types.ModuleType:
    """The echo, with every request declared journal-free."""

    async def handle(request: bytes) -> bytes:
        return request

    def recover(request: bytes) -> None:
        """Stateless: the service need not read the journal."""

    def needs_journal(request: bytes) -> bool:
        return False

    protocol = types.ModuleType("bench_journal_free_protocol")
    protocol.handle = handle  # type: ignore[attr-defined]
    protocol.recover = recover  # type: ignore[attr-defined]
    protocol.needs_journal = needs_journal  # type: ignore[attr-defined]
    return protocol


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    from servicekit.main import main as service_main

    return int(service_main(bench_protocol(), []))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
