"""Multi-worker mode: with ``APP_WORKERS=N`` (N > 1), N copies of the service share one port.

One asyncio process is bound to one core; a machine with more cores serves more with more
processes. Rather than a pre-fork server, this supervisor starts N ordinary ``python -m app``
processes ("workers") and lets the kernel spread connections over them: each worker binds the
same port with ``SO_REUSEPORT``, so every worker has its own accept queue and a worker that
dies takes nobody else's connections with it. With ``APP_WORKERS=1`` (the default) there is
no supervisor process at all.

What the supervisor does, and why:

- **One port for all.** It resolves ``APP_HOST``/``APP_PORT`` itself and binds that address
  with ``SO_REUSEPORT``, without listening, before any worker starts. With ``APP_PORT=0``
  this picks the one concrete port every worker then binds; for any port it fails fast (exit
  69 or 77) if the port is taken, and it keeps the port reserved while workers restart. A
  bound socket that does not listen receives no connections.
- **Workers are told who they are** through their environment: ``APP_WORKER_INDEX=i`` (1..N,
  which makes the service bind with ``SO_REUSEPORT``), ``APP_WORKERS=1`` (a worker never
  supervises), the concrete ``APP_PORT`` and the worker's own ``APP_JOURNAL_PATH``.
- **Journals: one file per worker.** ``APP_JOURNAL_PATH=data/journal.log`` becomes
  ``data/journal.worker-1.log`` ... ``data/journal.worker-N.log``; a restarted worker appends
  to the file of the worker it replaces. Files of workers that no longer exist (after a
  change of ``APP_WORKERS``, or the single process's ``journal.log``) are merged into the
  files of the workers that do before any starts (``journal.adopt_orphans``), and the log
  names each merge. The service's journal is the union of those files:
  lines keep their order within a file; across files there is no order, as there is none
  between connections. Separate files, rather than one shared file, because appends from
  several processes interleave safely only for small single ``write()`` calls on local disks,
  and a batch is neither.
- **One log.** Each worker's stderr is relayed line by line, prefixed with ``[worker i]``.
  A worker tells the supervisor it is ready through its heartbeat pipe (below), not its log,
  and logs no ``listening on`` line of its own: the supervisor logs ``worker i ready (pid
  P)``, and the only ``listening on HOST:PORT`` line is its own, logged once every worker is
  ready: tests and people wait for one line, as with one process. Under systemd
  (``NOTIFY_SOCKET``) the supervisor, not the workers, reports READY=1 and STOPPING=1.
- **Signals.** SIGTERM and SIGINT are forwarded to every worker (SIGHUP, what a closed
  terminal sends, is a graceful stop too and reaches them as SIGTERM, unless ``nohup``
  ignored it, or the protocol installed a SIGHUP handler at import, a reload: then SIGHUP
  is passed on to the workers as SIGHUP and stops nothing); each drains and flushes its
  journal within ``APP_SHUTDOWN_TIMEOUT``. The supervisor waits that long plus
  ``STOP_MARGIN`` seconds, then kills what is left. A second signal is forwarded too, which
  makes the workers force-exit (status 128 + signal). Workers run in their own process
  group, so a Ctrl-C in a terminal reaches them once, through the supervisor, not twice.
  (Under systemd, use ``KillMode=mixed`` for the same reason.)
- **One supervisor per port and folder.** Before it starts anyone, it checks that nothing
  listens on the port (``SO_REUSEPORT`` would otherwise let a second supervisor share it),
  on Linux claims the port for itself until it ends (its workers may not listen yet), and
  takes an exclusive lock on ``<journal>.lock``, so that two supervisors never write the same
  journals; either conflict is exit 69.
- **Heartbeats.** Each worker writes a byte to a pipe from its event loop every quarter of
  ``APP_HEARTBEAT_TIMEOUT``, and once another byte when it accepts connections: that is its
  readiness. A ready worker that misses its heartbeat for that long (stopped with SIGSTOP,
  or a wedged loop) still holds its accept queue, so it is killed and replaced like a
  crashed one. The same pipe tells a worker that the supervisor is gone (a write fails
  with EPIPE), and on Linux ``PR_SET_PDEATHSIG`` tells it at once: it then drains and exits
  as on SIGTERM rather than serve on as an orphan nobody will stop.
- **Restarts.** A worker that exits while nobody asked it to (a crash, an OOM kill, a stray
  ``kill``) is restarted after a delay that doubles with each consecutive failure, from
  ``BACKOFF_FIRST`` to ``BACKOFF_MAX`` seconds; a worker that ran ``STABLE_AFTER`` seconds
  starts the count over. A worker that exits before the service was ever ready stops the
  whole service instead: a bad port or an unwritable journal will not fix itself.

Exit status of the supervisor: 0 when every worker of the last generation exited 0; otherwise
the first non-zero status among them in the order they exited, with 128 + N for a worker
killed by signal N, and 75 for a worker that outlived the shutdown budget and was killed. A
worker that was stopped by the forwarded signal before it had started serving counts as
clean if the service had been announced, and as 3 (its start interrupted, as one process
says it) if not. Crashes that were recovered by a restart are logged, not reflected in the
status: a later clean stop is still a clean stop. If startup fails, the failing worker's
status is the exit status (e.g. 73 for an unwritable journal).

Where the OS has no ``SO_REUSEPORT`` (Windows), ``APP_WORKERS`` above 1 is refused as a
configuration error (exit 2). On Linux the kernel balances new connections across the
workers; macOS and the BSDs share the port too, but may hand most connections to one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servicekit import notify
from servicekit.config import Settings
from servicekit.exitcodes import ExitCode, StartupError, bind_exit_code, describe, exit_status
from servicekit.journal import (
    JournalInUse,
    adopt_orphans,
    check_folder,
    open_private,
    worker_journal,
)
from servicekit.logs import iso_time, json_record

if TYPE_CHECKING:
    from servicekit.metrics import Aggregate, Endpoint

logger = logging.getLogger(__name__)

WORKER_INDEX_VARIABLE = "APP_WORKER_INDEX"
"""Set to 1..N in each worker's environment; absent (or 0) in a process started by a user."""
STOP_MARGIN = 2.0
"""Seconds the supervisor waits beyond APP_SHUTDOWN_TIMEOUT for workers to end: process exit
and interpreter teardown come after the service's own budget."""
FORWARD_GAP = 0.15
"""Least seconds between two signals forwarded to the workers. The runtime takes the same
signal again within 100 ms for the same request; a supervisor that heard the first one late
(a loaded machine) must not forward a real second one inside that window, or it is lost."""
KILL_WAIT = 5.0
"""Seconds to wait for killed workers to be reaped; SIGKILL cannot be ignored, so this only
guards against a wedged kernel or a lost child."""
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
"""A worker that ran this many seconds before it exited is restarted after BACKOFF_FIRST again."""
HEARTBEAT_FD_VARIABLE = "SUPERVISOR_HEARTBEAT_FD"
"""The file descriptor a worker writes its heartbeats to (not an APP_ setting: set by us)."""
RELAY_TAIL = 0.5
"""Seconds the log relay may go on after a worker exited: its last lines are already in the
pipe; only a child of the worker that holds the pipe open makes the relay wait this long."""
_LINE_LIMIT = 1 << 20
"""Longest worker log line relayed whole; a longer one is dropped rather than buffered."""


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker after ``failures`` (>= 1) consecutive failures."""
    return min(BACKOFF_FIRST * 2.0 ** (failures - 1), BACKOFF_MAX)


def main(settings: Settings, on_signals_taken: Callable[[], None] | None = None) -> int:
    """Run ``settings.workers`` workers until stopped; return the exit status (see above).

    Called by ``python -m app`` when APP_WORKERS > 1, after logging is configured.
    ``on_signals_taken`` is called once the supervisor's signal handlers are in place: until
    then ``python -m app``'s own hear the stop signals, and it gives a signal heard meanwhile
    to the supervisor then.
    """
    workers = settings.workers
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is None:
        print(
            f"error: APP_WORKERS={workers}: several workers share a port through SO_REUSEPORT,"
            " which this platform does not have; use APP_WORKERS=1 and run one service per port",
            file=sys.stderr,
        )
        return ExitCode.CONFIG
    try:
        claim = _claim_port(settings.port)
    except StartupError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    try:
        reserved = _reserve(settings.host, settings.port, reuse_port)
    except StartupError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        if claim is not None:
            claim.close()
        return exc.exit_code
    try:
        lock = _lock_journals(settings.journal_path)
    except StartupError as exc:
        for sock in reserved.sockets:
            sock.close()
        if claim is not None:
            claim.close()
        logger.error("%s", exc)
        return exc.exit_code
    try:
        try:
            adopt_orphans(settings.journal_path, workers, settings.max_line_bytes)
        except JournalInUse as exc:
            logger.error("cannot start: %s", exc)
            return ExitCode.ADDRESS_IN_USE
        except OSError as exc:
            logger.error("cannot write journal: %s", exc)
            return ExitCode.JOURNAL_UNWRITABLE
        return asyncio.run(_Supervisor(settings, workers, reserved).run(on_signals_taken))
    finally:
        for sock in reserved.sockets:
            sock.close()
        if lock is not None:
            os.close(lock)
        if claim is not None:
            claim.close()


def port_claim_name(port: int) -> str:
    """The abstract socket name a supervisor of this user holds for ``port`` (Linux)."""
    if sys.platform == "win32":
        raise NotImplementedError("no abstract sockets on Windows")
    return f"\0servicekit-supervisor-port-{port}-uid-{os.geteuid()}"


def _claim_port(port: int) -> socket.socket | None:
    """Linux: hold a name for ``port`` that only one supervisor can hold at a time.

    Until its workers listen, a supervisor's reserved port looks free (its sockets do not
    listen), so a second supervisor started in that window would pass the listen check and
    share the port through SO_REUSEPORT. The name lives in Linux's abstract socket namespace,
    which belongs to the network namespace like the port itself, and the kernel releases it
    when the process ends, however it ends. Elsewhere, and for port 0 (every supervisor gets
    its own port), there is nothing to claim.

    Anyone may bind any abstract name, so a name that is taken is only believed when the
    socket holding it listens and its owner (``SO_PEERCRED``) is this same user: a name held
    by another user is a squatter, said in the log and ignored (the listen check and the
    journal lock still stand), never a reason to refuse a free port.
    """
    if port == 0 or sys.platform == "win32" or not sys.platform.startswith("linux"):
        return None
    name = port_claim_name(port)
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(name)
        claim.listen(1)
    except OSError:
        claim.close()
    else:
        return claim
    owner = _claim_owner(name)
    if owner is not None and owner[1] == os.geteuid():
        raise StartupError(
            ExitCode.ADDRESS_IN_USE, f"port {port} is taken by another supervisor (pid {owner[0]})"
        )
    held_by = f"uid {owner[1]}, pid {owner[0]}" if owner else "a socket that does not answer"
    logger.warning(
        "the claim on port %d is held by %s, not by a supervisor of this user: ignored",
        port,
        held_by,
    )
    return None


def _claim_owner(name: str) -> tuple[int, int] | None:
    """(pid, uid) of the process listening on the abstract socket ``name``, if one does."""
    if sys.platform != "linux":
        return None
    import struct

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(name)
            raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


@dataclass
class _Reserved:
    sockets: list[socket.socket]
    host: str
    port: int


def _reserve(host: str, port: int, reuse_port: int) -> _Reserved:
    """Bind (without listening) every address the workers will listen on, on one port.

    The addresses are the ones asyncio's ``start_server`` resolves for the same host; an
    IPv6 socket is made IPv6-only, as asyncio makes it. With port 0 the first bind picks the
    port and the others must get the same one; if one of them cannot, another is tried.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(ExitCode.CONFIG, str(exc.strerror or exc)) from None
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    if port != 0:
        _check_nobody_listens(addresses, port)
    for _attempt in range(20 if port == 0 else 1):
        chosen = port
        sockets: list[socket.socket] = []
        try:
            for family, address in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], chosen, *address[2:]))
                chosen = int(sock.getsockname()[1])
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if exc.errno == errno.EADDRINUSE and port == 0:
                continue  # the port picked for the first address is taken on another one
            raise StartupError(bind_exit_code(exc), os.strerror(exc.errno or 0)) from None
        shown = str(sockets[0].getsockname()[0])
        return _Reserved(sockets, shown, chosen)
    raise StartupError(ExitCode.ADDRESS_IN_USE, "no port is free on every address")


