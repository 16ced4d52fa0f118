"""Generate a service with the defaults, run it, echo through it, stop it with SIGTERM.

Run by ./demo.sh, which provides a virtualenv holding cookiecutter. Installs the generated
service's own dependencies into it (read from the project's pyproject.toml, pinned by
requirements-dev.txt), prints each step and the service's own log, and exits with the
service's exit status (0 after a graceful shutdown). Everything it writes (the project, and
cookiecutter's replay file, which would otherwise go to ~/.cookiecutter_replay) lives in one
temporary folder that is removed at the end, whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="aiorun-template-demo-"))
    try:
        return demo(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def install_dependencies(project: Path) -> None:
    """The service's runtime dependencies, not the project's dev group: the demo runs no test."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = pyproject["project"]["dependencies"]
    print(f"$ pip install {' '.join(repr(r) for r in requirements)}")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pins = TEMPLATE / "requirements-dev.txt"
    subprocess.run([*pip, "-c", str(pins), *requirements], check=True)


def demo(folder: Path) -> int:
    config = folder / "cookiecutter.yaml"
    config.write_text(f"replay_dir: {folder / 'replay'}\ncookiecutters_dir: {folder / 'clones'}\n")
    project = Path(
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(folder), config_file=str(config))
    )
    print(f"$ cookiecutter --no-input {TEMPLATE}\ngenerated {project}\n")
    install_dependencies(project)
    print()

    env = {key: value for key, value in os.environ.items() if not key.startswith("APP_")}
    env["APP_PORT"] = "0"
    print("$ python -m app   (APP_PORT=0: any free port)")
    service = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=project, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        return talk_and_stop(project, service)
    finally:
        if service.poll() is None:  # the demo failed half-way: leave no service behind
            service.kill()
            service.wait()


def talk_and_stop(project: Path, service: subprocess.Popen[str]) -> int:
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
