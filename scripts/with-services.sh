#!/usr/bin/env bash
# Runs a command against a real PostgreSQL and a real Redis: starts both on free loopback ports in
# temporary folders, exports DATABASE_URL and REDIS_URL, runs the command (in the current folder),
# stops both and exits with the command's status. The servers come from the Debian packages
# `postgresql` and `redis-server` (scripts/system-packages.sh); the logic is in tests/services.py.
#
#   bash scripts/with-services.sh .venv/bin/python -m pytest tests -q
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -eq 0 ]; then
    echo "usage: scripts/with-services.sh COMMAND [ARGUMENT...]" >&2
    exit 2
fi
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$root/.venv/bin/python" -m tests.services -- "$@"
