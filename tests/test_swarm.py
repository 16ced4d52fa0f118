"""A rolling update on Docker Swarm while clients talk: no request lost, no connection reset.

The generated ``deploy/swarm/stack.yaml`` is deployed as it ships (``docker stack deploy``) on
a single-node swarm: the generated image as two replicas on the host network, sharing one
port with SO_REUSEPORT (``APP_REUSE_PORT=1``), start-first updates gated by the health check,
a stop grace period above ``APP_SHUTDOWN_TIMEOUT``, one journal file per task on the stack's
volume. Client threads open connection after connection and send request after request,
while ``docker service update --image`` replaces both replicas with a new image, and then
``docker service scale`` takes one away. Afterwards:

* every request a client got its echo for is in the union of the task journals;
* every request was answered, or refused with a REFUSAL line (a stopping replica ends each
  connection with ``error: shutting down``, then its FIN) -- a refused request is in no
  journal, and the client sends it again on a new connection; no request met a bare close
  without that line; every request ends up answered;
* no connect was refused, no connection was reset, no reply timed out (the counts are
  printed);
* every replaced task, and the one scaled away, exited 0;
* the swarm is left and its leftovers removed, whatever happened.

A stopping replica closes its listening socket; on Linux the connections still waiting in
that socket's accept queue are reset, unless ``net.ipv4.tcp_migrate_req=1`` lets the kernel
hand them to another listener of the same port. The test sets it for its run (the containers
share the host's network namespace) and restores it. The negative control runs the same
update with the setting at 0 and counts the resets it causes, when there are any to see.

Needs: an engine that may enter swarm mode (scripts/docker-engine.sh), the docker CLI (for
``docker stack``), root to write the sysctl. Skips without them; fails under --require-docker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import journal_lines, swap_in
from dockerlib import build, build_app_image, free_port, report, unavailable

docker = pytest.importorskip(
    "docker", reason="the docker SDK is not installed (pip install docker)"
)

VERSION = "3.11"
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
CLIENTS = 3  # of each kind
BURST = 32
REQUESTS_PER_CONNECTION = 5
CONVERGE_LIMIT = 240  # seconds; `docker service update` of two tasks takes ~15 s here
MIN_ANSWERED_AFTER = 200  # requests answered after the scale-down, before the clients stop


@pytest.fixture(scope="module")
def cli(request: pytest.FixtureRequest) -> str:
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        unavailable(request.config, "the docker CLI is not installed (it ships `docker stack`)")
    assert docker_cli is not None
    return docker_cli


@pytest.fixture(scope="module")
def swarm(request: pytest.FixtureRequest, docker_client: Any) -> Iterator[None]:
    """A single-node swarm on loopback, left again (and docker_gwbridge removed) at the end."""
    state = docker_client.info()["Swarm"]["LocalNodeState"]
    if state != "inactive":
        unavailable(
            request.config,
            f"the engine is already in a swarm ({state}); the test will not touch a swarm it "
            "did not create (docker swarm leave --force)",
        )
    try:
        docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    except docker.errors.APIError as exc:
        unavailable(request.config, f"this engine cannot init a swarm: {exc}")
    try:
        yield
    finally:
        docker_client.swarm.leave(force=True)
        for network in docker_client.networks.list(names=["docker_gwbridge"]):
            with contextlib.suppress(docker.errors.APIError):
                network.remove()


@pytest.fixture
def migrate_req(request: pytest.FixtureRequest) -> Iterator[Callable[[int], None]]:
    """Set net.ipv4.tcp_migrate_req for the test; the value before is restored afterwards."""
    try:
        before = MIGRATE_REQ.read_text().strip()
        MIGRATE_REQ.write_text(before + "\n")
    except OSError as exc:
        unavailable(
            request.config,
            f"cannot set net.ipv4.tcp_migrate_req: {exc}",
            "run the tests as root on Linux 5.14 or later",
        )

    def set_value(value: int) -> None:
        MIGRATE_REQ.write_text(f"{value}\n")

    yield set_value
    MIGRATE_REQ.write_text(before + "\n")


@pytest.fixture(scope="module")
def images(
    request: pytest.FixtureRequest, docker_client: Any, bake: Callable[..., Path]
) -> Iterator[tuple[str, str]]:
    """The generated image, and a second one made from it: the 'new version' to roll out."""
    project = bake(project_name="Swarm Echo", use_docker=True)
    suffix = uuid.uuid4().hex[:8]
    old_tag = f"aiorun-swarm-test/app:v1-{suffix}"
    new_tag = f"aiorun-swarm-test/app:v2-{suffix}"
    old, seconds = build_app_image(request.config, docker_client, project, VERSION, old_tag)
    dockerfile = f"FROM {old_tag}\nLABEL org.aiorun-template.test-version=2\n"
    new, _, _ = build(docker_client, new_tag, fileobj=_tar_of(dockerfile), custom_context=True)
    assert new.id != old.id
    report(
        request.config,
        "swarm_build_seconds",
        round(seconds, 1),
        f"image built in {seconds:.1f}s",
        "swarm",
    )
    yield old_tag, new_tag
    for image in (new, old):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image.id, force=True)


def _tar_of(dockerfile: str) -> Any:
    import io
    import tarfile

    data = dockerfile.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


# --------------------------------------------------------------------------- the clients


@dataclass
class Tally:
    """What the clients saw, attempt by attempt. An attempt is one line sent once."""

    answered: list[str] = field(default_factory=list)
    refused_with_error: list[str] = field(default_factory=list)
    closed_unanswered: list[str] = field(default_factory=list)
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


REFUSAL = b"\x15"
"""The first byte of the service's refusals (``error: shutting down``), and of no reply."""


