"""The generated service with one per-line cost switched off, to show where its speed goes.

Why: on uvloop the service reaches a fraction of the bare-Protocol ceiling. Running the very
same `app.__main__.main()` with one cost removed measures how much of that gap each one takes,
in the same run as the other figures. For measurement only, never a way to run the service.

    --no-journal    Journal.append() returns a finished future instead of queueing the batch
                    for the writer, so nothing is written.
    --no-seam       the server's batch loop answers each request itself (the echo, inline)
                    instead of calling ``protocol.handle``: the same server without the seam.
                    Its source is edited at start; a build whose loop no longer has the
                    expected lines says so and exits 3 ("not available in this build").

Run with the project as cwd and its path as the first argument. The bench stops these variants
with SIGKILL (that stop is not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
import textwrap


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--no-seam", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, args.project)
    sys.argv = [sys.argv[0]]  # main() parses no arguments of ours
    from app import __main__ as service_main
    from app import journal

    if args.no_journal:
        if not hasattr(journal.Journal, "append"):
            print("ablation: app.journal.Journal has no append() any more", file=sys.stderr)
            return 3
        journal.Journal.append = _written  # type: ignore[method-assign]
    if args.no_seam and not _without_seam():
        print(
            "ablation: the server's batch loop has changed: no seam-less variant", file=sys.stderr
        )
        return 3
    return int(service_main.main())


def _written(self: object, requests: object) -> asyncio.Future[None]:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


CALL = """            coroutine = handle(line)
            try:
                step = coroutine.send(None)
            except StopIteration as done:
                reply = done.value
                if type(reply) is not bytes or b"\\n" in reply:
                    reply = _checked(reply)
                replies.append(reply)
                continue
            except Exception as exc:
                replies.append(_failed(exc))
                continue
"""
INLINE = """            replies.append(line)
            continue
"""


def _without_seam() -> bool:
    """Recompile the server's batch method with the call through ``handle`` cut out."""
    from app import server

    source = inspect.getsource(server._Connection._batch)
    if CALL not in source:
        return False
    namespace: dict[str, object] = {}
    code = textwrap.dedent(source.replace(CALL, INLINE))
    exec(compile(code, server.__file__, "exec"), vars(server), namespace)
    server._Connection._batch = namespace["_batch"]  # type: ignore[method-assign]
    return True


if __name__ == "__main__":
    sys.exit(main())
