"""What a new user's own service hits: promises of the docs broken by ordinary protocol code.

Each test writes a small service the way a newcomer would from the README and
``docs/protocol.md`` (its own package, calling ``servicekit.main.main`` with its protocol),
runs it as the docs say, in real processes with real signals, and checks one promise. Each
one marked ``xfail(strict=True)`` reproduces a promise broken today: it flips to a failure
(and the mark must go) once servicekit keeps that promise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD, LISTENING, Process, service_env

from servicekit.exitcodes import ExitCode

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="fork start method and /proc"
)
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

USER_MAIN = textwrap.dedent(
    """
    import sys
    from servicekit.main import main
    from userservice import protocol

    if __name__ == "__main__":
        sys.exit(main(protocol))
    """
)
"""``userservice/__main__.py``: what ``app/__main__.py`` is, for the user's package below."""

USER_PROTOCOL = textwrap.dedent(
    """
    import asyncio
    import multiprocessing
    import os
    import signal
    import subprocess
    import sys
    import time
    from concurrent.futures import ProcessPoolExecutor

    _pool = None
    _greeting = b"hello"


    def _reload(signum, frame):
        global _greeting
        _greeting = b"reloaded"
        print(f"config reloaded in pid {os.getpid()}", file=sys.stderr, flush=True)


    if os.environ.get("USER_RELOAD_ON_SIGHUP"):
        # The "reload config" pattern: installed at import, so the README says it is ours.
        signal.signal(signal.SIGHUP, _reload)


    def _pid():
        return os.getpid()


    _held = []


    async def _stubborn():
        try:
            yield b"held"
        finally:
            print("generator cleanup waits", file=sys.stderr, flush=True)
            await asyncio.sleep(60)  # a cleanup that waits on a peer that never answers


    async def handle(request):
        global _pool
        if request == b"greet":
            return _greeting
        if request == b"pid":
            return b"%d" % os.getpid()
        if request == b"pool":
            # CPU work off the event loop, as asyncio's docs suggest, with the start method
            # Linux uses by default up to Python 3.13 (named, so 3.14+ tests the same).
            if _pool is None:
                _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
            loop = asyncio.get_running_loop()
            child = await loop.run_in_executor(_pool, _pid)
            return b"%d %d" % (os.getpid(), child)
        if request == b"spawn":
            # A helper program started from handle: it inherits stderr, as subprocess does.
            helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            return b"%d %d" % (os.getpid(), helper.pid)
        if request.startswith(b"block "):
            # A blocking call by mistake (a sync database driver, say): the loop is stuck.
            print("handle blocks the loop", file=sys.stderr, flush=True)
            time.sleep(float(request.split()[1]))
        if request == b"hold-generator":
            # An async generator left suspended (a stream read halfway, say): asyncio closes
            # it at the end, and its cleanup awaits.
            _held.append(_stubborn())
            return await _held[-1].__anext__()
        if request == b"interrupt":
            raise KeyboardInterrupt  # as code that calls into a library that raises it
        return request


    def recover(request):
        pass
    """
)
"""``userservice/protocol.py``: an echo with the extras a newcomer adds first."""


def start_user_service(workdir: Path, protocol: str = "", **settings: str) -> Process:
    """The user's service (``protocol``, by default the one above) started in ``workdir``;
    call ``wait_for(LISTENING)`` on it."""
    package = workdir / "userservice"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(USER_MAIN)
    (package / "protocol.py").write_text(protocol or USER_PROTOCOL)
    env = service_env(APP_HOST="127.0.0.1", APP_PORT="0", APP_JOURNAL_PATH="data/journal.log")
    # These services fork on purpose (a "fork" process pool) while the service has threads
    # (the executor that fsyncs the journal): Python 3.12+ warns about that, the warning the
    # docs answer with "use forkserver or spawn". What is tested here is what the children
    # do, so that warning must not fail a run that makes DeprecationWarning an error.
    fork_warning = "ignore:This process:DeprecationWarning"
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), fork_warning]))
    env.update(settings)
    return Process([sys.executable, "-m", "userservice"], workdir, env)