def _check_nobody_listens(addresses: Sequence[tuple[int, Any]], port: int) -> None:
    """Refuse a port on which another process (another supervisor's worker) listens.

    A socket without SO_REUSEPORT cannot bind next to a listening one, even one that has it;
    the reserved sockets do not listen, so this finds only real servers.
    """
    for family, address in addresses:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address[0], port, *address[2:]))
            except OSError as exc:
                raise StartupError(bind_exit_code(exc), os.strerror(exc.errno or 0)) from None


def _lock_journals(journal: Path) -> int | None:
    """Lock ``<journal>.lock`` for this supervisor; raise StartupError if another holds it.

    Returns the locked file's descriptor, which the kernel unlocks when this process ends,
    however it ends. If the folder cannot be made, returns None: the first worker reports
    the journal problem with its own exit status. A lock file or folder that another user
    controls (a symbolic link, someone else's file, see ``journal.open_private``) is refused
    with exit status 73, never followed or written.
    """
    if sys.platform == "win32":
        return None  # no workers there (no SO_REUSEPORT); main() refused earlier
    import fcntl

    path = journal.with_name(journal.name + ".lock")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    try:
        check_folder(path.parent)
        fd = open_private(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise StartupError(ExitCode.JOURNAL_UNWRITABLE, f"cannot write journal: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            ExitCode.ADDRESS_IN_USE,
            f"the journals of {journal} are in use by another supervisor (pid {owner})",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def beat_to_supervisor(
    loop: asyncio.AbstractEventLoop, interval: float
) -> Callable[[], None] | None:
    """In a worker: send heartbeats from ``loop``, and stop when the supervisor is gone.

    Called by ``python -m app`` in a worker before the loop runs. Returns the function that
    tells the supervisor the worker is ready, or None when there is no supervisor to tell
    (started by hand with APP_WORKER_INDEX). The beat is a loop callback, so it stops when
    the loop is stopped or blocked, which is what the supervisor wants to know. Losing the
    supervisor raises SIGTERM in this process: the runtime's graceful shutdown, exactly as
    if the supervisor had forwarded a stop.
    """
    raw = os.environ.pop(HEARTBEAT_FD_VARIABLE, None)
    if raw is None or sys.platform == "win32":
        return None
    channel = _Channel(int(raw))
    _terminate_with_parent()

    def beat() -> None:
        if channel.send(READY if channel.ready_unsaid else BEAT):
            loop.call_later(interval, beat)

    def ready() -> None:
        channel.ready_unsaid = True
        channel.send(READY)

    loop.call_soon(beat)
    return ready


BEAT = b"."
"""What a worker writes to its channel each heartbeat."""
READY = b"R"
"""What a worker writes once, when it accepts connections: its readiness, which the
supervisor once read from the worker's ``listening on`` log line. A log line is for people:
it is missing at APP_LOG_LEVEL=WARNING, and recover() may print one that looks like it."""


class _Channel:
    """A worker's end of the pipe to its supervisor: heartbeats, and readiness once.

    Invariant: ``ready_unsaid`` is True from the moment the worker is ready until a READY
    byte has been written; a pipe the supervisor has not emptied yet delays it to a later
    beat, never loses it.
    """

    current: _Channel | None = None
    """This worker's channel, for the fork hook below."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self.ready_unsaid = False
        _Channel.current = self
        if sys.platform != "win32":  # no workers there; main() refused them
            os.set_blocking(fd, False)

    def send(self, byte: bytes) -> bool:
        """Write one byte; False once the supervisor is gone (then SIGTERM is raised)."""
        if self._fd is None:
            return False
        try:
            os.write(self._fd, byte)
        except BlockingIOError:
            return True  # not read yet: the supervisor knows we are alive; READY waits
        except OSError:  # EPIPE: nobody holds the other end any more
            os.close(self._fd)
            self._fd = None
            logger.warning("the supervisor is gone: stopping")
            signal.raise_signal(signal.SIGTERM)
            return False
        if byte == READY:
            self.ready_unsaid = False
        return True

    @staticmethod
    def _after_fork_in_child() -> None:
        """In a child the worker forked: close our end of the pipe, whose writers the
        supervisor counts to see the worker gone."""
        channel, _Channel.current = _Channel.current, None
        if channel is not None and channel._fd is not None:
            os.close(channel._fd)
            channel._fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Channel._after_fork_in_child)


def _terminate_with_parent() -> None:
    """Linux: have the kernel send us SIGTERM when the supervisor dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return  # the heartbeat's EPIPE notices it within one beat instead
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class _WorkerProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's protocol for a worker, plus ``exited``: done when the process has exited.

    ``Process.wait()`` also waits for the process's pipes to close, which a child it forked
    may never do.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


@dataclass(eq=False)
class _Worker:
    index: int
    journal: Path
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    started_at: float = 0.0
    failures: int = 0
    killed: bool = False
    """Killed by the supervisor because it outlived the shutdown budget."""
    last_beat: float = 0.0
    """When its last heartbeat (or its readiness) was seen, on the monotonic clock."""
    restarts: int = 0


class _Supervisor:
    def __init__(self, settings: Settings, count: int, reserved: _Reserved) -> None:
        self._settings = settings
        self._reserved = reserved
        self._workers = [
            _Worker(i, worker_journal(settings.journal_path, i)) for i in range(1, count + 1)
        ]
        self._stopping = asyncio.Event()
        self._signals: list[int] = []
        self._first_forward = 0.0
        """Loop time at which the first stop signal went to the workers."""
        self._announced = False
        self._statuses: list[int] = []
        """Final status of each worker of the last generation, in the order they exited."""
        self._metrics: Aggregate | None = None
        """With APP_METRICS_PORT: serves the workers' metrics, each from its Unix socket."""

    async def _serve_metrics(self) -> Endpoint:
        """Serve the workers' aggregate on APP_METRICS_PORT; OSError if it is taken."""
        import tempfile

        from servicekit import metrics

        folder = tempfile.mkdtemp(prefix="servicekit-metrics-")  # 0700: ours alone
        self._metrics = aggregate = metrics.Aggregate(folder, len(self._workers))
        aggregate.running = lambda: [
            (
                worker.index,
                worker.process.pid
                if worker.process is not None and worker.process.returncode is None
                else None,
                worker.restarts,
            )
            for worker in self._workers
        ]
        endpoint = metrics.Endpoint(aggregate.render, aggregate.readiness)
        try:
            await endpoint.bind_tcp(self._settings.host, self._settings.metrics_port)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        await endpoint.start()
        for address in endpoint.addresses:
            logger.info("metrics and probes on http://%s:%d/metrics", *address)
        return endpoint

    async def run(self, on_signals_taken: Callable[[], None] | None = None) -> int:
        loop = asyncio.get_running_loop()
        if sys.platform == "win32":
            raise NotImplementedError("main() refuses workers where there is no SO_REUSEPORT")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._forward, signum)
        # SIGHUP by the runtime's rule: a stop while its handler is the default; ignored
        # under nohup; a handler the protocol installed at import (a reload) makes it the
        # workers' own signal, passed on as it is.
        hangup = signal.getsignal(signal.SIGHUP)
        if hangup == signal.SIG_DFL:
            loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        elif hangup != signal.SIG_IGN:
            loop.add_signal_handler(signal.SIGHUP, self._pass_on, signal.SIGHUP)
        if on_signals_taken is not None:
            on_signals_taken()
        endpoint = None
        if self._settings.metrics_port:
            try:
                endpoint = await self._serve_metrics()
            except OSError as exc:
                where = f"{self._settings.host}:{self._settings.metrics_port}"
                logger.error("cannot listen on %s for metrics: %s", where, exc.strerror or exc)
                return bind_exit_code(exc)
        notify.start_watchdog()  # systemd watches the supervisor; it watches the workers
        tasks = [asyncio.create_task(self._keep_running(worker)) for worker in self._workers]
        heartbeat_watch = asyncio.create_task(self._watch_heartbeats())
        await self._stopping.wait()
        heartbeat_watch.cancel()
        began = time.monotonic()
        budget = self._settings.shutdown_timeout + STOP_MARGIN
        _, late = await asyncio.wait(tasks, timeout=budget)
        if late:
            for worker in self._workers:
                if worker.process is not None and worker.process.returncode is None:
                    logger.warning(
                        "worker %d (pid %d) still running after %.1fs: killing it",
                        worker.index,
                        worker.process.pid,
                        budget,
                    )
                    worker.killed = True
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            await asyncio.wait(late, timeout=KILL_WAIT)
        if endpoint is not None and self._metrics is not None:
            endpoint.close()
            shutil.rmtree(self._metrics.folder, ignore_errors=True)
        status = next((code for code in self._statuses if code != ExitCode.OK), ExitCode.OK)
        if status == ExitCode.OK and not self._announced:
            status = ExitCode.STARTUP_INTERRUPTED  # stopped before any worker could say so
        logger.info(
            "%d worker(s) stopped in %.3fs: exit status %d",
            len(self._workers),
            time.monotonic() - began,
            status,
        )
        return status

    def _forward(self, signum: int) -> None:
        """Signal handler: pass the signal on to every worker; the first one starts the stop."""
        name = signal.Signals(signum).name
        if self._signals:
            logger.warning("%s received again: workers will exit at once", name)
        # SIGHUP means the terminal went away, not "lose the connections": workers get the
        # signal whose meaning is a graceful stop.
        hangup = sys.platform != "win32" and signum == signal.SIGHUP
        self._stop(signal.SIGTERM if hangup else signum, f"{name} received")

    def _pass_on(self, signum: int) -> None:
        """Signal handler: a signal the workers handle themselves (SIGHUP for a reload)."""
        logger.info("%s received: passed on to the workers", signal.Signals(signum).name)
        self._send_to_workers(signum)

    async def _watch_heartbeats(self) -> None:
        """Kill a ready worker whose event loop has not beaten for APP_HEARTBEAT_TIMEOUT."""
        timeout = self._settings.heartbeat_timeout
        while True:
            await asyncio.sleep(timeout / 4)
            now = time.monotonic()
            for worker in self._workers:
                process = worker.process
                if not worker.ready or process is None or process.returncode is not None:
                    continue
                if now - worker.last_beat > timeout:
                    logger.error(
                        "worker %d (pid %d) missed its heartbeat for %.1f s: killing it",
                        worker.index,
                        process.pid,
                        now - worker.last_beat,
                    )
                    worker.ready = False  # once: it is dead to us until it is replaced
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()

    def _stop(self, signum: int, why: str) -> None:
        loop = asyncio.get_running_loop()
        if not self._signals:
            logger.info("stopping %d worker(s): %s", len(self._workers), why)
            notify.send("STOPPING=1")
            self._first_forward = loop.time()
        self._signals.append(signum)
        self._stopping.set()
        if self._metrics is not None:
            self._metrics.stopping = True
        early = self._first_forward + FORWARD_GAP - loop.time()
        if len(self._signals) > 1 and early > 0:
            loop.call_later(early, self._send_to_workers, signum)
        else:
            self._send_to_workers(signum)

    def _send_to_workers(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    async def _keep_running(self, worker: _Worker) -> None:
        """Run one worker slot: start, relay its log, restart it until the stop."""
        while not self._stopping.is_set():
            returncode = await self._run_once(worker)
            if self._stopping.is_set():
                self._statuses.append(self._final_status(worker, returncode))
                return
            if not self._announced:
                logger.error(
                    "worker %d exited with %s before the service was ready: stopping",
                    worker.index,
                    describe(returncode),
                )
                self._statuses.append(exit_status(returncode) or ExitCode.ERROR)
                self._stop(signal.SIGTERM, f"worker {worker.index} failed to start")
                return
            ran = time.monotonic() - worker.started_at
            worker.failures = 1 if ran >= STABLE_AFTER else worker.failures + 1
            delay = restart_delay(worker.failures)
            worker.restarts += 1
            logger.warning(
                "worker %d exited with %s, restarting in %.1f s",
                worker.index,
                describe(returncode),
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        # Stopped while waiting to restart: this slot has no process, so nothing to report.

    async def _run_once(self, worker: _Worker) -> int:
        """Start the worker, relay its stderr, return its exit status once it has exited.

        The worker's exit is the process's own (``_WorkerProtocol.exited``), not the end of
        its pipes: a child the worker forked (a process pool) may hold its stderr and its
        heartbeat pipe for as long as it lives, and a dead worker must still be replaced.
        """
        worker.ready = False
        worker.killed = False
        worker.started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        beats, beat_end = os.pipe()
        env = self._worker_environment(worker)
        env[HEARTBEAT_FD_VARIABLE] = str(beat_end)
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _WorkerProtocol(_LINE_LIMIT, loop),
                sys.executable,
                "-m",
                _entry_module(),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=None,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group: a terminal's Ctrl-C reaches it only through us.
                process_group=0,
                pass_fds=(beat_end,),
            )
        except OSError as exc:
            os.close(beats)
            logger.error("cannot start worker %d: %s", worker.index, exc)
            return ExitCode.ERROR
        finally:
            os.close(beat_end)  # the worker's copy is the only writer: its death closes it
        process = asyncio.subprocess.Process(transport, protocol, loop)
        stop_hearing = self._hear_beats(worker, beats)
        worker.process = process
        logger.info("worker %d started (pid %d)", worker.index, process.pid)
        for signum in self._signals:  # a stop began while it was being started
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        assert process.stderr is not None
        relay = asyncio.create_task(self._relay(worker, process.stderr))
        try:
            await protocol.exited
            # Its last lines are in the pipe already; only a child of its keeps it open.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(relay), RELAY_TAIL)
        finally:
            relay.cancel()
            stop_hearing()
            transport.close()  # our ends of its pipes, whoever else holds theirs
        returncode = transport.get_returncode()
        assert returncode is not None  # set before protocol.exited
        if self._stopping.is_set():
            logger.info("worker %d exited with %s", worker.index, describe(returncode))
        return returncode

    def _hear_beats(self, worker: _Worker, fd: int) -> Callable[[], None]:
        """Note each heartbeat on ``fd``, and the worker's readiness; return what stops
        listening (called when the worker has exited; it also stops at the pipe's end)."""
        if sys.platform == "win32":
            raise NotImplementedError("main() refuses workers where there is no SO_REUSEPORT")
        loop = asyncio.get_running_loop()
        open_fd = [fd]  # [fd] while we listen, [] once closed (by the first of the two)

        def stop() -> None:
            if open_fd:
                loop.remove_reader(fd)
                os.close(open_fd.pop())

        def read() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                worker.last_beat = time.monotonic()
                if READY in data and not worker.ready:
                    self._mark_ready(worker)
                return
            stop()

        os.set_blocking(fd, False)
        loop.add_reader(fd, read)
        return stop

    def _worker_environment(self, worker: _Worker) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "APP_WORKERS": "1",
                WORKER_INDEX_VARIABLE: str(worker.index),
                "APP_PORT": str(self._reserved.port),
                "APP_JOURNAL_PATH": str(worker.journal),
            }
        )
        env.pop("NOTIFY_SOCKET", None)  # readiness is announced once, by the supervisor
        env.pop("SUPERVISOR_METRICS_SOCKET", None)
        if self._metrics is not None:  # the supervisor has the port; workers a private socket
            env["APP_METRICS_PORT"] = "0"
            env["SUPERVISOR_METRICS_SOCKET"] = self._metrics.socket(worker.index)
        return env

    async def _relay(self, worker: _Worker, stream: asyncio.StreamReader) -> None:
        """Copy the worker's log lines to our stderr, tagged."""
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                continue  # a line over _LINE_LIMIT: dropped, the next one is read
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if self._settings.log_format == "json":
                record = json_record(line)
                # Still one object per line: the worker's own, or its stray output wrapped.
                if record is None:
                    record = {"time": iso_time(time.time()), "level": "WARNING"}
                    record.update(logger="worker.stderr", message=line)
                record["worker"] = worker.index
                line = json.dumps(record)  # ASCII, like servicekit.logs.JsonFormatter
            else:
                line = f"[worker {worker.index}] {line}"
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def _mark_ready(self, worker: _Worker) -> None:
        worker.ready = True
        worker.last_beat = time.monotonic()
        assert worker.process is not None
        pid = worker.process.pid
        logger.info("worker %d ready (pid %d)", worker.index, pid, extra={"worker_pid": pid})
        if not self._announced and all(w.ready for w in self._workers):
            self._announced = True
            logger.info(
                "listening on %s:%d (%d workers)",
                self._reserved.host,
                self._reserved.port,
                len(self._workers),
            )
            notify.send("READY=1")

    def _final_status(self, worker: _Worker, returncode: int) -> int:
        """The status a worker contributes to the supervisor's exit status at the stop.

        A worker that our signal stopped before it was ready (it says so with its own
        STARTUP_INTERRUPTED, or it had no handlers yet and died of the signal) served no
        one: if the service was never announced, the service's start was interrupted, as a
        single process would say; if it was, that worker was only a replacement, and the
        stop is clean.
        """
        if worker.killed:
            return ExitCode.SHUTDOWN_TIMEOUT
        by_our_signal = returncode < 0 and -returncode in self._signals
        if not worker.ready and (by_our_signal or returncode == ExitCode.STARTUP_INTERRUPTED):
            return ExitCode.OK if self._announced else ExitCode.STARTUP_INTERRUPTED
        return exit_status(returncode)


def _entry_module() -> str:
    """The module this process was started as (``app`` for ``python -m app``).

    Workers run the same entry as the supervisor, so this package needs no knowledge of the
    user's package name and never imports it.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name if spec is not None else "app"
    return name.removesuffix(".__main__")
