"""The generated service with one per-line cost switched off, to show where its speed goes.

Why: on uvloop the service reaches a fraction of the bare-Protocol ceiling. Running the very
same `app.__main__.main()` with one cost removed measures how much of that gap each one takes,
in the same run as the other figures. For measurement only, never a way to run the service.

    --no-journal    Journal.append() returns a finished future instead of queueing the batch
                    for the writer, so nothing is written.
    --no-seam       the server's batch loop answers each request itself (the echo, inline)
                    instead of calling ``protocol.handle`` through its driver and checking
                    the reply: the same server without the seam.
                    Its source is edited at start; a build whose loop no longer has the
                    expected lines says so and exits 3 ("not available in this build").
    --seam          the other side of --no-seam: the batch loop recompiled the same way from
                    its own source, unchanged, so that the two processes differ only in the
                    lines the edit replaces (same script, same imports, same compile path).
    --alternate     both batch loops in one process, swapped every SLICE seconds by a thread
                    that prints, for each slice it ends, `slice seam|no-seam LINES CPU_S` on
                    stderr: the requests handled and the process CPU time (all threads) spent
                    in that slice. Side by side at the finest grain: both loops see the same
                    memory layout, the same clients and the same load from other jobs.

Run with the project as cwd and its path as the first argument. The bench stops these variants
with SIGKILL (that stop is not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import random
import sys
import textwrap
import threading
import time

SLICE = 0.05
"""Seconds each batch loop runs before the other takes over (--alternate)."""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--no-seam", action="store_true")
    parser.add_argument("--seam", action="store_true")
    parser.add_argument("--alternate", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, args.project)
    sys.argv = [sys.argv[0]]  # main() parses no arguments of ours
    from app import __main__ as service_main
    from app import journal

    if args.no_journal:
        if not hasattr(journal.Journal, "append"):
            print("ablation: servicekit.journal.Journal has no append() any more", file=sys.stderr)
            return 3
        journal.Journal.append = _written  # type: ignore[method-assign]
    if (args.seam or args.no_seam) and not _recompiled(seam=args.seam):
        print(
            "ablation: the server's batch loop has changed: no seam-less variant", file=sys.stderr
        )
        return 3
    if args.alternate and not _alternating():
        print("ablation: the server's batch loop has changed: no alternation", file=sys.stderr)
        return 3
    return int(service_main.main())


def _written(self: object, requests: object) -> asyncio.Future[None]:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


SETUP = """        drive, answer = server.drive, server.answer
"""
CALL = """            try:
                step = drive(line)
            except BaseException:
                server.new_driver()  # it let through what is not an Exception, and ended
                raise
            if step is _ANSWERED:
                replies.append(answer[0])
                continue
"""
INLINE = """            replies.append(line)
            continue
"""


COUNT_AFTER = """        replies: list[bytes] = []
"""
COUNT = """        _ablation_lines[0] += len(parts)
"""


def _lines_in(source: str) -> set[str]:
    """Which of the blocks the edits replace occur in ``source``, each exactly once."""
    return {block for block in (SETUP, CALL, COUNT_AFTER) if source.count(block) == 1}


def _without_seam(source: str) -> str:
    """The batch loop answering each request with the request itself: no driver, no check."""
    return source.replace(SETUP, "").replace(CALL, INLINE)


def _compiled(source: str) -> object:
    from app import server

    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(source), server.__file__, "exec"), vars(server), namespace)
    return namespace["_batch"]


def _alternating() -> bool:
    """Swap the batch loop with and without the seam every SLICE seconds; report each slice.

    Both loops count their requests (one added line, the same in both); the swapping thread
    reads that count and the process CPU time at each swap, so each slice is charged with the
    CPU spent while its loop was in place. Which loop goes first is drawn at random: work that
    comes at a fixed time after the start (a collection, the journal's housekeeping) would
    otherwise always land in the same loop's slice.
    """
    from app import server

    source = inspect.getsource(server._Connection._batch)
    if not {SETUP, CALL, COUNT_AFTER} <= _lines_in(source):
        return False
    counted = source.replace(COUNT_AFTER, COUNT_AFTER + COUNT)
    loops = {"seam": _compiled(counted), "no-seam": _compiled(_without_seam(counted))}
    lines = [0]
    vars(server)["_ablation_lines"] = lines

    def swap() -> None:
        names = random.sample(["seam", "no-seam"], 2)  # which goes first: see the docstring
        server._Connection._batch = loops[names[0]]  # type: ignore[method-assign]
        cpu, count = time.process_time(), lines[0]
        while True:
            time.sleep(SLICE)
            names.reverse()
            server._Connection._batch = loops[names[0]]  # type: ignore[method-assign]
            now, total = time.process_time(), lines[0]
            print(f"slice {names[1]} {total - count} {now - cpu:.6f}", file=sys.stderr)
            cpu, count = time.process_time(), total  # the print is charged to neither

    threading.Thread(target=swap, daemon=True).start()
    return True


def _recompiled(*, seam: bool) -> bool:
    """Recompile the server's batch method, with the call through ``handle`` cut out unless
    ``seam`` (then unchanged): both sides of the comparison run code compiled the same way."""
    from app import server

    source = inspect.getsource(server._Connection._batch)
    if not {SETUP, CALL} <= _lines_in(source):
        return False
    namespace: dict[str, object] = {}
    code = textwrap.dedent(source if seam else _without_seam(source))
    exec(compile(code, server.__file__, "exec"), vars(server), namespace)
    server._Connection._batch = namespace["_batch"]  # type: ignore[method-assign]
    return True


if __name__ == "__main__":
    sys.exit(main())