def ask_once(port: int, line: bytes, timeout: float = HANG_GUARD) -> bytes:
    """One request on a fresh connection; b"" if nothing came back in time."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line + b"\n")
        reply = b""
        with contextlib.suppress(TimeoutError):
            while not reply.endswith(b"\n"):
                chunk = sock.recv(1)
                if not chunk:
                    break
                reply += chunk
        return reply


def children(pid: int) -> list[int]:
    """The pids of a process's children (Linux: from /proc)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found += [int(child) for child in text.split()]
    return found


@contextlib.contextmanager
def killed_at_the_end(pids: list[int]) -> Iterator[list[int]]:
    """Kill whatever is in ``pids`` when the test ends, so no orphan outlives it."""
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- SIGHUP "reload config" under APP_WORKERS ---------------------------------------------------


@posix_only
def test_a_reload_handler_on_sighup_is_kept_with_workers(workdir: Path) -> None:
    """README: SIGHUP stops the service "unless a SIGHUP handler installed at import of
    ``app/protocol.py`` makes it yours". Such a handler worked for one process, but with
    APP_WORKERS=2 the same ``kill -HUP`` stopped the whole service; the supervisor now
    passes SIGHUP on to the workers, which reload."""
    service = start_user_service(workdir, APP_WORKERS="2", USER_RELOAD_ON_SIGHUP="1")
    try:
        port = int(service.wait_for(LISTENING)[2])
        service.send(signal.SIGHUP)
        service.wait_for("config reloaded|stopping", timeout=10)
        assert "stopping" not in service.log, service.log
        assert ask_once(port, b"greet") != b""
    finally:
        service.stop()


@posix_only
def test_a_reload_handler_on_sighup_is_kept_in_one_process(workdir: Path) -> None:
    """The same handler in one process: the service reloads and keeps serving (the control
    for the test above)."""
    service = start_user_service(workdir, USER_RELOAD_ON_SIGHUP="1")
    port = int(service.wait_for(LISTENING)[2])
    assert ask_once(port, b"greet") == b"hello\n"
    service.send(signal.SIGHUP)
    service.wait_for("config reloaded")
    assert ask_once(port, b"greet") == b"reloaded\n"
    assert service.stop() == ExitCode.OK, service.log


# --- A process pool in handle -------------------------------------------------------------------


@linux_only
def test_restart_after_kill_9_of_a_service_with_a_process_pool(workdir: Path) -> None:
    """README: every reply survives a ``kill -9``, and the service restarts on its journal.
    A ``ProcessPoolExecutor`` (fork) used in ``handle`` leaves its children alive after the
    ``kill -9``; they hold the journal's lock and the listening socket, so the restart is
    refused with status 69 ("in use by another process") until someone finds and kills them."""
    service = start_user_service(workdir)
    port = int(service.wait_for(LISTENING)[2])
    with killed_at_the_end(children(service.popen.pid)) as orphans:
        assert ask_once(port, b"pool").count(b" ") == 1
        orphans += children(service.popen.pid)
        service.popen.kill()
        service.popen.wait()
        restarted = start_user_service(workdir)
        try:
            restarted.wait_for(f"{LISTENING.pattern}|cannot start")
            assert "cannot start" not in restarted.log, restarted.log
        finally:
            orphans += children(restarted.popen.pid)
            for pid in orphans:  # before stop(): they hold the stderr pipe the test reads
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            restarted.stop()


@linux_only
def test_a_crashed_worker_with_a_process_pool_is_replaced(workdir: Path) -> None:
    """docs/deployment.md: a worker that crashes is replaced after 0.5 s, and "only its own
    connections are lost; the other workers keep serving". With a fork process pool in the
    worker, its children outlive it: the supervisor logs nothing and starts no replacement,
    and the dead worker's listening socket, kept open by them, takes its share of new
    connections, which hang unanswered."""
    service = start_user_service(workdir, APP_WORKERS="2")
    port = int(service.wait_for(LISTENING)[2])
    with killed_at_the_end([]) as orphans:
        try:
            worker = int(ask_once(port, b"pool").split()[0])
            orphans += children(worker)
            index = service.wait_for(rf"worker (\d+) started \(pid {worker}\)")[1]
            os.kill(worker, signal.SIGKILL)
            service.wait_for(rf"worker {index} ready \(pid (?!{worker}\))", timeout=10)
        finally:
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            status = service.stop()
    assert status == ExitCode.OK, service.log
    assert "Traceback" not in service.log, service.log


