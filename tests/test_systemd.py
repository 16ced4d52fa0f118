"""The generated systemd unit under a real systemd: readiness, traffic, graceful stop, watchdog.

systemd runs as PID 1 in a container on the engine from scripts/docker-engine.sh, on an image
from scripts/systemd-image.sh (Debian bookworm with systemd 252 and Python 3.11). The baked
project is installed where its unit expects it (/opt/<slug>/.venv), and the unit from
``deploy/systemd/`` is used as shipped; a drop-in only sets the port, shortens the watchdog
for the test, and puts a test-only ``sitecustomize`` on PYTHONPATH that delays the start and
lets SIGUSR2 wedge the event loop. Proven:

* ``systemd-analyze verify`` accepts the unit, and TimeoutStopSec covers the shutdown budget;
* ``systemctl start`` returns only once the service listens (Type=notify, READY=1): the port
  answers at once, although the start is delayed; the negative control (Type=simple) returns
  before it listens;
* the service echoes through the hardening (DynamicUser, ProtectSystem=strict, ...);
* ``systemctl stop`` with connections open: exit status 0, result ``success``, the journal in
  the StateDirectory holds every echoed line;
* a wedged loop stops the WATCHDOG=1 pings: systemd kills it on the watchdog timeout and
  Restart=on-failure brings it back, serving.

The container needs SYS_ADMIN, no seccomp filter, the host's cgroup namespace and a writable
/sys/fs/cgroup (``--privileged`` is not possible on this engine). It uses the host's network,
and the service binds 127.0.0.1 only.
"""

from __future__ import annotations

import io
import os
import re
import socket
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import journal_lines
from dockerlib import build, free_port, report, unavailable, wait_for

docker = pytest.importorskip(
    "docker", reason="the docker SDK is not installed (pip install docker)"
)

FIXTURES = Path(__file__).resolve().parent / "docker_fixtures"
SYSTEMD_IMAGE = "aiorun-template/systemd:bookworm"
SYSTEMD_HINT = "build it with `sudo scripts/systemd-image.sh` (after scripts/docker-engine.sh)"
CGROUP_ROOT = "/sys/fs/cgroup"
SLUG = "systemd-echo"
UNIT = f"{SLUG}.service"
START_DELAY = 2.0  # seconds the test hook delays the start, before the service listens
WATCHDOG_SEC = 5  # the test's WatchdogSec (the unit ships 10 s)

# Test-only code, installed by the drop-in through PYTHONPATH; never part of the product.
SITECUSTOMIZE = """\
import os, signal, time
if os.environ.get("AIORUN_TEST_HOOKS") == "1":
    # SIGUSR2 wedges whatever runs the main thread: the event loop, in the service.
    signal.signal(signal.SIGUSR2, lambda *_: time.sleep(3600))
    time.sleep(float(os.environ.get("AIORUN_TEST_START_DELAY", "0")))
"""


def _dropin(port: int, service_type: str = "notify") -> str:
    return f"""\
[Service]
Type={service_type}
Environment=APP_PORT={port} AIORUN_TEST_HOOKS=1 AIORUN_TEST_START_DELAY={START_DELAY}
Environment=PYTHONPATH=/opt/aiorun-test
WatchdogSec={WATCHDOG_SEC}s
ExecStopPost=/bin/sh -c 'echo "{EXIT_MARK} $$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS"'
"""


EXIT_MARK = "aiorun-test-exit:"
"""How the main process ended, as systemd tells ExecStopPost= (result, how, status)."""


