"""Flood one connection with blocks of empty lines, reading and dropping the replies.

The Python stand-in for `loadgen flood` when no C compiler is found: one thread writes
SIZE-byte blocks of b"\\n" as fast as the server takes them, the main thread reads and drops
whatever comes back, for SECONDS.

    python flooder.py PORT SIZE SECONDS
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def main() -> int:
    port, size, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sock = socket.create_connection(("127.0.0.1", port))
    block = b"\n" * size
    end = time.monotonic() + seconds

    def send() -> None:
        try:
            while time.monotonic() < end:
                sock.sendall(block)
        except OSError:
            pass

    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    sock.settimeout(1.0)
    while time.monotonic() < end:
        try:
            if not sock.recv(65536):
                return 1
        except TimeoutError:
            continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
