#!/usr/bin/env bash
# Installs the Debian packages the tests use, when they are missing: Chromium (browser tests),
# Redis and PostgreSQL (scale-out tests, the second run of `make test`), nginx (`make run-cluster`).
# Needs root or sudo; CI runs as root. The tests start their own servers from these binaries.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Debian keeps the server binaries (initdb, postgres) off the PATH, under /usr/lib/postgresql/N/bin.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v postgres >/dev/null 2>&1 \
    || missing+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
