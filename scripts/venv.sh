# Sourced by ./test.sh and ./demo.sh: make .venv (Python 3.11+) and install into it.
#
# It installs what its arguments name (./test.sh: -r requirements-dev.txt, everything the
# suite needs; ./demo.sh: only cookiecutter), always under the pins of requirements-dev.txt,
# so the demo and the tests never run different versions. A sourced script sees the caller's
# arguments when it is given none, so every caller names what it wants.
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $python is older than 3.11; set PYTHON=/path/to/python3.11+" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if [ $# -eq 0 ]; then
    echo "error: scripts/venv.sh needs what to install (e.g. -r requirements-dev.txt)" >&2
    exit 2
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements-dev.txt "$@"