def _tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Machine:
    """A container with systemd as PID 1."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def run(self, *command: str, check: bool = True) -> tuple[int, str]:
        code, output = self.container.exec_run(list(command))
        text = output.decode(errors="replace")
        if check:
            assert code == 0, f"{' '.join(command)} exited {code}:\n{text}\n{self.journal()}"
        return int(code), text

    def sh(self, script: str, check: bool = True) -> tuple[int, str]:
        return self.run("sh", "-c", script, check=check)

    def put(self, files: dict[str, str]) -> None:
        assert self.container.put_archive("/", _tar(files))

    def show(self, *properties: str) -> dict[str, str]:
        args = [f"--property={p}" for p in properties]
        _, text = self.run("systemctl", "show", *args, UNIT)
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def exits(self) -> list[str]:
        """How each run ended: 'success exited 0', 'watchdog killed ABRT', ..."""
        marked = [line for line in self.journal().splitlines() if line.startswith(EXIT_MARK)]
        return [line.removeprefix(EXIT_MARK).strip() for line in marked]

    def journal(self) -> str:
        _, output = self.container.exec_run(["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"])
        return str(output.decode(errors="replace"))


@pytest.fixture(scope="module")
def machine(
    request: pytest.FixtureRequest, docker_client: Any, bake: Callable[..., Path]
) -> Iterator[Machine]:
    try:
        docker_client.images.get(SYSTEMD_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(request.config, f"the image {SYSTEMD_IMAGE} is missing", SYSTEMD_HINT)
    project = bake(project_name="Systemd Echo", use_docker=True)
    tag = f"aiorun-systemd-test/app:{uuid.uuid4().hex[:8]}"
    image, seconds, _ = build(
        docker_client,
        tag,
        path=str(project),
        dockerfile=str(FIXTURES / "Dockerfile.systemd"),
        buildargs={"SYSTEMD_IMAGE": SYSTEMD_IMAGE, "SLUG": SLUG},
    )
    # The host's cgroup hierarchies, each bound writable, on a tmpfs of the container's own:
    # systemd creates and mounts what it misses there, not in the host's /sys/fs/cgroup
    # (a shared one would keep the empty folders it makes, which then confuse podman).
    hierarchies = _cgroup_hierarchies()
    before = sorted(os.listdir(CGROUP_ROOT))
    container = docker_client.containers.run(
        image.id,
        detach=True,
        network_mode="host",
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined"],
        cgroupns="host",
        volumes={path: {"bind": path, "mode": "rw"} for path in hierarchies},
        tmpfs={CGROUP_ROOT: "mode=755", "/run": "", "/run/lock": "", "/tmp": ""},
    )
    try:
        started = time.monotonic()
        machine = Machine(container)

        def booted() -> bool:
            _, out = container.exec_run(["systemctl", "is-system-running"])
            return out.decode().strip() in ("running", "degraded")

        wait_for("systemd to boot", booted, container, limit=60)
        report(
            request.config,
            "systemd_boot_seconds",
            round(time.monotonic() - started, 1),
            f"image built in {seconds:.1f}s; systemd booted in {time.monotonic() - started:.1f}s",
            "systemd",
        )
        machine.put({"/opt/aiorun-test/sitecustomize.py": SITECUSTOMIZE})
        yield machine
    finally:
        container.remove(force=True, v=True)
        docker_client.images.remove(image.id, force=True)
        assert sorted(os.listdir(CGROUP_ROOT)) == before, "the host's /sys/fs/cgroup changed"


def _cgroup_hierarchies() -> list[str]:
    """Mount points of the cgroup hierarchies under /sys/fs/cgroup (v1, or the v2 root)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point, fstype = fields[4], fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2") and mount_point.startswith(CGROUP_ROOT):
            points.append(mount_point)
    return points


def _echo(port: int, *lines: str) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        replies = []
        for line in lines:
            sock.sendall(line.encode() + b"\n")
            replies.append(reader.readline().decode().rstrip("\n"))
        return replies


def _start(machine: Machine, port: int) -> tuple[int, float]:
    """`systemctl start`, then at once a connection, in one exec; return status, seconds."""
    started = time.monotonic()
    code, _ = machine.sh(
        f"systemctl start {UNIT} && exec python3 -c 'import socket; "
        f'socket.create_connection(("127.0.0.1", {port}), timeout=5).close()\'',
        check=False,
    )
    return code, time.monotonic() - started


def _set_dropin(machine: Machine, text: str) -> None:
    machine.put({f"/etc/systemd/system/{UNIT}.d/test.conf": text})
    machine.run("systemctl", "daemon-reload")


def test_unit_verifies_and_covers_the_shutdown_budget(machine: Machine) -> None:
    _, text = machine.run("systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}")
    assert UNIT not in text, text  # warnings name the unit
    unit = machine.run("cat", f"/etc/systemd/system/{UNIT}")[1]
    timeout = float(re.search(r"APP_SHUTDOWN_TIMEOUT=(\d+)", unit).group(1))  # type: ignore[union-attr]
    stop = float(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M).group(1))  # type: ignore[union-attr]
    assert stop >= timeout + 2, "TimeoutStopSec must cover the shutdown and the supervisor"
    for setting in (
        "Type=notify",
        "KillMode=mixed",
        "Restart=on-failure",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        f"StateDirectory={SLUG}",
    ):
        assert re.search(rf"^{re.escape(setting)}$", unit, re.M), setting
    assert re.search(r"^WatchdogSec=\d+s$", unit, re.M)