def _exchange(sock: socket.socket, reader: Any, line: str, tally: Tally) -> bool:
    """Send one request and read its reply; record what happened; True if it was echoed."""
    rest = b""
    try:
        sock.sendall(line.encode() + b"\n")
        reply = reader.readline()
        if reply.startswith(REFUSAL):
            rest = reader.read()  # the refusal is the last line: then the FIN, no reset
    except OSError as exc:  # reset, timeout, broken pipe
        with tally.lock:
            tally.errors[type(exc).__name__] += 1
        return False
    with tally.lock:
        if reply == line.encode() + b"\n":
            tally.answered.append(line)
            return True
        if rest:
            tally.errors[f"after the refusal {rest[:40]!r}"] += 1
        elif reply.startswith(REFUSAL):
            tally.refused_with_error.append(line)
        elif reply:
            tally.errors[f"unexpected reply {reply[:40]!r}"] += 1
        else:
            tally.closed_unanswered.append(line)
    return False


def _connect(port: int, tally: Tally) -> tuple[socket.socket, Any] | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as exc:
        with tally.lock:
            tally.errors[f"connect: {type(exc).__name__}"] += 1
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, sock.makefile("rb")


def _close(sock: socket.socket, reader: Any) -> None:
    """Half-close and wait for the server's FIN: then nothing is left to reset."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        reader.read()
    sock.close()


def _client(number: int, port: int, tally: Tally, stop: threading.Event) -> None:
    """Connect, send up to N requests one by one, close; again, until told to stop.

    A request whose connection ended before its echo is sent again, as a new attempt, on a
    new connection: that is what a client of a service being updated does.
    """
    sequence = 0
    pending: int | None = None  # a request still owed an answer
    while not stop.is_set() or pending is not None:
        connection = _connect(port, tally)
        if connection is None:
            time.sleep(0.05)  # a client's back-off before it tries again
            continue
        for _ in range(REQUESTS_PER_CONNECTION):
            if pending is None:
                if stop.is_set():
                    break
                sequence += 1
                pending = sequence
                with tally.lock:
                    tally.requests += 1
            line = f"c{number}-r{pending}-{uuid.uuid4().hex[:6]}"
            if not _exchange(*connection, line, tally):
                break  # this connection is over; the request is sent again on a new one
            pending = None
        _close(*connection)


def _burst_client(number: int, port: int, tally: Tally, stop: threading.Event) -> None:
    """Open BURST connections at once, then one request on each: the kernel completes the
    handshakes before the service accepts them, so connections wait in its accept queue --
    the ones a stopping replica would reset without net.ipv4.tcp_migrate_req."""
    sequence = 0
    owed: list[int] = []  # requests still owed an answer, sent again in the next burst
    while not stop.is_set() or owed:
        while len(owed) < BURST and not stop.is_set():
            sequence += 1
            owed.append(sequence)
            with tally.lock:
                tally.requests += 1
        connections = []
        for _ in owed:
            connection = _connect(port, tally)
            if connection is None:
                break
            connections.append(connection)
        unanswered = owed[len(connections) :]
        for connection, request in zip(connections, owed, strict=False):
            if not _exchange(*connection, f"b{number}-r{request}-{uuid.uuid4().hex[:6]}", tally):
                unanswered.append(request)
            _close(*connection)
        owed = unanswered


@contextlib.contextmanager
def _talking(port: int, tally: Tally) -> Iterator[Callable[[], int]]:
    stop = threading.Event()
    threads = [
        threading.Thread(target=target, args=(n, port, tally, stop), daemon=True)
        for target in (_client, _burst_client)
        for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()

    def answered() -> int:
        with tally.lock:
            return len(tally.answered)

    try:
        yield answered
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a client thread hangs"


def _wait_until(what: str, check: Callable[[], bool], limit: float = CONVERGE_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {limit:g}s")
        time.sleep(0.1)


# --------------------------------------------------------------------------- the stack


class Stack:
    """The shipped stack file deployed under a test name, removed (volume too) at the end."""

    def __init__(
        self,
        client: Any,
        cli: str,
        project: Path,
        image: str,
        port: int,
        stack_file: str = "stack.yaml",
    ) -> None:
        self.client = client
        self.cli = cli
        self.project = project
        self.stack_file = stack_file
        self.name = f"aiorunswarm{uuid.uuid4().hex[:6]}"
        self.service_name = f"{self.name}_app"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("APP_")},
            "IMAGE": image,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(port),
        }

    def docker(self, *args: str) -> str:
        result = subprocess.run(
            [self.cli, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CONVERGE_LIMIT,
            check=False,
        )
        assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def deploy(self) -> None:
        stack_file = self.project / "deploy" / "swarm" / self.stack_file
        self.docker("stack", "deploy", "--resolve-image", "never", "-c", str(stack_file), self.name)

    @property
    def service(self) -> Any:
        return self.client.services.get(self.service_name)

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.service.tasks())

    def running(self, image: str) -> int:
        """Tasks of the image that swarm reports running (after their health check passed)."""
        return sum(
            1
            for t in self.tasks()
            if t["DesiredState"] == "running"
            and t["Status"]["State"] == "running"
            and t["Spec"]["ContainerSpec"]["Image"].split("@")[0] == image
        )

    def exits(self, since: float) -> dict[str, int]:
        """Exit status of every container of the service that ended (events since ``since``)."""
        events = self.client.events(
            since=int(since),
            until=int(time.time()) + 1,
            decode=True,
            filters={
                "type": "container",
                "event": "die",
                "label": f"com.docker.swarm.service.name={self.service_name}",
            },
        )
        return {
            event["Actor"]["Attributes"]["com.docker.swarm.task.name"]: int(
                event["Actor"]["Attributes"]["exitCode"]
            )
            for event in events
        }

    def journal_dir(self) -> Path:
        return Path(self.client.volumes.get(f"{self.name}_journal").attrs["Mountpoint"])

    def remove(self) -> None:
        subprocess.run(
            [self.cli, "stack", "rm", self.name],
            env=self.env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        deadline = time.monotonic() + 60
        label = f"com.docker.stack.namespace={self.name}"
        # sparse: a full list inspects each container it found, and one that swarm removes in
        # between fails the whole call with NotFound (seen in CI).
        while self.client.containers.list(all=True, sparse=True, filters={"label": label}):
            if time.monotonic() > deadline:
                for container in self.client.containers.list(
                    all=True, sparse=True, filters={"label": label}
                ):
                    with contextlib.suppress(docker.errors.NotFound):
                        container.remove(force=True)
                break
            time.sleep(0.2)
        with contextlib.suppress(docker.errors.APIError):
            self.client.volumes.get(f"{self.name}_journal").remove(force=True)


def _rolling_update(
    request: pytest.FixtureRequest,
    docker_client: Any,
    cli: str,
    project: Path,
    images: tuple[str, str],
) -> tuple[Tally, dict[str, list[str]], dict[str, int]]:
    """Deploy, update, scale down while clients talk; return tally, journals, exit statuses."""
    old, new = images
    port = free_port()
    stack = Stack(docker_client, cli, project, old, port)
    tally = Tally()
    since = time.time()
    label = f"com.docker.swarm.service.name={stack.service_name}"

    def containers_running() -> int:
        return len(docker_client.containers.list(sparse=True, filters={"label": label}))

    try:
        stack.deploy()
        _wait_until("2 healthy replicas", lambda: stack.running(old) == 2)
        started = time.monotonic()
        with _talking(port, tally) as answered:
            _wait_until("answers before the update", lambda: answered() >= 100, 60)
            stack.docker("service", "update", "--quiet", "--image", new, stack.service_name)
            _wait_until(
                "2 new replicas", lambda: stack.running(new) == 2 and stack.running(old) == 0, 30
            )
            _wait_until("the replaced tasks to exit", lambda: containers_running() == 2, 60)
            stack.docker("service", "scale", "--detach=false", f"{stack.service_name}=1")
            _wait_until("the scaled-away task to exit", lambda: containers_running() == 1, 60)
            assert stack.running(new) == 1
            after = answered()
            _wait_until(
                "answers after the scale-down", lambda: answered() >= after + MIN_ANSWERED_AFTER, 60
            )
        seconds = time.monotonic() - started
        stack.docker("service", "rm", stack.service_name)
        _wait_until("the last task to exit", lambda: containers_running() == 0, 60)
        exits = stack.exits(since)
        folder = stack.journal_dir()
        journals = {
            path.name: journal_lines(path.read_bytes()) for path in folder.glob("journal-*.log")
        }
    finally:
        stack.remove()
    report(
        request.config,
        "swarm_requests",
        tally.requests,
        f"{tally.requests} requests in {seconds:.1f}s across update and scale-down: "
        f"{len(tally.answered)} answered attempts, {len(tally.refused_with_error)} refused "
        f"with error:, {len(tally.closed_unanswered)} closed unanswered (sent again), "
        f"errors {dict(tally.errors) or 0}; task exits {sorted(exits.values())}",
        "swarm",
    )
    return tally, journals, exits


def test_rolling_update_loses_nothing(
    request: pytest.FixtureRequest,
    docker_client: Any,
    cli: str,
    swarm: None,
    images: tuple[str, str],
    bake: Callable[..., Path],
    migrate_req: Callable[[int], None],
) -> None:
    migrate_req(1)
    project = bake(project_name="Swarm Echo", use_docker=True)
    tally, journals, exits = _rolling_update(request, docker_client, cli, project, images)

    union = {line for lines in journals.values() for line in lines}
    assert not tally.errors, f"connections refused, reset or timed out: {dict(tally.errors)}"
    missing = [line for line in tally.answered if line not in union]
    assert not missing, f"{len(missing)} answered requests in no journal, e.g. {missing[:3]}"
    assert not tally.closed_unanswered, (
        f"{len(tally.closed_unanswered)} requests met a close without a reply or an 'error:' "
        f"line, e.g. {tally.closed_unanswered[:3]}"
    )
    refused_but_handled = [line for line in tally.refused_with_error if line in union]
    assert not refused_but_handled, f"refused, yet journaled: {refused_but_handled[:3]}"
    assert sum(len(lines) for lines in journals.values()) == len(union), "a line journaled twice"
    assert len(tally.answered) == tally.requests, "a request was never answered"

    # 2 replaced by the update, 1 scaled away, 1 removed at the end: each stopped gracefully.
    assert len(exits) == 4, f"expected 4 task exits: {exits}"
    assert set(exits.values()) == {0}, f"exit statuses of the stopped tasks: {exits}"
    # Every task served: the traffic really crossed the update and the scale-down.
    assert len(journals) == 4 and all(journals.values()), {k: len(v) for k, v in journals.items()}


def test_negative_control_without_migration_queued_connections_are_reset(
    request: pytest.FixtureRequest,
    docker_client: Any,
    cli: str,
    swarm: None,
    images: tuple[str, str],
    bake: Callable[..., Path],
    migrate_req: Callable[[int], None],
) -> None:
    """The same update with net.ipv4.tcp_migrate_req=0: a stopping replica resets its queue."""
    migrate_req(0)
    project = bake(project_name="Swarm Echo", use_docker=True)
    tally, _, exits = _rolling_update(request, docker_client, cli, project, images)
    assert set(exits.values()) == {0}
    resets = tally.errors["ConnectionResetError"]
    if not resets:
        pytest.skip("no connection waited in a closing accept queue this time: nothing to show")
    assert len(tally.answered) == tally.requests, "a reset request was not answered on retry"


# --------------------------------------------------------------------------- with state

STATEFUL_STACK = "stack-stateful.yaml"
WRITERS = 4
WRITES_AROUND_THE_UPDATE = 100
"""Acknowledged SETs before the update, and again after it, before the writers stop."""


@pytest.fixture(scope="module")
def key_value_images(
    request: pytest.FixtureRequest,
    docker_client: Any,
    bake: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, str, str]]:
    """A project with the key-value example (docs/examples/kv) swapped in, as two images."""
    baked = bake(project_name="Swarm Echo", use_docker=True)
    project = swap_in(baked, "kv", tmp_path_factory.mktemp("swarm-kv"))  # the bake's name
    suffix = uuid.uuid4().hex[:8]
    old_tag = f"aiorun-swarm-test/kv:v1-{suffix}"
    new_tag = f"aiorun-swarm-test/kv:v2-{suffix}"
    old, _ = build_app_image(request.config, docker_client, project, VERSION, old_tag)
    dockerfile = f"FROM {old_tag}\nLABEL org.aiorun-template.test-version=2\n"
    new, _, _ = build(docker_client, new_tag, fileobj=_tar_of(dockerfile), custom_context=True)
    yield project, old_tag, new_tag
    for image in (new, old):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image.id, force=True)


def _label_the_journal_node(docker_client: Any, project: Path) -> None:
    """What the stack's README asks for once: say which node holds the journal."""
    [node] = docker_client.nodes.list()
    spec = node.attrs["Spec"]
    spec.setdefault("Labels", {})[f"{project.name}.journal"] = "true"
    node.update(spec)


