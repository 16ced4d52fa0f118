"""Generate a service with the defaults, run it, echo through it, stop it with SIGTERM.

Run by ./demo.sh, which provides the virtualenv. Prints each step and the service's own log,
and exits with the service's exit status (0 after a graceful shutdown).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent


def main() -> int:
    output = Path(tempfile.mkdtemp(prefix="aiorun-template-demo-"))
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output)))
    print(f"$ cookiecutter --no-input {TEMPLATE}\ngenerated {project}\n")

    env = {key: value for key, value in os.environ.items() if not key.startswith("APP_")}
    env["APP_PORT"] = "0"
    print("$ python -m app   (APP_PORT=0: any free port)")
    service = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=project, env=env, stderr=subprocess.PIPE, text=True
    )
    assert service.stderr is not None
    log: list[str] = []
    for line in service.stderr:
        log.append(line)
        print("  " + line, end="")
        if match := re.search(r"listening on (\S+):(\d+)", line):
            break
    else:
        print("error: the service did not start", file=sys.stderr)
        return service.wait()

    port = match[2]
    print(f"\n$ python -m servicekit.client --port {port} 'hello, graceful world'")
    client = subprocess.run(
        [sys.executable, "-m", "servicekit.client", "--port", port, "hello, graceful world"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    print("  " + (client.stdout or client.stderr), end="")

    print(f"\n$ kill -TERM {service.pid}")
    service.send_signal(signal.SIGTERM)
    for line in service.stderr:
        print("  " + line, end="")
    status = service.wait()
    journal = (project / "data" / "journal.log").read_text()
    print(f"\nexit status {status}; journal data/journal.log holds: {journal!r}")
    return status or client.returncode


if __name__ == "__main__":
    sys.exit(main())
