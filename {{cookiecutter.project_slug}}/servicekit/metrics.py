"""Prometheus metrics and HTTP probes on ``APP_METRICS_PORT`` (off by default).

Three paths on one port, served over HTTP by the service's own event loop:

- ``/metrics``: the counters below in Prometheus's text format, plus the client library's
  default registry (process, platform and garbage-collector metrics, and any metric the
  user's code registers there);
- ``/livez``: 200 while the event loop answers. Answered by the loop itself, not by a thread,
  so a wedged loop fails it, as ``python -m servicekit.health --live`` does. A draining
  service is alive too: its drain is not a reason to restart it;
- ``/readyz``: 200 when the service should get new connections; 503 at
  ``APP_MAX_CONNECTIONS`` and from the start of the drain, as the default
  ``python -m servicekit.health`` fails then.

Why the numbers cost nothing per request: the server and the journal keep plain integers and
histograms (``servicekit/tally.py``) that they add to per batch or per write, and the
collector here reads them only when Prometheus scrapes. Nothing here runs per request, and
``prometheus_client`` is imported only when the port is on.

With ``APP_WORKERS`` above 1 the supervisor serves the port: each worker serves the same
paths on a Unix socket in a private folder the supervisor made, and the supervisor's
``/metrics`` is every worker's families with a ``worker`` label (1..N, bounded), so
``sum without (worker) (...)`` is the service's total. A restarted worker starts counting
from zero; the supervisor adds what its predecessor had counted at its last scrape to every
counter and histogram of that slot, so no series of the aggregate goes backwards (what a
worker counted after its last scrape and before a crash is lost). The supervisor's
``/readyz`` is ready when every running worker is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from servicekit.server import DRAINING, END_REASONS, Replies
from servicekit.tally import SECONDS, Histogram

if TYPE_CHECKING:
    from servicekit.service import Service

logger = logging.getLogger(__name__)

PREFIX = "servicekit_"
SOCKET_VARIABLE = "SUPERVISOR_METRICS_SOCKET"
"""Set by the supervisor in each worker's environment: the Unix socket it serves on."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_LIMIT = 8192
"""Most bytes of request line and headers read; a longer request is dropped."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its request: a slow one cannot hold a connection."""
MAX_CLIENTS = 16
"""Concurrent HTTP connections; more are closed at once (a scraper needs one)."""
WORKER_TIMEOUT = 3.0
"""Seconds the supervisor waits for one worker's answer before it counts it as down."""
REFUSED = ("full", "draining")
"""End reasons of connections refused at accept; the other reasons count as closed."""

Render = Callable[[], Awaitable[bytes]]
Readiness = Callable[[], Awaitable[str | None]]


class Endpoint:
    """``/metrics``, ``/livez`` and ``/readyz`` over HTTP/1.0-style one-shot connections."""

    def __init__(
        self, render: Render, readiness: Readiness, on_close: Callable[[], None] = lambda: None
    ) -> None:
        self._render = render
        self._readiness = readiness
        self._on_close = on_close
        self._server: asyncio.Server | None = None
        self._clients = 0
        self.addresses: list[tuple[str, int]] = []

    async def bind_tcp(self, host: str, port: int) -> None:
        """Bind and listen now (a taken port fails the start); answer from ``start()``."""
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=REQUEST_LIMIT, start_serving=False
        )
        self.addresses = [_address(sock.getsockname()) for sock in self._server.sockets]

    async def bind_unix(self, path: str) -> None:
        if sys.platform == "win32":
            raise NotImplementedError("workers, and so their sockets, are POSIX only")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the socket of the worker this one replaces
        self._server = await asyncio.start_unix_server(
            self._serve, path, limit=REQUEST_LIMIT, start_serving=False
        )

    async def start(self) -> None:
        if self._server is not None:
            await self._server.start_serving()

    def close(self) -> None:
        """Stop listening; a scrape in progress finishes on its own."""
        if self._server is not None:
            self._server.close()
            self._server = None
            self._on_close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients <= MAX_CLIENTS:
                await self._answer(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client left, or sent no request in time: nobody to tell
        finally:
            self._clients -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        status, kind, body = await self.respond(head.split(b"\r\n", 1)[0])
        method = head.split(b" ", 1)[0]
        writer.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status.encode(), kind.encode(), len(body))
        )
        if method != b"HEAD":
            writer.write(body)
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await writer.drain()

    async def respond(self, request_line: bytes) -> tuple[str, str, bytes]:
        """Status, content type and body for one request line (``GET /metrics HTTP/1.1``)."""
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n"
        if target == b"/metrics":
            try:
                return "200 OK", CONTENT_TYPE, await self._render()
            except Exception:  # a collector's bug (the user's too) must not stop the service
                logger.exception("metrics: the scrape failed")
                return "500 Internal Server Error", "text/plain", b"the scrape failed\n"
        if target == b"/livez":
            return "200 OK", "text/plain", b"alive\n"
        if target == b"/readyz":
            reason = await self._readiness()
            if reason is None:
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", f"not ready: {reason}\n".encode()
        return "404 Not Found", "text/plain", b"/metrics, /livez or /readyz\n"


