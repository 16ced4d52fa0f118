#!/usr/bin/env bash
# The main job, from a fresh clone: generate a service with the defaults, start it, echo a
# message through its client, stop it with SIGTERM, and show the graceful-shutdown log.
# Needs Python 3.11+. Installs into .venv only what the demo runs: cookiecutter here, and the
# generated service's own dependencies (scripts/demo.py reads them from its pyproject.toml).
# ./test.sh later adds the test toolchain to the same .venv.
set -euo pipefail
cd "$(dirname "$0")"

. scripts/venv.sh cookiecutter
exec .venv/bin/python scripts/demo.py "$@"