@linux_only
def test_a_crashed_worker_whose_helper_holds_its_stderr_is_replaced(workdir: Path) -> None:
    """The same promise when what outlives the worker is a program it started (``subprocess``
    keeps stderr, so its output reaches the log): the supervisor must see the worker's own
    exit, not wait for the end of its stderr, which the helper holds for a minute."""
    service = start_user_service(workdir, APP_WORKERS="2")
    port = int(service.wait_for(LISTENING)[2])
    with killed_at_the_end([]) as helpers:
        try:
            worker, helper = map(int, ask_once(port, b"spawn").split())
            helpers.append(helper)
            index = service.wait_for(rf"worker (\d+) started \(pid {worker}\)")[1]
            os.kill(worker, signal.SIGKILL)
            service.wait_for(rf"worker {index} exited with SIGKILL, restarting", timeout=10)
            service.wait_for(rf"worker {index} ready \(pid (?!{worker}\))", timeout=10)
        finally:
            for pid in helpers:  # before stop(): it may hold the stdout the test reads
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            status = service.stop()
    assert status == ExitCode.OK, service.log
    assert "Traceback" not in service.log, service.log


@linux_only
def test_a_forked_pool_child_still_dies_on_sigterm(workdir: Path) -> None:
    """A process forked by the user's code (a ``ProcessPoolExecutor`` or ``multiprocessing``
    worker) is expected to die on SIGTERM, as it does under ``asyncio.run()``: that is how an
    operator, systemd (it sends SIGTERM to every process of the unit) or a cleanup script
    stops it. Under the service it inherits, as its SIGTERM and SIGINT handler,
    ``servicekit.main``'s start-up handler, which only notes the signal: the child ignores
    both, and only SIGKILL ends it (as after the ``kill -9`` above, where orphans remain)."""
    service = start_user_service(workdir)
    port = int(service.wait_for(LISTENING)[2])
    try:
        child = int(ask_once(port, b"pool").split()[1])
        with killed_at_the_end([child]):
            ended = os.pidfd_open(child)
            try:
                os.kill(child, signal.SIGTERM)
                readable, _, _ = select.select([ended], [], [], 5.0)
            finally:
                os.close(ended)
            assert readable, f"pool child {child} still running 5 s after SIGTERM"
    finally:
        service.stop()


# --- handle raising what is not an Exception ----------------------------------------------------


@posix_only
@pytest.mark.parametrize("uvloop", ["1", "0"], ids=["uvloop", "asyncio"])
def test_a_keyboard_interrupt_raised_by_handle_is_an_unhandled_error(
    workdir: Path, uvloop: str
) -> None:
    """README's exit statuses: 1 is "an unhandled error stopped it (after a full graceful
    shutdown, one traceback logged)"; 130 is "a second SIGINT forced an immediate exit". No
    signal is sent here: code in ``handle`` raises ``KeyboardInterrupt``. The service used to
    drain, then exit 130 with the same traceback printed a second time, raw, after the
    shutdown (not a log record: it breaks APP_LOG_FORMAT=json). uvloop reports it through
    the exception handler, asyncio does not: both loops are tested."""
    if uvloop == "1" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")
    service = start_user_service(workdir, APP_USE_UVLOOP=uvloop)
    port = int(service.wait_for(LISTENING)[2])
    ask_once(port, b"interrupt")
    status = service.wait()
    assert status == ExitCode.ERROR, service.log
    assert service.log.count("Traceback") == 1, service.log


# --- handle blocking the event loop -------------------------------------------------------------


@posix_only
def test_the_budget_bounds_a_stop_while_handle_blocks_the_loop(workdir: Path) -> None:
    """docs/deployment.md: the service stops "all within APP_SHUTDOWN_TIMEOUT (8 s), below
    Docker's 10 s grace period"; README: status 75 when the budget runs out. A ``handle``
    that blocks the loop for 10 s (a sync call by mistake) holds the stop for all of it,
    whatever the budget; the log then says "SIGTERM received" 10 s after it was, "complete
    in 0.003s", and the status is 0. Docker would have sent SIGKILL long before."""
    budget = 1.0
    service = start_user_service(workdir, APP_SHUTDOWN_TIMEOUT=str(budget))
    port = int(service.wait_for(LISTENING)[2])
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        sock.sendall(b"block 10\n")
        service.wait_for("handle blocks the loop")
        started = time.monotonic()
        service.send(signal.SIGTERM)
        status = service.wait()
        elapsed = time.monotonic() - started
    assert elapsed < budget + 2.0, f"stopped {elapsed:.1f}s after SIGTERM:\n{service.log}"
    assert status == ExitCode.SHUTDOWN_TIMEOUT, service.log