def _set(port: int, key: str, value: str) -> bool:
    """One SET on a connection of its own; True once it was acknowledged."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"SET {key} {value}\n".encode())
            return sock.makefile("rb").readline() == b"OK\n"
    except OSError:  # refused while no task listens (stop-first), reset, timed out
        return False


def _writer(number: int, port: int, acknowledged: dict[str, str], stop: threading.Event) -> None:
    """SET key after key; a SET that was not acknowledged is sent again until it is."""
    n = 0
    while not stop.is_set():
        key, value = f"w{number}-k{n}", uuid.uuid4().hex[:8]
        while not _set(port, key, value):
            if stop.is_set():
                return
            time.sleep(0.05)  # a client's back-off while the service is being replaced
        acknowledged[key] = value
        n += 1


def _get_all(port: int, keys: list[str]) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("".join(f"GET {key}\n" for key in keys).encode())
        stream = sock.makefile("rb")
        return [stream.readline().decode().rstrip("\n") for _ in keys]


def _update_a_stateful_service(
    docker_client: Any, cli: str, project: Path, images: tuple[str, str], stack_file: str
) -> tuple[dict[str, str], list[str], dict[str, int], list[str]]:
    """Deploy, SET while ``docker service update --image`` replaces the task, GET it all.

    Returns what was acknowledged, what the new task answers for those keys, the exit
    statuses of the tasks that ended, and the journal files on the volume.
    """
    old, new = images
    port = free_port()
    stack = Stack(docker_client, cli, project, old, port, stack_file=stack_file)
    acknowledged: dict[str, str] = {}
    stop = threading.Event()
    writers = [
        threading.Thread(target=_writer, args=(n, port, acknowledged, stop), daemon=True)
        for n in range(WRITERS)
    ]
    since = time.time()
    try:
        stack.deploy()
        _wait_until("a healthy task", lambda: stack.running(old) == 1)
        for thread in writers:
            thread.start()
        try:
            _wait_until("writes before the update", lambda: len(acknowledged) >= 100, 60)
            stack.docker("service", "update", "--quiet", "--image", new, stack.service_name)
            _wait_until(
                "the new task", lambda: stack.running(new) == 1 and stack.running(old) == 0, 60
            )
            before = len(acknowledged)
            _wait_until(
                "writes after the update",
                lambda: len(acknowledged) >= before + WRITES_AROUND_THE_UPDATE,
                60,
            )
        finally:
            stop.set()
            for thread in writers:
                thread.join(timeout=60)
        assert not any(t.is_alive() for t in writers), "a writer hangs"
        keys = sorted(acknowledged)
        answers = _get_all(port, keys)
        stack.docker("service", "rm", stack.service_name)
        _wait_until(
            "the last task to exit",
            lambda: (
                not docker_client.containers.list(
                    sparse=True,
                    filters={"label": f"com.docker.swarm.service.name={stack.service_name}"},
                )
            ),
            60,
        )
        exits = stack.exits(since)
        journals = sorted(path.name for path in stack.journal_dir().glob("journal*.log"))
    finally:
        stack.remove()
    return acknowledged, answers, exits, journals


def test_rolling_update_of_a_stateful_service_keeps_every_acknowledged_write(
    docker_client: Any,
    cli: str,
    swarm: None,
    key_value_images: tuple[Path, str, str],
) -> None:
    """stack-stateful.yaml as shipped: the new task replays the old task's journal."""
    project, old, new = key_value_images
    _label_the_journal_node(docker_client, project)
    acknowledged, answers, exits, journals = _update_a_stateful_service(
        docker_client, cli, project, (old, new), STATEFUL_STACK
    )
    lost = [
        key
        for key, answer in zip(sorted(acknowledged), answers, strict=True)
        if answer != acknowledged[key]
    ]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged SETs lost: {lost[:3]}"
    assert journals == ["journal-1.log"], journals
    assert len(exits) == 2 and set(exits.values()) == {0}, f"task exits: {exits}"


def test_negative_control_a_journal_keyed_by_task_id_loses_the_state(
    docker_client: Any,
    cli: str,
    swarm: None,
    key_value_images: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    """The same update with the journal keyed as stack.yaml keys it: the new task starts
    empty, so the check above does see lost writes when there are any."""
    project, old, new = key_value_images
    _label_the_journal_node(docker_client, project)
    swarm_folder = project / "deploy" / "swarm"
    text = (swarm_folder / STATEFUL_STACK).read_text()
    keyed_by_id = text.replace("{{.Task.Slot}}", "{{.Task.ID}}")
    assert keyed_by_id != text
    (swarm_folder / "stack-task-id.yaml").write_text(keyed_by_id)
    try:
        acknowledged, answers, _, journals = _update_a_stateful_service(
            docker_client, cli, project, (old, new), "stack-task-id.yaml"
        )
    finally:
        (swarm_folder / "stack-task-id.yaml").unlink()
    assert len(journals) == 2, journals
    lost = [
        key
        for key, answer in zip(sorted(acknowledged), answers, strict=True)
        if answer != acknowledged[key]
    ]
    assert lost, "a replaced task with a journal of its own still knew the old task's writes"
