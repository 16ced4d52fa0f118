"""Imported at start by each Python a test starts itself: it is first on their ``PYTHONPATH``.

A test run can inherit SIGINT and SIGHUP as ignored (``nohup pytest``, ``pytest &`` in a
script, some CI runners and schedulers), and its children inherit that in turn. The runtime
rightly keeps an ignored SIGHUP ignored (that is what ``nohup`` asks for), so a test that
stops its service with SIGHUP would wait in vain. So the process a test starts gets the
dispositions of a process started from a terminal, the ones the tests are written for; the
test run itself keeps whatever it was given (``signal_defaults`` in ``tests/conftest.py``
does the same inside it, for the tests that need it).

Only that process: this folder leaves ``PYTHONPATH`` here, so what it starts in turn (the
supervisor's workers, the launcher's service) inherits its dispositions as it would anywhere,
including a SIGHUP a test ignored on purpose to play ``nohup``.
"""

import os
import signal

signal.signal(signal.SIGINT, signal.default_int_handler)
if hasattr(signal, "SIGHUP"):  # not on Windows
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

_here = os.path.realpath(os.path.dirname(__file__))
_rest = [
    entry
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if entry and os.path.realpath(entry) != _here
]
if _rest:
    os.environ["PYTHONPATH"] = os.pathsep.join(_rest)
else:
    os.environ.pop("PYTHONPATH", None)
