"""The generated service with one per-line cost switched off, to show where its speed goes.

Why: on uvloop the service reaches a fraction of the bare-Protocol ceiling. Running the very
same `app.__main__.main()` with one cost removed measures how much of that gap each one takes,
in the same run as the other figures. For measurement only, never a way to run the service.

    --no-journal    Journal.append() drops the line instead of queueing it for the writer
                    thread (whose batches go through the executor).

Run with the project as cwd and its path as the first argument. The bench stops these variants
with SIGKILL (that stop is not timed).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("--no-journal", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, args.project)
    sys.argv = [sys.argv[0]]  # main() parses no arguments of ours
    from app import __main__ as service_main
    from app import journal

    if args.no_journal:
        if not hasattr(journal.Journal, "append"):
            print("ablation: app.journal.Journal has no append() any more", file=sys.stderr)
            return 3
        journal.Journal.append = lambda self, line: None  # type: ignore[method-assign]
    return int(service_main.main())


if __name__ == "__main__":
    sys.exit(main())