@posix_only
def test_the_budget_bounds_closing_a_suspended_async_generator(workdir: Path) -> None:
    """The budget holds for the last step too: async generators are closed at the end, and
    one whose cleanup awaits forever used to be waited for after run() had returned,
    outside any budget, so the service never exited."""
    budget = 1.0
    service = start_user_service(workdir, APP_SHUTDOWN_TIMEOUT=str(budget))
    port = int(service.wait_for(LISTENING)[2])
    assert ask_once(port, b"hold-generator") == b"held\n"
    started = time.monotonic()
    service.send(signal.SIGTERM)
    status = service.wait()
    elapsed = time.monotonic() - started
    assert elapsed < budget + 2.0, f"stopped {elapsed:.1f}s after SIGTERM:\n{service.log}"
    assert "generator cleanup waits" in service.log, service.log
    assert status == ExitCode.OK, service.log


# --- Compaction while a handle awaits -----------------------------------------------------------

STORE_PROTOCOL = textwrap.dedent(
    """
    import asyncio

    store = {}


    async def handle(request):
        verb, _, rest = request.partition(b" ")
        if verb == b"watch":
            # A long poll: waits for something that has not happened yet (never, here).
            await asyncio.Event().wait()
        if verb == b"set":
            key, _, value = rest.partition(b" ")
            store[key] = value
        return b"ok"


    def recover(request):
        verb, _, rest = request.partition(b" ")
        if verb == b"set":
            key, _, value = rest.partition(b" ")
            store[key] = value


    def snapshot():
        return [b"set %s %s" % item for item in store.items()]
    """
)
"""A key-value store with ``snapshot()``, exactly as docs/protocol.md shows, plus a ``watch``
that awaits what has not happened yet (a long poll)."""


def test_the_journal_stays_bounded_while_a_handle_awaits(workdir: Path) -> None:
    """docs/reliability.md: with ``snapshot()``, the journal is compacted "whenever the journal
    passes the bound", and "the disk holds about max(APP_JOURNAL_MAX_BYTES, 2 x state)".
    docs/protocol.md: ``snapshot`` is called "when no handle is suspended". In a service where
    some ``handle`` is always awaiting (a long poll, a slow database call under load), that
    moment never comes: 2,000 SETs over five keys grow the journal past 30 times its bound."""
    bound = 4096
    service = start_user_service(
        workdir, STORE_PROTOCOL, APP_JOURNAL_MAX_BYTES=str(bound), APP_SHUTDOWN_TIMEOUT="1"
    )
    try:
        port = int(service.wait_for(LISTENING)[2])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as watcher,
            socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as writer,
        ):
            watcher.sendall(b"watch\n")
            replies = writer.makefile("rb")
            for n in range(2000):
                writer.sendall(b"set key%d %s\n" % (n % 5, b"v" * 40))
                assert replies.readline() == b"ok\n"
            journal = workdir / "data" / "journal.log"
            service.wait_for("compacted .* from [1-9]", timeout=5)
            assert journal.stat().st_size < 4 * bound
    finally:
        service.stop()


SLOW_STORE_PROTOCOL = textwrap.dedent(
    """
    import asyncio

    store = {}
    released = asyncio.Event()


    def _apply(request):
        verb, _, rest = request.partition(b" ")
        if verb in (b"set", b"slowset"):
            key, _, value = rest.partition(b" ")
            store[key] = value


    async def handle(request):
        if request == b"release":
            released.set()
        if request.startswith(b"get "):
            return store.get(request[4:], b"-")
        if request.startswith(b"slowset "):
            await released.wait()  # a slow write: its effect comes after the await
        _apply(request)
        return b"ok"


    def recover(request):
        _apply(request)


    def snapshot():
        return [b"set %s %s" % item for item in store.items()]
    """
)
"""A store whose ``slowset`` changes the state only once ``release`` came."""


