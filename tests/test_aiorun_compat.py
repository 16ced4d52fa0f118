"""aiorun 2025.1.1's own test suite, run against the vendored runtime of a baked project.

The runtime promises to be a drop-in for aiorun's public API, so aiorun's tests are the
judge. The sdist is fetched once with pip (as the bench fetches aiorun) and cached under the
template's gitignored ``.cache/``. Its ``tests/`` run under pytest in a subprocess, with a
shim module named ``aiorun`` on PYTHONPATH that re-exports ``servicekit.aiorun``. The suite
needs only pytest and uvloop, both in requirements-dev.txt (no pytest-asyncio).

The shim supplies one private name the tests read: ``_DO_NOT_CANCEL_COROS``, as a view of the
coroutines of protected work. Adapted tests, and nothing else (each replacement must apply):

1. ``test_posix.py::test_mutex_exc_handler_and_stop_unhandled`` matches our wording for the
   refused exception handler instead of "parameter is unavailable".
2. ``test_posix.py::main_shutdown_callback_error_and_main_error`` listens to our logger,
   ``servicekit.aiorun``, instead of ``aiorun`` (a private name).
3. ``test_posix.py::test_shutdown_callback_error_and_main_error`` looks for our wording,
   "shutdown callback failed", instead of "shutdown_callback() raised an error".
4. The same test sends no SIGTERM after ``run()`` has returned and expects exit status 0,
   not 1: aiorun leaves its handler installed, so that SIGTERM raises "Event loop is
   closed" in the child (exit 1); we put the previous handler back, so it would kill the
   child before it reports.
5. ``test_stop_on_errors.py::test_stop_must_be_obeyed`` looks for our wording, "task(s)
   still running after 2.0s", instead of "tasks refused to exit after 2.0 seconds".

aiorun's multiprocessing tests wait a fixed 0.8 s before they signal the spawned child. On
a heavily loaded machine a child may not have installed its handlers by then, dies of the
signal, and the test waits for it forever; the time limits below turn that into a failure
that shows where it waited.

The last tests check docs/runtime.md's claim that ``force_exit_on_second_signal`` and
``force_exit_after`` are ours: aiorun 2025.1.1 itself raises TypeError for them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import TEMPLATE, Bake, with_dispositions

VERSION = "2025.1.1"
CACHE = TEMPLATE / ".cache" / f"aiorun-{VERSION}"
SUITE_TIMEOUT = 300
"""Seconds for aiorun's whole suite; it takes under a minute here. A hang is a failure."""
SLOW_TEST = 20.0
"""Seconds after which one of aiorun's tests counts as hung: each needs a few at most."""

SHIM = '''"""Maps ``import aiorun`` to the vendored runtime, for aiorun's own test suite."""
from servicekit.aiorun import *  # noqa: F403
from servicekit.aiorun import ShutdownCallback, _protected  # noqa: F401


class _CoroutinesOfProtectedWork:
    """aiorun keeps the coroutines it must not cancel; we keep their tasks."""

    def __contains__(self, coro: object) -> bool:
        return any(getattr(work, "get_coro", lambda: None)() is coro for work in list(_protected))


_DO_NOT_CANCEL_COROS = _CoroutinesOfProtectedWork()
'''

ADAPTATIONS: dict[str, list[tuple[str, str]]] = {
    "test_posix.py": [
        (  # 1
            'match="parameter is unavailable"',
            'match="cannot be used with a loop that already has a custom exception handler"',
        ),
        ('logging.getLogger("aiorun")', 'logging.getLogger("servicekit.aiorun")'),  # 2
        ('"shutdown_callback() raised an error"', '"shutdown callback failed"'),  # 3
        (  # 4
            "main_shutdown_callback_error_and_main_error, expected_exit_code=1\n"
            "    ) as (p, q):\n"
            "        # TODO: with multiprocessing set_start_method=spawn, lowering this\n"
            "        #  detail causes hanging. Still unclear why.\n"
            "        time.sleep(0.8)\n"
            "        os.kill(p.pid, SIGTERM)\n",
            "main_shutdown_callback_error_and_main_error, expected_exit_code=0\n    ) as (p, q):\n",
        ),
    ],
    "test_stop_on_errors.py": [
        ('"tasks refused to exit after 2.0 seconds"', '"task(s) still running after 2.0s"'),  # 5
    ],
}


