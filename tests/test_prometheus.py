"""A real Prometheus scrapes a generated service, and what it stored is what the clients did.

Debian's Prometheus server is started on loopback with a scrape configuration of ours (every
100 ms) and a temporary storage folder; the generated service runs with ``APP_METRICS_PORT``.
Clients put load on it; then Prometheus's own HTTP API must report exactly the requests, the
journaled lines and the closed connections the clients made. A SIGTERM with connections open
must show in the drain metrics while the drain runs, and with ``APP_WORKERS=2`` the sum over
the ``worker`` label must equal what the clients saw. Every query of the shipped Grafana
dashboard must be accepted by this Prometheus and return data.

Needs the ``prometheus`` binary (``apt-get install prometheus``; .ci/run installs it); skips
without it, fails under --require-prometheus.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

WAIT_LIMIT = 30.0
"""Seconds for Prometheus to start, or to have scraped what a test waits for."""
SCRAPE_INTERVAL = "100ms"
"""Often: the drain below lasts at most 2 s (server.LINGER_SECONDS for an ending connection)."""
SHUTTING_DOWN = b"\x15error: shutting down\n"  # a refusal starts with NAK (server.REFUSAL)
DASHBOARD = Path("docs", "servicekit-dashboard.json")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], bool], log: Callable[[], str] = str) -> None:
    """Poll something another process reaches on its own schedule (a scrape, a start)."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_LIMIT:g}s: {what}\n{log()}")
        time.sleep(0.05)


class Child:
    """A process whose stderr is collected in the background."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in list(self.lines) if (m := re.search(pattern, line))][:1]
            return bool(found) or self.popen.poll() is not None

        wait_until(f"a line matching {pattern!r}", seen, lambda: self.log)
        assert found, f"exited without a line matching {pattern!r}:\n{self.log}"
        return found[0]

    def end(self) -> int:
        """Wait for the exit (killing it after the limit); return the status."""
        try:
            return self.popen.wait(WAIT_LIMIT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"still running after {WAIT_LIMIT:g}s:\n{self.log}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


class Prometheus(Child):
    """Debian's Prometheus on a free loopback port, scraping one target."""

    def __init__(self, binary: str, folder: Path, target: int) -> None:
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: service\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target}']\n"
        )
        self.port = free_port()
        super().__init__(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            folder,
            dict(os.environ),
        )
        wait_until("Prometheus ready", self._ready, lambda: self.log)

    def _ready(self) -> bool:
        assert self.popen.poll() is None, f"prometheus exited:\n{self.log}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector ``expression`` evaluates to now; fails on a query error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        assert len(result) <= 1, f"{expression} is several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_for_value(self, expression: str, expected: float, log: Callable[[], str]) -> None:
        seen: list[float | None] = [None]

        def reached() -> bool:
            seen[0] = self.value(expression)
            return seen[0] == expected

        wait_until(f"{expression} == {expected} (last: {seen})", reached, log)


@pytest.fixture(scope="module")
def prometheus_binary(request: pytest.FixtureRequest) -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        why = "the prometheus server is not installed (apt-get install prometheus)"
        if request.config.getoption("--require-prometheus"):
            pytest.fail(f"Prometheus is required here but {why}", pytrace=False)
        pytest.skip(why)
    return binary


@pytest.fixture(scope="module")
def project(bake: Callable[..., Path]) -> Path:
    return bake()


@pytest.fixture
def start(
    prometheus_binary: str, project: Path, tmp_path: Path
) -> Iterator[Callable[..., tuple[Child, Prometheus, int]]]:
    """Start the generated service with metrics on, and a Prometheus scraping it."""
    children: list[Child] = []

    def run(**settings: str) -> tuple[Child, Prometheus, int]:
        metrics = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
        env.update(
            PYTHONPATH=str(project),
            APP_HOST="127.0.0.1",
            APP_PORT="0",
            APP_METRICS_PORT=str(metrics),
            APP_JOURNAL_PATH=str(tmp_path / "data" / "journal.log"),
            **settings,
        )
        service = Child([sys.executable, "-m", "app"], project, env)
        children.append(service)
        port = int(service.wait_for(r"listening on 127\.0\.0\.1:(\d+)")[1])
        folder = tmp_path / "prometheus"
        folder.mkdir()
        prometheus = Prometheus(prometheus_binary, folder, metrics)
        children.append(prometheus)
        prometheus.wait_for_value('up{job="service"}', 1, lambda: prometheus.log)
        return service, prometheus, port

    yield run
    for child in children:
        child.kill()


