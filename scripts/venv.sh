# Sourced by ./test.sh and ./demo.sh: make .venv (Python 3.11+) and install into it.
#
# With no arguments it installs requirements-dev.txt, everything the test suite needs. With
# arguments it installs those instead (./demo.sh passes only cookiecutter), always under the
# pins of requirements-dev.txt, so the demo and the tests never run different versions.
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $python is older than 3.11; set PYTHON=/path/to/python3.11+" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if [ $# -eq 0 ]; then
    set -- -r requirements-dev.txt
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements-dev.txt "$@"
