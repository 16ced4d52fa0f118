"""Time one call through the seam: `await protocol.handle(request)` for a 1 KiB request.

Why: the seam's cost is what the server pays per request to call the user's `handle` instead
of echoing inline. A handle that returns without suspending is driven here by the server's own
driver (`servicekit.server._driver`: one send per request, the reply checked and left in a list), so
this loop costs what the seam adds per line; a build without that driver is timed the way it
drove `handle` (coroutine created, one send(None), StopIteration carries the reply). Prints
the microseconds per call as JSON.

    python seam_call.py PROJECT_DIR [CALLS]
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    try:
        from app import protocol
    except ImportError as exc:
        print(json.dumps({"unavailable": f"no app/protocol.py in this build ({exc})"}))
        return 0
    handle = protocol.handle
    request = b"x" * 1023
    try:
        from servicekit.server import _ANSWERED, _driver
    except ImportError:
        _driver = None
    best = float("inf")
    for _ in range(5):
        if _driver is not None:
            answer = [b""]
            driver = _driver(handle, answer)
            next(driver)
            drive = driver.send
            start = time.perf_counter()
            for _ in range(calls):
                if drive(request) is not _ANSWERED:  # it suspended: not the echo this measures
                    print(json.dumps({"unavailable": "protocol.handle suspends"}))
                    return 0
                reply = answer[0]
        else:
            start = time.perf_counter()
            for _ in range(calls):
                coroutine = handle(request)
                try:
                    coroutine.send(None)
                except StopIteration as done:
                    reply = done.value
                else:
                    coroutine.close()
                    print(json.dumps({"unavailable": "protocol.handle suspends"}))
                    return 0
        best = min(best, time.perf_counter() - start)
    assert reply == request
    print(json.dumps({"us_per_call": best / calls * 1e6}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
