"""Start the service through the launcher, send it a request, stop it gracefully, report.

    python scripts/launcher_demo.py      (or scripts\\windows\\demo.bat / demo.ps1)

It shows the launcher's promise end to end on this machine: the stop goes through
``python -m servicekit.launcher stop`` (CTRL_BREAK_EVENT on Windows, SIGTERM elsewhere), the
service exits 0, and the request it answered is in the journal. It checks nothing about what
the answer says, so it keeps working when ``app/protocol.py`` is yours: one request line in,
one reply line out, every answered request journaled.

It uses an ephemeral port and a temporary run folder and journal, so it never disturbs a
service already running from this folder. Exit status 0 only if all of the above held.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, for `app`

from servicekit.exitcodes import describe
from servicekit.launcher import RunFiles, current_platform, request_stop

REQUEST = b"hello from the launcher demo"
LISTENING = re.compile(r"listening on (\S+):(\d+)")
TIMEOUT = 20.0


def main() -> int:
    platform = current_platform()
    with tempfile.TemporaryDirectory(prefix="app-demo-", ignore_cleanup_errors=True) as tmp:
        files = RunFiles(Path(tmp))
        journal = Path(tmp, "journal.log")
        env = {
            **os.environ,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": "0",
            "APP_JOURNAL_PATH": str(journal),
        }
        command = [sys.executable, "-m", "servicekit.launcher", "run", "--run-dir", tmp]
        say(f"demo: starting the service through the launcher: {' '.join(command)}")
        launcher = subprocess.Popen(
            command,
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        address: list[tuple[str, int]] = []
        ready = threading.Event()

        def relay_log() -> None:  # show the service's log, and find its port in it
            assert launcher.stderr is not None
            for line in launcher.stderr:
                sys.stderr.write("  | " + line)
                if not address and (match := LISTENING.search(line)):
                    address.append((match[1], int(match[2])))
                    ready.set()
            ready.set()

        reader = threading.Thread(target=relay_log, daemon=True)
        reader.start()
        try:
            if not ready.wait(TIMEOUT) or not address:
                say(f"demo: FAILED: the service did not start (launcher status {launcher.poll()})")
                return 1
            host, port = address[0]
            say(f"demo: the service listens on {host}:{port}")
            answered = ask(host, port)
            say(f"demo: asking for a graceful stop ({platform.stop_event} via the launcher)")
            result = request_stop(platform, files)
            status = launcher.wait(TIMEOUT)
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
            reader.join(TIMEOUT)
        record = REQUEST + b" %08x" % zlib.crc32(REQUEST)  # the journal's line for it
        journaled = journal.exists() and record in journal.read_bytes().splitlines()
        say(f"demo: {result.message}")
        say(
            f"demo: service exit status {status} ({describe(status)}); "
            f"journal {'holds' if journaled else 'LACKS'} the request"
        )
        ok = answered and status == 0 and journaled
        say("demo: OK" if ok else "demo: FAILED")
        return 0 if ok else 1


def ask(host: str, port: int) -> bool:
    """Ping with an empty line, then send the request; True if both got a line back."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
            replies = connection.makefile("rb")
            connection.sendall(b"\n")
            alive = replies.readline() == b"\n"
            connection.sendall(REQUEST + b"\n")
            reply = replies.readline()
    except OSError as exc:
        say(f"demo: the service does not answer: {exc}")
        return False
    say(f"demo: ping {'answered' if alive else 'NOT answered'}")
    say(f"demo: sent {REQUEST.decode()!r}, got {reply.decode(errors='replace').rstrip()!r}")
    return alive and reply.endswith(b"\n")


def say(text: str) -> None:
    """A line of the demo's own report, on stdout, in step with the log on stderr."""
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