def test_a_request_suspended_across_a_compaction_survives_kill_9(workdir: Path) -> None:
    """A compaction while ``handle`` is suspended must not drop what that ``handle`` (and
    the requests queued behind it on its connection) will change: its client gets its reply
    after the compaction, so after a ``kill -9`` the restart must show its effect. The
    snapshot taken during the wait does not hold it; the compacted journal must."""
    settings = {"APP_JOURNAL_MAX_BYTES": "2048"}
    service = start_user_service(workdir, SLOW_STORE_PROTOCOL, **settings)
    port = int(service.wait_for(LISTENING)[2])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as slow,
        socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as writer,
    ):
        slow.sendall(b"slowset a 1\nset b 2\n")  # one batch: "set b" waits behind it
        replies = writer.makefile("rb")
        for n in range(200):  # past the bound, twice over
            writer.sendall(b"set k%d %s\n" % (n % 3, b"v" * 30))
            assert replies.readline() == b"ok\n"
        service.wait_for("compacted .* from [1-9]", timeout=5)
        writer.sendall(b"release\n")
        assert replies.readline() == b"ok\n"
        assert slow.makefile("rb").readline() == b"ok\n"  # the batch's two replies, in one write
    service.popen.kill()
    service.popen.wait()
    restarted = start_user_service(workdir, SLOW_STORE_PROTOCOL, **settings)
    try:
        port = int(restarted.wait_for(LISTENING)[2])
        assert ask_once(port, b"get a") == b"1\n", restarted.log
        assert ask_once(port, b"get b") == b"2\n", restarted.log
        assert ask_once(port, b"get k2") == b"v" * 30 + b"\n", restarted.log
    finally:
        restarted.stop()


LIST_PROTOCOL = textwrap.dedent(
    """
    lists = {}


    def _apply(request):
        verb, _, rest = request.partition(b" ")
        key, _, items = rest.partition(b" ")
        if verb == b"push":
            lists.setdefault(key, []).append(items)
        if verb == b"load":  # what snapshot() writes: the whole list at once
            lists[key] = items.split(b"\\n")


    async def handle(request):
        if request.startswith(b"get "):
            return b",".join(lists.get(request[4:], []))
        _apply(request)
        return b"ok"


    def recover(request):
        _apply(request)


    def snapshot():
        # A bug a newcomer makes: the list is written joined by newlines, which cannot
        # be inside one journal record.
        return [b"load %s %s" % (key, b"\\n".join(items)) for key, items in lists.items()]
    """
)
"""A store of lists whose ``snapshot()`` puts a newline inside a record."""


def test_a_snapshot_record_with_a_newline_loses_no_acknowledged_state(workdir: Path) -> None:
    """README: every request a client got a reply for survives a restart. A reply with a
    newline is refused (``handle() must return bytes without a newline``), but a snapshot
    record with one was written into the compacted journal unchecked: the next start found
    two records with bad checksums, skipped them with a warning, and the acknowledged pushes
    they replaced were gone. Now the record is checked before the compacted file replaces
    the journal: while serving, the service logs it once and serves on, uncompacted; a
    restart refuses to start (status 65) and keeps the journal; started without a bound, it
    has every push."""
    settings = {"APP_JOURNAL_MAX_BYTES": "1024"}
    service = start_user_service(workdir, LIST_PROTOCOL, **settings)
    port = int(service.wait_for(LISTENING)[2])
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
        replies = sock.makefile("rb")
        for n in range(100):  # past the bound: compactions are due
            sock.sendall(b"push k item%d\n" % n)
            assert replies.readline() == b"ok\n"
    service.wait_for("cannot compact .* newline")
    assert service.stop() == ExitCode.OK, service.log
    assert service.log.count("cannot compact") == 1, service.log
    assert service.log.count("compacted") == 1, service.log  # the start's, of nothing
    assert "item9" not in service.log, service.log  # only a short prefix of the record shown
    refused = start_user_service(workdir, LIST_PROTOCOL, **settings)
    assert refused.wait() == ExitCode.RECOVER_FAILED, refused.log
    assert "snapshot()" in refused.log, refused.log
    assert "newline" in refused.log, refused.log
    restarted = start_user_service(workdir, LIST_PROTOCOL, APP_JOURNAL_MAX_BYTES="0")
    try:
        port = int(restarted.wait_for(LISTENING)[2])
        expected = b",".join(b"item%d" % n for n in range(100)) + b"\n"
        assert ask_once(port, b"get k") == expected, restarted.log
    finally:
        restarted.stop()


