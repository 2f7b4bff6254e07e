#!/usr/bin/env bash
# `make run`: the site as it runs in production, on one machine. Debug off, static files
# collected and served by whitenoise under hashed names, the site's own error pages, a secret key
# generated on first start and kept in var/secret_key (mode 0600) unless DJANGO_SECRET_KEY is set.
# Served over plain HTTP at http://$HOST:$PORT/; behind a TLS proxy set DJANGO_BEHIND_TLS_PROXY=1
# and DJANGO_HTTPS=1 (docs/deploy.md). `make dev` is the debug server instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_DEBUG="${DJANGO_DEBUG:-0}"
export DJANGO_HTTPS="${DJANGO_HTTPS:-0}"
host="${HOST:-127.0.0.1}"
port="${PORT:-8000}"
python=.venv/bin/python
"$python" manage.py migrate --noinput
"$python" manage.py collectstatic --noinput --verbosity 0
"$python" manage.py ensure_admin
echo "Starting the site on http://$host:$port/"
exec .venv/bin/daphne -b "$host" -p "$port" chatsite.asgi:application
