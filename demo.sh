#!/usr/bin/env bash
# The main job, from a fresh clone: generate a service with the defaults, start it, echo a
# message through its client, stop it with SIGTERM, and show the graceful-shutdown log.
# Needs Python 3.11+; installs cookiecutter and the service's dependencies into .venv.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $python is older than 3.11; set PYTHON=/path/to/python3.11+" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python scripts/demo.py "$@"
