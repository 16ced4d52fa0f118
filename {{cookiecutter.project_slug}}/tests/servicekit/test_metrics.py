"""Metrics and HTTP probes (APP_METRICS_PORT) in real processes: the numbers a scrape shows
are what the clients did, the probes mean what ``python -m servicekit.health`` means, a drain
shows while it runs, and with workers the aggregate adds up and survives a restart."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    JOURNAL_HEADER,
    SHUTTING_DOWN,
    Service,
    StartService,
    ask,
    connect,
    is_reply,
    read_to_end,
    service_env,
)
from prometheus_client.parser import text_string_to_metric_families

from servicekit.exitcodes import ExitCode
from servicekit.tally import Histogram

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="signals and workers: POSIX")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """A port nothing listens on now (the test then binds it at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample; with labels left out, the sum over them (e.g. over ``worker``)."""
    matching = [
        v
        for (sample, sample_labels), v in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    ]
    assert matching, f"no sample {name}{labels}"
    return sum(matching)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the service reaches on its own (a connection it closes, a worker it
    restarts): its own log does not say when, so the test asks until the guard."""
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached in {HANG_GUARD}s: {what}")
        time.sleep(0.02)


def metrics_service(start_service: StartService, **settings: str) -> tuple[Service, int]:
    port = free_port()
    service = start_service(APP_METRICS_PORT=str(port), **settings)
    service.wait_for(rf"metrics and probes on http://127\.0\.0\.1:{port}/metrics")
    return service, port


def test_histogram_buckets_are_cumulative_with_le_bounds() -> None:
    histogram = Histogram((0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(observed)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.total == pytest.approx(4.65)


def test_metrics_are_off_by_default(start_service: StartService) -> None:
    service = start_service("-X", "importtime", "-m", "app")
    imported = {line.rsplit("|", 1)[1].strip() for line in service.lines if "import time:" in line}
    assert "servicekit.server" in imported, "no import times read"
    assert "prometheus_client" not in imported
    assert "servicekit.metrics" not in imported
    assert "metrics and probes" not in service.log
    assert service.stop() == ExitCode.OK


def test_counters_match_what_the_clients_did(start_service: StartService) -> None:
    service, port = metrics_service(
        start_service, APP_MAX_LINE_BYTES="64", APP_IDLE_TIMEOUT="0.5", APP_JOURNAL_FSYNC="always"
    )
    sent: list[bytes] = []
    for client in range(3):
        with connect(service) as sock:
            for n in range(5):
                request = b"client %d request %d\n" % (client, n)
                assert is_reply(ask(sock, request))
                sent.append(request)
            assert ask(sock, b"\n") == b"\n"  # a ping
            sock.sendall(b"pipelined 1\npipelined 2\n")  # one batch, one journal write
            assert read_line_count(sock, 2)
            sent += [b"pipelined 1\n", b"pipelined 2\n"]
            sock.shutdown(socket.SHUT_WR)
            assert read_to_end(sock) == b""
    with connect(service) as sock:
        assert ask(sock, b"x" * 100 + b"\n").startswith(b"\x15error: line longer than")
        assert read_to_end(sock) == b""
    idle = connect(service)
    assert ask(idle, b"\n") == b"\n"
    assert read_to_end(idle) == b""  # dropped after APP_IDLE_TIMEOUT
    idle.close()

    def settled() -> bool:
        samples = scrape(port)
        return value(samples, "servicekit_connections_closed_total") == 5

    wait_until(settled, "five connections counted as closed")
    samples = scrape(port)
    assert value(samples, "servicekit_requests_total", outcome="ok") == len(sent)
    assert value(samples, "servicekit_requests_total", outcome="exception") == 0
    assert value(samples, "servicekit_pings_total") == 4
    assert value(samples, "servicekit_connections_accepted_total") == 5
    assert value(samples, "servicekit_connections_open") == 0
    closed = {
        reason: value(samples, "servicekit_connections_closed_total", reason=reason)
        for reason in ("client", "too_long", "idle", "drain", "reset")
    }
    assert closed == {"client": 3, "too_long": 1, "idle": 1, "drain": 0, "reset": 0}
    assert value(samples, "servicekit_journal_lines_total") == len(sent)
    # The file: its header line, then each request with a space and its 8-digit checksum.
    on_disk = len(JOURNAL_HEADER) + sum(len(line) + 9 for line in sent)
    assert value(samples, "servicekit_journal_bytes_total") == on_disk
    assert value(samples, "servicekit_journal_size_bytes") == on_disk
    assert value(samples, "servicekit_journal_batch_lines_sum") == len(sent)
    writes = value(samples, "servicekit_journal_write_seconds_count")
    assert writes == value(samples, "servicekit_journal_batch_lines_count")
    assert len(sent) > writes >= 3 * 6  # the pipelined pairs went in one write each
    assert value(samples, "servicekit_journal_fsync_seconds_count") == writes  # always
    assert value(samples, "servicekit_journal_fsync_policy", policy="always") == 1
    # Every batch with a request or a ping was timed: 3 x (5 + 1 + 1) and the idle one's ping.
    assert value(samples, "servicekit_batch_seconds_count") == 22
    assert value(samples, "servicekit_batch_seconds_bucket", le="+Inf") == 22
    assert value(samples, "process_resident_memory_bytes") > 0
    assert service.stop() == ExitCode.OK


def read_line_count(sock: socket.socket, lines: int) -> bool:
    received = b""
    while received.count(b"\n") < lines:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        received += chunk
    return received.count(b"\n") == lines


FAILING_PROTOCOL = textwrap.dedent(
    """
    import runpy, sys
    from app import protocol
    from servicekit import main as entry

    async def handle(request):
        if request == b"boom":
            raise RuntimeError("the bug under test")
        if request == b"two lines":
            return b"one\\ntwo"
        return request

    protocol.handle = handle
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


@posix_only
def test_failed_requests_are_counted_by_outcome(workdir: Path) -> None:
    (workdir / "failing.py").write_text(FAILING_PROTOCOL)
    port = free_port()
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="journal.log", APP_METRICS_PORT=str(port))
    service = Service(workdir, env, args=["failing.py"])
    try:
        with connect(service) as sock:
            for request in (b"fine\n", b"boom\n", b"two lines\n", b"boom\n"):
                ask(sock, request)
        samples = scrape(port)
        assert value(samples, "servicekit_requests_total", outcome="ok") == 1
        assert value(samples, "servicekit_requests_total", outcome="exception") == 2
        assert value(samples, "servicekit_requests_total", outcome="invalid") == 1
        assert service.stop() == ExitCode.OK
    finally:
        if service.popen.poll() is None:
            service.popen.kill()


BROKEN_COLLECTOR = textwrap.dedent(
    """
    import runpy, sys
    from prometheus_client import REGISTRY
    from app import protocol
    from servicekit import main as entry

    class Broken:
        def describe(self):
            return []

        def collect(self):
            raise RuntimeError("a collector's bug")

    REGISTRY.register(Broken())  # as the user's own code may, in the default registry
    runpy.run_module("app", run_name="__main__")  # app/__main__.py: lifespan, settings
    """
)


@posix_only
def test_a_broken_collector_fails_the_scrape_not_the_service(workdir: Path) -> None:
    (workdir / "broken.py").write_text(BROKEN_COLLECTOR)
    port = free_port()
    env = service_env(APP_PORT="0", APP_JOURNAL_PATH="journal.log", APP_METRICS_PORT=str(port))
    service = Service(workdir, env, args=["broken.py"])
    try:
        assert get(port, "/metrics") == (500, "the scrape failed\n")
        with connect(service) as sock:
            assert is_reply(ask(sock, b"still serving\n"))
        assert get(port, "/livez") == (200, "alive\n")
        assert service.stop() == ExitCode.OK, service.log
        assert "RuntimeError: a collector's bug" in service.log
    finally:
        if service.popen.poll() is None:
            service.popen.kill()


def test_readiness_fails_at_the_connection_limit_and_liveness_does_not(
    start_service: StartService,
) -> None:
    service, port = metrics_service(start_service, APP_MAX_CONNECTIONS="2")
    assert get(port, "/readyz") == (200, "ready\n")
    first, second = connect(service), connect(service)
    assert is_reply(ask(first, b"one\n"))
    assert is_reply(ask(second, b"two\n"))
    assert get(port, "/readyz") == (503, "not ready: at its connection limit\n")
    assert get(port, "/livez") == (200, "alive\n")
    assert value(scrape(port), "servicekit_connections_open") == 2
    with connect(service) as third:
        assert read_to_end(third) == b"\x15error: too many connections\n"
    first.close()
    wait_until(lambda: get(port, "/readyz")[0] == 200, "ready again once a slot is free")
    samples = scrape(port)
    assert value(samples, "servicekit_connections_refused_total", reason="full") == 1
    second.close()
    assert service.stop() == ExitCode.OK


def test_http_requests_it_does_not_serve_get_a_status_not_a_hang(
    start_service: StartService,
) -> None:
    service, port = metrics_service(start_service)
    assert get(port, "/nothing")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    assert get(port, "/livez", method="HEAD") == (200, "")
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        sock.sendall(b"nonsense\r\n\r\n")
        assert read_to_end(sock).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        sock.sendall(b"GET /" + b"x" * 10_000)  # no end of headers, over the limit: dropped
        with contextlib.suppress(ConnectionResetError):
            assert read_to_end(sock) == b""
    assert get(port, "/livez") == (200, "alive\n")
    assert service.stop() == ExitCode.OK


@posix_only
def test_drain_shows_in_the_metrics_and_readiness_while_it_runs(
    start_service: StartService,
) -> None:
    service, port = metrics_service(start_service)
    quiet = [connect(service) for _ in range(2)]
    holder = connect(service)
    for sock in [*quiet, holder]:
        assert is_reply(ask(sock, b"before\n"))
    service.send(signal.SIGTERM)
    service.wait_for(r"draining 3 connection\(s\)")
    for sock in quiet:  # told, and they hang up: the drain counts them
        assert read_to_end(sock) == SHUTTING_DOWN
        sock.close()
    assert ask(holder, b"more\n") == SHUTTING_DOWN
    # The holder keeps talking after the refusal, so its connection, and the drain, go on
    # until it stops (the server reads and throws input away until the client goes quiet, for
    # at most server.LINGER_SECONDS, 2 s: the observations below take a fraction of that).
    stop_talking = False

    async def keep_talking() -> None:
        while not stop_talking:
            holder.sendall(b"x")
            await asyncio.sleep(0.05)

    def observe() -> None:
        nonlocal stop_talking
        try:
            assert get(port, "/readyz") == (503, "not ready: draining\n")
            assert get(port, "/livez")[0] == 200
            wait_until(
                lambda: (
                    value(scrape(port), "servicekit_connections_closed_total", reason="drain") == 2
                ),
                "the two quiet connections counted as drained",
            )
            samples = scrape(port)
            assert value(samples, "servicekit_draining") == 1
            assert value(samples, "servicekit_drain_connections") == 3
            assert value(samples, "servicekit_drain_seconds") > 0
            assert value(samples, "servicekit_connections_open") == 1
        finally:
            stop_talking = True

    async def scenario() -> None:
        talker = asyncio.create_task(keep_talking())
        await asyncio.to_thread(observe)
        await talker

    asyncio.run(scenario())
    holder.shutdown(socket.SHUT_WR)
    assert read_to_end(holder) == b""
    holder.close()
    assert service.wait() == ExitCode.OK, service.log


def test_metrics_port_in_use_exits_69_with_one_line(run_app) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_app(APP_PORT="0", APP_METRICS_PORT=str(port))
    assert result.returncode == ExitCode.ADDRESS_IN_USE, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in result.stderr
    assert "Traceback" not in result.stderr


reuse_port_only = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="workers share a port with SO_REUSEPORT"
)


@reuse_port_only
def test_workers_add_up_and_a_restarted_worker_does_not_go_backwards(
    start_service: StartService,
) -> None:
    service, port = metrics_service(start_service, APP_WORKERS="2")
    try:
        sent = 0
        for n in range(40):  # new connections: the kernel spreads them over both workers
            with connect(service) as sock:
                assert is_reply(ask(sock, b"first %d\n" % n))
                sent += 1
        samples = scrape(port)
        per_worker = {
            worker: value(samples, "servicekit_requests_total", outcome="ok", worker=worker)
            for worker in ("1", "2")
        }
        assert sum(per_worker.values()) == sent
        assert all(per_worker.values()), f"one worker got nothing: {per_worker}"
        assert get(port, "/readyz") == (200, "ready\n")

        pids = {int(index): int(pid) for index, pid in _started(service)}
        os.kill(pids[1], signal.SIGKILL)
        service.wait_for(r"worker 1 exited with SIGKILL")
        service.wait_for(rf"worker 1 ready \(pid (?!{pids[1]}\))\d+\)")
        samples = scrape(port)
        assert value(samples, "servicekit_requests_total", outcome="ok") == sent
        assert (
            value(samples, "servicekit_requests_total", outcome="ok", worker="1")
            == (per_worker["1"])
        )
        assert value(samples, "servicekit_worker_restarts_total", worker="1") == 1
        for n in range(20):
            with connect(service) as sock:
                assert is_reply(ask(sock, b"second %d\n" % n))
                sent += 1
        assert value(scrape(port), "servicekit_requests_total", outcome="ok") == sent
    finally:
        assert service.stop() == ExitCode.OK, service.log


def _started(service: Service) -> list[tuple[str, str]]:
    return re.findall(r"worker (\d+) started \(pid (\d+)\)", service.log)
