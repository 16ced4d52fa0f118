#!/usr/bin/env bash
# The main job, from a fresh clone: generate a service with the defaults, start it, echo a
# message through its client, stop it with SIGTERM, and show the graceful-shutdown log.
# Needs Python 3.11+; installs cookiecutter and the service's dependencies into .venv.
set -euo pipefail
cd "$(dirname "$0")"

. scripts/venv.sh
exec .venv/bin/python scripts/demo.py "$@"