def test_negative_control_type_simple_returns_before_listening(machine: Machine) -> None:
    port = free_port()
    _set_dropin(machine, _dropin(port, service_type="simple"))
    try:
        code, seconds = _start(machine, port)
        assert code != 0, "the port answered right after a Type=simple start"
        assert seconds < START_DELAY
    finally:
        machine.run("systemctl", "stop", UNIT, check=False)
        machine.run("systemctl", "reset-failed", UNIT, check=False)


def test_start_traffic_stop_and_watchdog(request: pytest.FixtureRequest, machine: Machine) -> None:
    port = free_port()
    _set_dropin(machine, _dropin(port))

    # Start: active only once it listens, although the hook delays that by START_DELAY.
    code, seconds = _start(machine, port)
    assert code == 0, f"the port did not answer right after systemctl start\n{machine.journal()}"
    assert seconds >= START_DELAY
    assert machine.show("ActiveState")["ActiveState"] == "active"
    assert "listening on 127.0.0.1" in machine.journal()

    # Traffic, through the hardening, with connections held open across the stop.
    lines = [f"systemd-{i}" for i in range(5)]
    assert _echo(port, *lines[:3]) == lines[:3]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        for sock, line in zip(held, [*lines[3:], "systemd-held"], strict=True):
            sock.sendall(line.encode() + b"\n")
            assert sock.makefile("rb").readline() == line.encode() + b"\n"
        lines.append("systemd-held")
        started = time.monotonic()
        machine.run("systemctl", "stop", UNIT)
        stop_seconds = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()
    log = machine.journal()
    report(
        request.config,
        "systemd_stop_seconds",
        round(stop_seconds, 2),
        f"systemctl start took {seconds:.1f}s (start delayed {START_DELAY}s); "
        f"systemctl stop with 3 connections open took {stop_seconds:.2f}s, "
        f"{machine.exits()[-1]}",
        "systemd",
    )
    # "exited 0": it ended by itself. (Dying of SIGTERM's default action would count as
    # "success" for systemd too, but as "killed TERM".)
    assert machine.exits()[-1] == "success exited 0", log
    assert "shutdown: complete" in log and "Traceback" not in log, log
    _, journal = machine.run("cat", f"/var/lib/{SLUG}/journal.log")
    assert sorted(journal_lines(journal.encode())) == sorted(lines)

    # Watchdog: wedge the loop; systemd kills it and starts it again.
    code, _ = _start(machine, port)
    assert code == 0, machine.journal()
    before = machine.show("MainPID", "NRestarts", "WatchdogTimestampMonotonic")

    def pinged() -> bool:  # systemd records when the last WATCHDOG=1 arrived
        now = machine.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        return now != before["WatchdogTimestampMonotonic"]

    wait_for("a WATCHDOG=1 ping from the running service", pinged, limit=WATCHDOG_SEC)
    wedged_at = time.monotonic()
    machine.run("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR2", UNIT)

    def restarted() -> bool:
        now = machine.show("MainPID", "NRestarts", "ActiveState", "SubState")
        return (
            int(now["NRestarts"]) > int(before["NRestarts"])
            and now["MainPID"] not in ("0", before["MainPID"])
            and now["SubState"] == "running"
        )

    wait_for("a restart after the watchdog timeout", restarted, limit=WATCHDOG_SEC * 4 + 30)
    restart_seconds = time.monotonic() - wedged_at
    log = machine.journal()
    assert re.search(r"[Ww]atchdog timeout", log), log
    assert machine.exits()[-1] == "watchdog killed ABRT", log
    assert _echo(port, "after-the-restart") == ["after-the-restart"]
    report(
        request.config,
        "systemd_watchdog_restart_seconds",
        round(restart_seconds, 1),
        f"wedged loop killed by the watchdog (WatchdogSec={WATCHDOG_SEC}s) and serving again "
        f"after {restart_seconds:.1f}s",
        "systemd",
    )
    machine.run("systemctl", "stop", UNIT)
    assert machine.exits()[-1] == "success exited 0", machine.journal()
