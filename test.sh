#!/usr/bin/env bash
# The whole test suite of the template, from a fresh clone: ./test.sh [pytest arguments]
#
# Creates .venv with Python 3.11+ if it is missing, installs requirements-dev.txt into it, and
# runs pytest. Tests that need a Docker engine, Wine or Prometheus skip with a reason when those
# are absent; --require-docker / --require-wine / --require-prometheus turn those skips into
# failures (CI uses all three, after scripts/docker-engine.sh and scripts/wine-python.sh have
# set them up and apt-get has installed prometheus).
set -euo pipefail
cd "$(dirname "$0")"

. scripts/venv.sh -r requirements-dev.txt  # explicit: a sourced script sees our own arguments
exec .venv/bin/python -m pytest "$@"