def aiorun_sdist() -> Path:
    """The sdist from the cache, downloaded with pip the first time; skip if unreachable."""
    archive = CACHE / f"aiorun-{VERSION}.tar.gz"
    if not archive.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-q", "-d", str(CACHE), f"aiorun=={VERSION}"],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        if fetched.returncode != 0 or not archive.exists():
            pytest.skip(f"cannot download aiorun {VERSION}: {fetched.stderr.strip()[-300:]}")
    return archive


@pytest.fixture(scope="module")
def aiorun_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """aiorun's sdist, unpacked: the real package and its tests."""
    where = tmp_path_factory.mktemp("aiorun-sdist")
    with tarfile.open(aiorun_sdist()) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(where, filter="data")
        else:  # Python 3.11 before 3.11.4
            archive.extractall(where)
    return where / f"aiorun-{VERSION}"


def adapted_suite(source: Path, into: Path) -> Path:
    """Copy aiorun's tests, apply the listed adaptations, and add a neutral pytest.ini."""
    suite = into / "suite"
    (suite / "tests").mkdir(parents=True)
    for test_file in (source / "tests").iterdir():
        text = test_file.read_text()
        for old, new in ADAPTATIONS.get(test_file.name, []):
            assert text.count(old) == 1, f"adaptation no longer applies to {test_file.name}: {old}"
            text = text.replace(old, new)
        (suite / "tests" / test_file.name).write_text(text)
    (suite / "pytest.ini").write_text("[pytest]\nxfail_strict = true\n")
    return suite


def test_aiorun_own_suite_passes_against_the_vendored_runtime(
    bake: Bake, aiorun_source: Path, tmp_path: Path
) -> None:
    if sys.platform == "win32":
        pytest.skip("aiorun's POSIX suite; its Windows test needs a console")
    project = bake()
    suite = adapted_suite(aiorun_source, tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "aiorun.py").write_text(SHIM)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), str(project)]))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests",
        "--durations=0",
        f"--durations-min={SLOW_TEST}",
        "-o",
        f"faulthandler_timeout={SLOW_TEST * 3}",  # a hung test shows where it waits
    ]
    try:
        result = subprocess.run(
            with_dispositions(signal.SIG_DFL, command),  # its tests expect a terminal's signals
            cwd=suite,
            env=env,
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as hung:
        output = hung.stdout.decode() if isinstance(hung.stdout, bytes) else hung.stdout or ""
        pytest.fail(f"aiorun's suite hung for {SUITE_TIMEOUT}s:\n{output[-6000:]}")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 50, summary  # 55 tests, a few skip off uvloop
    assert "failed" not in summary and "error" not in summary, summary
    slow = re.findall(r"^[\d.]+s call +\S+", result.stdout, re.MULTILINE)
    assert not slow, f"tests that waited for something that never came: {slow}"
    # the shim really maps to the vendored module, not to an installed aiorun
    probe = subprocess.run(
        [sys.executable, "-c", "import aiorun; print(aiorun.run.__module__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "servicekit.aiorun", probe.stderr


@pytest.mark.parametrize("keyword", ["force_exit_on_second_signal=True", "force_exit_after=8.0"])
def test_force_exit_keywords_are_our_extensions(aiorun_source: Path, keyword: str) -> None:
    """docs/runtime.md says aiorun itself rejects them; check that against the real aiorun."""
    name = keyword.split("=")[0]
    result = subprocess.run(
        [sys.executable, "-c", f"import aiorun; aiorun.run({keyword})"],
        env=dict(os.environ, PYTHONPATH=str(aiorun_source)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "TypeError" in result.stderr
    assert name in result.stderr
    readme = (TEMPLATE / "docs" / "runtime.md").read_text()
    differences = readme.split("Small differences", 1)[1].split("\n## ", 1)[0]
    assert f"`{name}`" in differences
    assert "TypeError" in differences
