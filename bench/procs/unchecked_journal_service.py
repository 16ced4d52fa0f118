"""The real service writing journal records without their CRC-32: what the checksum costs.

Why: since the journal checks itself at replay, every record carries a CRC-32 of its request
(``servicekit.journal.encode``). The checksum is paid per byte of request on the hot path, so
the bench runs this beside the plain service, with the same echo and settings, and reports
the difference per line and per KiB. Only ``encode`` is replaced, by the newline join the
journal used before records were checksummed; everything else is the service as shipped.
The journal it leaves would fail verification at replay, so it is removed before the start.

    python unchecked_journal_service.py PROJECT_DIR     (run with the project as cwd)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def unchecked(requests: Iterable[bytes]) -> bytes:
    """Records as plain lines: request and newline, no checksum."""
    joined = b"\n".join(requests)
    return joined + b"\n" if joined else b""


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    import servicekit.journal
    from app import protocol
    from app.lifespan import lifespan
    from app.settings import Settings
    from servicekit.main import main as service_main

    journal = os.environ.get("APP_JOURNAL_PATH")
    if journal and os.path.isfile(journal):
        os.unlink(journal)
    servicekit.journal.encode = unchecked
    return int(service_main(protocol, [], lifespan=lifespan, settings=Settings))


if __name__ == "__main__":
    sys.exit(main())
