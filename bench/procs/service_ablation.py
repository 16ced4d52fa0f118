"""The generated service with one per-line cost switched off, to show where its speed goes.

Why: on uvloop the service reaches a fraction of the bare-Protocol ceiling. Running the very
same `app.__main__.main()` with one cost removed measures how much of that gap each one takes,
in the same run as the other figures. For measurement only, never a way to run the service.

    --no-timeouts   asyncio.timeout() becomes a no-op scope. The service opens two per line
                    (the idle deadline around readuntil(), the one around drain()).
    --no-journal    Journal.append() drops the line instead of queueing it for the writer
                    thread (whose batches go through the executor).

Run with the project as cwd and its path as the first argument. The drain at shutdown relies
on the deadlines, so the bench stops these variants with SIGKILL (that stop is not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from types import TracebackType


class _NoDeadline:
    """Stands in for asyncio.Timeout: enters and leaves, never fires."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay

    async def __aenter__(self) -> _NoDeadline:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def expired(self) -> bool:
        return False

    def reschedule(self, when: float | None) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("--no-timeouts", action="store_true")
    parser.add_argument("--no-journal", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, args.project)
    sys.argv = [sys.argv[0]]  # main() parses no arguments of ours
    from app import __main__ as service_main
    from app import journal

    if args.no_timeouts:
        asyncio.timeout = _NoDeadline  # type: ignore[assignment]
    if args.no_journal:
        if not hasattr(journal.Journal, "append"):
            print("ablation: app.journal.Journal has no append() any more", file=sys.stderr)
            return 3
        journal.Journal.append = lambda self, line: None  # type: ignore[method-assign]
    return int(service_main.main())


if __name__ == "__main__":
    sys.exit(main())
