"""Another local user sharing the journal's folder cannot subvert it.

The folder may be the system's temporary folder or a volume writable by all. Someone else may
pre-create the journal (to read what clients send, or to inject lines that ``recover``
replays), plant symbolic links where the service creates files, or squat the name the
supervisor claims its port with. These tests run as root, as CI does: files "of another
user" are chowned to uid 1000, and the squatter is a child that drops to uid 1000.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import (
    HANG_GUARD,
    JOURNAL_HEADER,
    Process,
    Service,
    StartService,
    ask,
    connect,
    is_reply,
    journal_record,
    journal_requests,
    service_env,
)
from test_journal_bounded import KEY_VALUE

from servicekit import supervisor
from servicekit.exitcodes import ExitCode

OTHER_UID = 1000
as_root = pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() != 0, reason="needs root to act as another user"
)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
RESULT_GUARD = 10.0
"""Seconds a refused start may take; a service that starts instead is a failure."""


def refused_start(workdir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m app``, which must exit by itself (a refusal), with its log as text."""
    defaults = {"APP_HOST": "127.0.0.1", "APP_PORT": "0", "APP_JOURNAL_PATH": "data/journal.log"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "app"],
            cwd=workdir,
            env=service_env(**{**defaults, **settings}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RESULT_GUARD,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the service started instead of refusing:\n{exc.stderr!r}")


def data_folder(workdir: Path, mode: int = 0o700) -> Path:
    folder = workdir / "data"
    folder.mkdir()
    folder.chmod(mode)
    return folder


@as_root
def test_a_journal_created_by_another_user_is_refused(workdir: Path) -> None:
    """uid 1000 pre-created the journal (0666) with a line for recover: never adopted."""
    journal = data_folder(workdir) / "journal.log"
    journal.write_bytes(JOURNAL_HEADER + journal_record(b"SET admin yes"))
    journal.chmod(0o666)
    os.chown(journal, OTHER_UID, OTHER_UID)
    result = refused_start(workdir)
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "is owned by uid 1000, not by this service's user (uid 0)" in result.stderr
    assert journal.read_bytes() == JOURNAL_HEADER + journal_record(b"SET admin yes")


@as_root
def test_a_journal_writable_by_others_is_refused(workdir: Path) -> None:
    journal = data_folder(workdir) / "journal.log"
    journal.write_bytes(JOURNAL_HEADER)
    journal.chmod(0o622)
    result = refused_start(workdir)
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert "is writable by group or others (mode 622)" in result.stderr


@as_root
def test_a_folder_of_another_user_or_open_to_all_is_refused(
    workdir: Path, start_service: StartService
) -> None:
    folder = data_folder(workdir)
    os.chown(folder, OTHER_UID, OTHER_UID)
    result = refused_start(workdir)
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert "folder is owned by uid 1000" in result.stderr
    os.chown(folder, 0, 0)
    folder.chmod(0o777)  # anyone could rename the journal away and put theirs in its place
    result = refused_start(workdir)
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert "folder is writable by anyone and has no sticky bit" in result.stderr
    folder.chmod(0o1777)  # like /tmp: others cannot rename or remove our files
    service = start_service()
    with connect(service) as sock:
        assert is_reply(ask(sock, b"in a sticky folder\n"))
    assert service.stop() == ExitCode.OK, service.log


@as_root
def test_symlinks_planted_at_the_torn_file_are_not_followed(workdir: Path) -> None:
    folder = data_folder(workdir, 0o1777)
    (folder / "journal.log").write_bytes(JOURNAL_HEADER + b"torn tail")
    (folder / "journal.log").chmod(0o600)
    target = workdir / "precious"
    target.write_bytes(b"precious\n")
    (folder / "journal.log.torn").symlink_to(target)
    result = refused_start(workdir)
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert "is a symbolic link; refusing to follow it: 'data/journal.log.torn'" in result.stderr
    assert target.read_bytes() == b"precious\n"


@as_root
@linux_only
def test_a_symlink_planted_at_the_supervisor_lock_is_not_followed(workdir: Path) -> None:
    """Run as root, the supervisor truncated the link's target and wrote its pid into it."""
    folder = data_folder(workdir, 0o1777)
    target = workdir / "precious"
    target.write_bytes(b"precious\n")
    (folder / "journal.log.lock").symlink_to(target)
    result = refused_start(workdir, APP_WORKERS="2")
    assert target.read_bytes() == b"precious\n"
    assert result.returncode == ExitCode.JOURNAL_UNWRITABLE, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "is a symbolic link; refusing to follow it: 'data/journal.log.lock'" in result.stderr


SQUATTER = textwrap.dedent(
    """
    import os, socket, sys, time
    names = [bytes.fromhex(name) for name in sys.argv[1:]]  # no imports after the drop
    os.setgid(1000)
    os.setuid(1000)
    held = []
    for name in names:  # an abstract name is taken per socket type: take both
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            sock.bind(name)
            if kind == socket.SOCK_STREAM:
                sock.listen(8)
            held.append(sock)
    print("squatting", len(held), flush=True)
    time.sleep(60)
    """
)


@as_root
@linux_only
def test_another_user_cannot_squat_the_port_claim(workdir: Path, figure) -> None:
    """uid 1000 binds the supervisor's claim names first: a free port must still be served."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    names = [f"\0app-supervisor-port-{port}"]  # the name of old versions
    if hasattr(supervisor, "port_claim_name"):
        names.append(supervisor.port_claim_name(port))
    hexed = [name.encode().hex() for name in names]
    squatter = subprocess.Popen(
        [sys.executable, "-c", SQUATTER, *hexed], stdout=subprocess.PIPE, text=True
    )
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline() == f"squatting {2 * len(names)}\n"
        env = service_env(
            APP_HOST="127.0.0.1",
            APP_PORT=str(port),
            APP_WORKERS="2",
            APP_JOURNAL_PATH="data/journal.log",
        )
        service = Process([sys.executable, "-m", "app"], workdir, env)
        try:
            service.wait_for(rf"listening on 127\.0\.0\.1:{port} \(2 workers\)")
            assert "held by uid 1000" in service.log, service.log
            with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as sock:
                assert is_reply(ask(sock, b"not squatted\n"))
            assert service.stop() == ExitCode.OK, service.log
        finally:
            if service.popen.poll() is None:
                service.popen.kill()
    finally:
        squatter.kill()
        squatter.wait()
    figure(
        "shared-folder",
        "another user's journal, lock symlink, world-writable folder refused (exit 73);"
        " port claim squatted by uid 1000 ignored, the free port served",
    )


@as_root
def test_a_symlink_planted_at_the_compaction_file_is_not_followed(workdir: Path) -> None:
    """The compaction writes ``<journal>.compact``: a link there is removed, never written
    through, and the new file is created exclusively (O_EXCL, O_NOFOLLOW)."""
    folder = data_folder(workdir, 0o1777)
    journal = folder / "journal.log"
    journal.write_bytes(JOURNAL_HEADER + journal_record(b"SET k v") + journal_record(b"SET k w"))
    journal.chmod(0o600)
    target = workdir / "precious"
    target.write_bytes(b"precious\n")
    (folder / "journal.log.compact").symlink_to(target)
    (workdir / "kv.py").write_text(KEY_VALUE)
    env = service_env(
        APP_HOST="127.0.0.1",
        APP_PORT="0",
        APP_JOURNAL_PATH="data/journal.log",
        APP_JOURNAL_MAX_BYTES="1000",
    )
    service = Service(workdir, env, args=["kv.py"])
    assert "compacted data/journal.log" in service.log, service.log
    with connect(service) as sock:
        assert ask(sock, b"GET k\n") == b"w\n"
    assert service.stop() == ExitCode.OK, service.log
    assert target.read_bytes() == b"precious\n"
    assert journal_requests(journal) == b"SET k w\nGET k\n"  # compacted, then the GET