FAILING_SNAPSHOT_PROTOCOL = textwrap.dedent(
    """
    async def handle(request):
        return request


    def recover(request):
        raise AssertionError("not called: the journal is empty")


    def snapshot():
        raise RuntimeError("cannot snapshot the store")
    """
)


def test_snapshot_failing_at_start_keeps_its_traceback(workdir: Path) -> None:
    """A failing ``recover`` names its record and keeps its traceback (status 65). A
    ``snapshot()`` that raises at the start's compaction ended with one line, "stopped by an
    unhandled error: cannot snapshot the store" and status 1: no traceback, nothing saying
    the user's ``snapshot()`` raised it. It is now refused like ``recover``: status 65, one
    line naming ``snapshot()``, its traceback, and what to do."""
    service = start_user_service(
        workdir, FAILING_SNAPSHOT_PROTOCOL, APP_JOURNAL_MAX_BYTES=str(64 << 20)
    )
    assert service.wait() == ExitCode.RECOVER_FAILED, service.log
    assert service.log.count("Traceback") == 1, service.log
    assert "snapshot()" in service.log.replace("cannot snapshot the store", ""), service.log
    assert "APP_JOURNAL_MAX_BYTES=0" in service.log, service.log


# --- The newcomer's first slips: a sync handle, an async recover --------------------------------

SYNC_HANDLE_PROTOCOL = textwrap.dedent(
    """
    def handle(request):  # "async" forgotten
        return request.upper()


    def recover(request):
        pass
    """
)

ASYNC_RECOVER_PROTOCOL = textwrap.dedent(
    """
    seen = []


    async def handle(request):
        if request == b"seen":
            return b",".join(seen)
        seen.append(request)
        return b"ok"


    async def recover(request):  # "async" by habit
        seen.append(request)
    """
)


def started_or_refused(process: Process) -> int | None:
    """The port once it listens, or None when it stopped first (its log says why)."""
    match = process.wait_for(rf"{LISTENING.pattern}|ERROR")
    return int(match[2]) if match[2] else None


def test_a_handle_that_is_not_async_is_named_at_start(workdir: Path) -> None:
    """docs/protocol.md asks for ``async def handle``. One written without ``async`` starts,
    passes the health probe, and answers every request with ``error: internal error``, the
    log saying only ``RuntimeError: Task got bad yield: 104`` (the reply's first byte). Either
    it works, or the start refuses it in one line that names ``handle``."""
    service = start_user_service(workdir, SYNC_HANDLE_PROTOCOL)
    try:
        port = started_or_refused(service)
        if port is None:
            assert "handle" in service.log, service.log
            assert "async" in service.log, service.log
            assert service.wait() == ExitCode.CONFIG, service.log
        else:
            assert ask_once(port, b"hello") == b"HELLO\n", service.log
    finally:
        if service.popen.poll() is None:
            service.stop()


def test_an_async_recover_rebuilds_the_state_or_is_refused(workdir: Path) -> None:
    """``recover`` is a plain function (docs/protocol.md). Written as ``async def``, it is
    called and its coroutine dropped: the start logs "recovered 1 request(s)" and a
    RuntimeWarning, and listens with the state empty, so an acknowledged request is gone
    from what the service answers. Either it is awaited, or the start refuses it in one line
    that names ``recover``."""
    service = start_user_service(workdir, ASYNC_RECOVER_PROTOCOL)
    port = started_or_refused(service)
    if port is None:  # refused before anything was journaled: nothing to lose
        assert "recover" in service.log, service.log
        assert "async" in service.log, service.log
        assert service.wait() == ExitCode.CONFIG, service.log
        return
    assert ask_once(port, b"first") == b"ok\n"
    service.stop()
    restarted = start_user_service(workdir, ASYNC_RECOVER_PROTOCOL)
    try:
        port = started_or_refused(restarted)
        if port is None:
            assert "recover" in restarted.log, restarted.log
            assert "async" in restarted.log, restarted.log
        else:
            assert ask_once(port, b"seen") == b"first\n", restarted.log
    finally:
        if restarted.popen.poll() is None:
            restarted.stop()