def load(port: int, clients: int, requests: int) -> tuple[int, int]:
    """Each client ping-pongs ``requests`` lines, then sends 4 at once; (lines, bytes) sent."""
    sent = [0, 0]

    async def client(number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in range(requests):
            line = b"client %d line %d\n" % (number, n)
            writer.write(line)
            assert await reader.readuntil(b"\n") == line  # the template's echo protocol
            sent[0] += 1
            sent[1] += len(line)
        batch = b"".join(b"client %d batch %d\n" % (number, n) for n in range(4))
        writer.write(batch)
        for _ in range(4):
            await reader.readuntil(b"\n")
        sent[0] += 4
        sent[1] += len(batch)
        writer.close()
        await writer.wait_closed()

    async def everyone() -> None:
        await asyncio.gather(*(client(n) for n in range(clients)))

    asyncio.run(everyone())
    return sent[0], sent[1]


def test_prometheus_sees_what_the_clients_did_and_the_drain(start, project: Path) -> None:
    service, prometheus, port = start()
    lines, size = load(port, clients=20, requests=50)
    log = lambda: service.log + "\n" + prometheus.log  # noqa: E731
    ok = 'sum(servicekit_requests_total{outcome="ok"})'
    prometheus.wait_for_value(ok, lines, log)
    prometheus.wait_for_value("sum(servicekit_journal_lines_total)", lines, log)
    # On disk: the journal's header line, then each request with a space and its checksum.
    header = len(
        b"# servicekit journal 2: each line is a request, a space, its CRC-32 in 8 hex digits\n"
    )
    prometheus.wait_for_value("sum(servicekit_journal_bytes_total)", header + size + 9 * lines, log)
    prometheus.wait_for_value("sum(servicekit_connections_accepted_total)", 20, log)
    prometheus.wait_for_value('servicekit_connections_closed_total{reason="client"}', 20, log)
    assert prometheus.value("servicekit_connections_open") == 0
    assert prometheus.value('sum(servicekit_requests_total{outcome!="ok"})') == 0
    assert prometheus.value("servicekit_batch_seconds_count") >= lines / 4
    assert prometheus.value("process_resident_memory_bytes") > 0

    quiet = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_LIMIT) for _ in range(3)]
    holder = socket.create_connection(("127.0.0.1", port), timeout=WAIT_LIMIT)
    for sock in [*quiet, holder]:
        sock.sendall(b"before the drain\n")
        assert sock.recv(100) == b"before the drain\n"
    service.popen.send_signal(signal.SIGTERM)
    service.wait_for(r"draining 4 connection\(s\)")
    for sock in quiet:
        received = b""
        while chunk := sock.recv(100):
            received += chunk
        assert received == SHUTTING_DOWN
        sock.close()
    holder.sendall(b"refused\n")
    assert holder.recv(100) == SHUTTING_DOWN
    # The holder keeps sending after the refusal, so the drain goes on (its input is read
    # and thrown away until it goes quiet, for at most LINGER_SECONDS, 2 s) while Prometheus
    # scrapes it, every 100 ms.
    talking = threading.Event()
    talking.set()

    def keep_talking() -> None:
        while talking.is_set():
            holder.sendall(b"x")
            time.sleep(0.05)

    talker = threading.Thread(target=keep_talking)
    talker.start()
    try:
        prometheus.wait_for_value("servicekit_draining", 1, log)
        prometheus.wait_for_value("servicekit_drain_connections", 4, log)
        prometheus.wait_for_value('servicekit_connections_closed_total{reason="drain"}', 3, log)
        assert prometheus.value("servicekit_connections_open") == 1
        assert prometheus.value("servicekit_drain_seconds") > 0
        assert prometheus.value(ok) == lines + 4  # and the four before the drain
        dashboard_queries_answer(prometheus, project / DASHBOARD)
    finally:
        talking.clear()
        talker.join()
    holder.shutdown(socket.SHUT_WR)
    holder.recv(100)
    holder.close()
    assert service.end() == 0, service.log


def dashboard_queries_answer(prometheus: Prometheus, path: Path) -> None:
    """Every expression of the shipped dashboard is valid PromQL with data behind it."""
    dashboard = json.loads(path.read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert expressions
    for expression in expressions:
        expression = expression.replace("$__rate_interval", "30s")
        assert prometheus.query(expression), f"no data for the dashboard's {expression}"


def test_with_two_workers_the_sum_is_what_the_clients_saw(start) -> None:
    service, prometheus, port = start(APP_WORKERS="2")
    log = lambda: service.log + "\n" + prometheus.log  # noqa: E731
    lines, _ = load(port, clients=30, requests=20)
    prometheus.wait_for_value('sum(servicekit_requests_total{outcome="ok"})', lines, log)
    prometheus.wait_for_value("sum(servicekit_journal_lines_total)", lines, log)
    per_worker = prometheus.query('servicekit_requests_total{outcome="ok"}')
    assert sorted(series["metric"]["worker"] for series in per_worker) == ["1", "2"]
    assert all(float(series["value"][1]) > 0 for series in per_worker), per_worker
    assert prometheus.value("sum(servicekit_worker_up)") == 2
    service.popen.send_signal(signal.SIGTERM)
    assert service.end() == 0, service.log