# --- One service process --------------------------------------------------------------------


async def open_for(service: Service) -> Endpoint | None:
    """The endpoint this process should serve, bound but not answering; None if metrics are off.

    A worker of the supervisor serves on the Unix socket named in its environment; a single
    process on ``APP_HOST:APP_METRICS_PORT``. Raises OSError if it cannot bind.
    """
    path = os.environ.get(SOCKET_VARIABLE)
    port = service.settings.metrics_port
    if not path and not port:
        return None
    collector = ServiceCollector(service)
    service.server.handling = Histogram(SECONDS)
    endpoint = Endpoint(collector.render, collector.readiness, collector.forget)
    if path:
        await endpoint.bind_unix(path)
    else:
        await endpoint.bind_tcp(service.settings.host, port)
    REGISTRY.register(collector)
    return endpoint


class ServiceCollector:
    """Reads the service's counters at scrape time and yields them as Prometheus families."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def render(self) -> bytes:
        return generate_latest(REGISTRY)

    def forget(self) -> None:
        """Leave the default registry (tests run several services in one process)."""
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self)

    async def readiness(self) -> str | None:
        """Why new connections should go elsewhere, or None: the meaning of ``health``."""
        server = self.service.server
        if server.phase is DRAINING:
            return "draining"
        if server.serving >= server.max_connections:
            return "at its connection limit"
        return None

    def describe(self) -> Iterable[Metric]:
        return ()  # not known before the first collect: the registry must not call collect()

    def collect(self) -> Iterator[Metric]:
        service, server, journal = self.service, self.service.server, self.service.journal
        yield _gauge("connections_open", "Connections being served.", server.serving)
        yield _counter("connections_accepted", "Connections accepted and served.", server.accepted)
        refused = CounterMetricFamily(
            PREFIX + "connections_refused",
            "Connections refused at accept: full (at APP_MAX_CONNECTIONS) or draining.",
            labels=["reason"],
        )
        closed = CounterMetricFamily(
            PREFIX + "connections_closed",
            "Served connections closed, by why: client, idle, line_timeout, too_long,"
            " unread_pushes, drain, journal (a batch not journaled), reset (lost before it"
            " could end).",
            labels=["reason"],
        )
        for reason in END_REASONS:
            family = refused if reason in REFUSED else closed
            family.add_metric([reason], server.ended[reason])
        yield refused
        yield closed
        failed = Replies.failed + Replies.invalid
        requests = CounterMetricFamily(
            PREFIX + "requests",
            "Requests handled, by outcome: ok, exception (handle raised) or invalid (handle"
            " returned something other than one line); both failures got 'error: internal"
            " error'.",
            labels=["outcome"],
        )
        requests.add_metric(["ok"], max(server.requests - failed, 0))
        requests.add_metric(["exception"], Replies.failed)
        requests.add_metric(["invalid"], Replies.invalid)
        yield requests
        yield _counter(
            "pings", "Empty lines (health pings), answered and not journaled.", server.pings
        )
        if server.handling is not None:
            yield _histogram(
                "batch_seconds",
                "Seconds from reading a batch of requests (the complete lines of one read) to"
                " writing its replies, the journal's wait included.",
                server.handling,
            )
        yield _counter("journal_bytes", "Bytes appended to the journal.", journal.bytes_written)
        yield _counter("journal_lines", "Requests appended to the journal.", journal.lines_written)
        yield _histogram(
            "journal_batch_lines", "Requests per journal write (group commit).", journal.batch_lines
        )
        yield _histogram(
            "journal_write_seconds", "Seconds per journal write().", journal.write_seconds
        )
        yield _histogram(
            "journal_fsync_seconds", "Seconds per journal fsync().", journal.fsync_seconds
        )
        policy = GaugeMetricFamily(
            PREFIX + "journal_fsync_policy",
            "APP_JOURNAL_FSYNC: 1 for the policy in force.",
            labels=["policy"],
        )
        policy.add_metric([str(journal.fsync_policy)], 1)
        yield policy
        yield _gauge(
            "journal_failed", "1 once a journal write failed (the service stops).", journal.failed
        )
        with contextlib.suppress(OSError):
            size = os.stat(journal.path).st_size
            yield _gauge("journal_size_bytes", "Size of the journal file.", size)
        yield from self._shutdown(service)

    def _shutdown(self, service: Service) -> Iterator[Metric]:
        began = service.drain_began
        yield _gauge("draining", "1 from SIGTERM until the process exits.", began is not None)
        if began is None:
            return
        seconds = service.drain_seconds
        if seconds is None:
            seconds = time.monotonic() - began
        yield _gauge(
            "drain_seconds", "Seconds the drain has taken (so far, while it runs).", seconds
        )
        yield _gauge("drain_connections", "Connections open when the drain began.", service.drained)
        yield _gauge(
            "drain_aborted_connections",
            "Connections aborted because the drain's time ran out.",
            service.drain_aborted,
        )
        if service.flush_seconds is not None:
            yield _gauge(
                "journal_flush_seconds",
                "Seconds the journal's last write and fsync took at shutdown.",
                service.flush_seconds,
            )


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(PREFIX + name, documentation, value=float(value))


def _histogram(name: str, documentation: str, histogram: Histogram) -> Metric:
    return HistogramMetricFamily(
        PREFIX + name,
        documentation,
        buckets=histogram.cumulative(),
        sum_value=histogram.total,
    )


def _address(sockname: tuple[object, ...] | str) -> tuple[str, int]:
    return (str(sockname[0]), int(str(sockname[1])))


# --- The supervisor's aggregate -------------------------------------------------------------

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Slot:
    """What the supervisor remembers of one worker slot between scrapes."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.last: dict[SampleKey, float] = {}
        """Monotonic samples (counters, histograms) of the current process, at its last scrape."""
        self.carried: dict[SampleKey, float] = {}
        """What the slot's earlier processes had counted: added to every monotonic sample."""
        self.families: dict[str, tuple[str, str]] = {}
        """Family name -> (type, help), as last seen."""
        self.owner: dict[SampleKey, str] = {}
        """Sample -> the family it belongs to."""


