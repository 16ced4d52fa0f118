"""A user's protocol with state keeps every acknowledged request through a stop.

The project is baked with the key-value store of ``docs/examples/kv/`` swapped in for the echo
(``SET k v`` -> ``OK``, ``GET k`` -> the value or ``nil``; ``recover`` replays the ``SET``s,
``snapshot`` compacts the journal, ``GET``s are not journaled). Many clients ``SET`` under
load, the service is stopped, gracefully or by ``kill -9``, and a restart must answer every
acknowledged ``SET``: the journal is write-ahead and ``recover`` rebuilds the store from it.
Whether the generated suite passes with the example swapped in is ``tests/test_examples.py``'s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import LISTENING, Bake, swap_in

GUARD = 60.0


@pytest.fixture(scope="module")
def key_value_project(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return swap_in(bake(), "kv", tmp_path_factory.mktemp("swap"))


def clean_env(**settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("APP_")}
    env.update(settings)
    return env


class Running:
    """``python -m app`` in the project, ready once it logs ``listening on``."""

    def __init__(self, project: Path) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=project,
            env=clean_env(APP_PORT="0", APP_HOST="127.0.0.1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        ready = threading.Event()
        self.address: tuple[str, int] = ("", 0)

        def collect() -> None:
            assert self.popen.stderr is not None
            for line in self.popen.stderr:
                self.log.append(line)
                if (match := LISTENING.search(line)) and not ready.is_set():
                    self.address = (match[1], int(match[2]))
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=collect, daemon=True)
        self.reader.start()
        assert ready.wait(GUARD) and self.address[1], "".join(self.log)

    def stop(self, signum: int) -> int:
        self.popen.send_signal(signum)
        code = self.popen.wait(GUARD)
        self.reader.join(GUARD)
        return code


async def set_until_stopped(service: Running, clients: int, signum: int) -> dict[bytes, bytes]:
    """Clients SET unique keys until the service goes; signal it once 2,000 are acknowledged.

    Returns every acknowledged key with its value.
    """
    acknowledged: dict[bytes, bytes] = {}
    enough = asyncio.Event()

    async def client(number: int) -> None:
        reader, writer = await asyncio.open_connection(*service.address)
        try:
            for n in range(1_000_000):
                key, value = b"k%d.%d" % (number, n), b"v%d" % n
                writer.write(b"SET %s %s\n" % (key, value))
                if await reader.readline() != b"OK\n":
                    return  # the service is gone (or refused us while draining)
                acknowledged[key] = value
                if len(acknowledged) >= 2000:
                    enough.set()
        except ConnectionError:
            return
        finally:
            writer.close()

    tasks = [asyncio.create_task(client(number)) for number in range(clients)]
    await asyncio.wait_for(enough.wait(), GUARD)
    service.popen.send_signal(signum)
    await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    return acknowledged


async def get_all(address: tuple[str, int], keys: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"".join(b"GET %s\n" % key for key in keys))
    values = [(await reader.readline()).rstrip(b"\n") for _ in keys]
    writer.close()
    return values


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_every_acknowledged_set_survives_a_stop(key_value_project: Path, signum: int) -> None:
    journal = key_value_project / "data" / "journal.log"
    journal.unlink(missing_ok=True)
    first = Running(key_value_project)
    acknowledged = asyncio.run(set_until_stopped(first, clients=20, signum=signum))
    status = first.popen.wait(GUARD)
    assert status == (0 if signum == signal.SIGTERM else -signal.SIGKILL), "".join(first.log)
    assert len(acknowledged) >= 2000

    second = Running(key_value_project)
    keys = sorted(acknowledged)
    values = asyncio.run(get_all(second.address, keys))
    assert second.stop(signal.SIGTERM) == 0, "".join(second.log)
    lost = [key for key, value in zip(keys, values, strict=True) if value != acknowledged[key]]
    assert not lost, f"{len(lost)} acknowledged SETs lost, e.g. {lost[:3]}"
    assert any("recovered" in line for line in second.log), "".join(second.log)
