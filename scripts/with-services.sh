#!/usr/bin/env bash
# Runs a command against a real PostgreSQL, a real Redis and a real S3-compatible store: starts
# them on free loopback ports in temporary folders, exports DATABASE_URL, REDIS_URL and the
# CHAT_S3_* settings (uploads go to the store's bucket), runs the command (in the current folder),
# stops them and exits with the command's status. The servers come from the Debian packages
# `postgresql` and `redis-server` (scripts/system-packages.sh) and from moto's server mode
# (requirements-dev.txt); the logic is in tests/services.py.
#
#   bash scripts/with-services.sh .venv/bin/python -m pytest tests -q
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -eq 0 ]; then
    echo "usage: scripts/with-services.sh COMMAND [ARGUMENT...]" >&2
    exit 2
fi
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$root/.venv/bin/python" -m tests.services -- "$@"