class Aggregate:
    """The supervisor's ``/metrics`` and ``/readyz`` over its workers' Unix sockets."""

    def __init__(self, folder: str, count: int) -> None:
        self.folder = folder
        self.slots = {index: _Slot() for index in range(1, count + 1)}
        self.stopping = False
        self.running: Callable[[], Sequence[tuple[int, int | None, int]]] = lambda: ()
        """Set by the supervisor: ``(index, pid or None, restarts)`` of each slot."""

    def socket(self, index: int) -> str:
        return os.path.join(self.folder, f"worker-{index}.sock")

    async def render(self) -> bytes:
        running = list(self.running())
        texts = await asyncio.gather(
            *(self._fetch(index, b"/metrics") if pid else _nothing() for index, pid, _ in running)
        )
        merged: dict[str, Metric] = {}
        restarts = CounterMetricFamily(
            PREFIX + "worker_restarts",
            "Workers replaced after they exited or missed their heartbeat.",
            labels=["worker"],
        )
        up = GaugeMetricFamily(
            PREFIX + "worker_up", "1 if the worker answered this scrape.", labels=["worker"]
        )
        for (index, pid, restarted), answer in zip(running, texts, strict=True):
            text = answer[1].decode("utf-8", "replace") if answer and answer[0] == 200 else None
            self._merge(index, pid, text, merged)
            restarts.add_metric([str(index)], restarted)
            up.add_metric([str(index)], float(text is not None))
        return generate_latest(_Families([*merged.values(), restarts, up]))

    def _merge(
        self, index: int, pid: int | None, text: str | None, into: dict[str, Metric]
    ) -> None:
        slot = self.slots[index]
        if pid is not None and pid != slot.pid:
            if slot.pid is not None:  # a new process in this slot: keep what the old one counted
                for key, value in slot.last.items():
                    slot.carried[key] = slot.carried.get(key, 0.0) + value
                slot.last = {}
            slot.pid = pid
        gauges: dict[SampleKey, float] = {}
        if text is not None:
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError:
                logger.warning("worker %d sent metrics that do not parse; skipped", index)
                families = []
            for family in families:
                slot.families[family.name] = (family.type, family.documentation)
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue  # a timestamp, which neither adds up nor carries over
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    slot.owner[key] = family.name
                    if _monotonic(family.type, sample.name, family.name):
                        slot.last[key] = sample.value
                    else:
                        gauges[key] = sample.value
        label = str(index)
        values = dict(gauges)
        for key in slot.last.keys() | slot.carried.keys():
            values[key] = slot.last.get(key, 0.0) + slot.carried.get(key, 0.0)
        for (name, labels), value in sorted(values.items()):
            family_name = slot.owner[(name, labels)]
            kind, documentation = slot.families[family_name]
            metric = into.get(family_name)
            if metric is None:
                metric = into[family_name] = Metric(family_name, documentation, kind)
            metric.add_sample(name, {**dict(labels), "worker": label}, value)

    async def readiness(self) -> str | None:
        if self.stopping:
            return "stopping"
        running = [(index, pid) for index, pid, _ in self.running() if pid]
        if not running:
            return "no worker is running"
        answers = await asyncio.gather(*(self._fetch(index, b"/readyz") for index, _ in running))
        for (index, _), answer in zip(running, answers, strict=True):
            if answer is None:
                return f"worker {index} does not answer"
            if answer[0] != 200:
                return f"worker {index} {answer[1].decode('utf-8', 'replace').strip()}"
        return None

    async def _fetch(self, index: int, target: bytes) -> tuple[int, bytes] | None:
        """GET ``target`` from worker ``index``: (status, body), or None if it did not answer."""
        if sys.platform == "win32":
            raise NotImplementedError("workers, and so their sockets, are POSIX only")
        writer = None
        try:
            async with asyncio.timeout(WORKER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(self.socket(index))
                writer.write(b"GET %s HTTP/1.0\r\n\r\n" % target)
                answer = await reader.read()
        except (OSError, TimeoutError):
            return None
        finally:
            if writer is not None:
                writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        try:
            return int(head.split(b" ", 2)[1]), body
        except (IndexError, ValueError):
            return None


class _Families:
    """A collector made of ready families, for ``generate_latest``."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def _nothing() -> None:
    return None


def _monotonic(kind: str, sample: str, family: str) -> bool:
    """Whether a sample only ever grows within one process: it is carried over restarts."""
    if kind in ("counter", "histogram"):
        return True
    return kind == "summary" and sample in (family + "_sum", family + "_count")
