# `make run`: install what serving needs and start the site on http://127.0.0.1:8000 (production
#   mode); the local model's packages install in the background meanwhile (scripts/local-model.sh)
# `make dev`: the same with Django's debug server (auto-reload, debug pages)
# `make test`: set everything up and run every test, then the suite again on PostgreSQL and Redis
# `make test-fast`: the unit tests alone (tests/unit and tests/js: no server, database, threads or
#   browser; seconds)
# `make run-cluster`: the scaled-out site on one machine (PostgreSQL, Redis, two daphne, nginx)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The chat page's browser-free modules under Node's own test runner (no package to install).
JS_TESTS := node --test tests/js/

.PHONY: run dev run-cluster test test-fast bench setup serve-packages system-packages python-packages \
	site-packages dev-packages local-model local-model-background browser-packages migrate lint format clean

# Production mode (debug off, whitenoise, generated secret key): scripts/serve.sh says what it does.
# Serving needs neither the test tools nor the Debian packages, and the site offers the local model
# as "being installed" until its background install is done, so a first start takes a minute or
# two rather than the ten that compiling llama.cpp first would.
run: serve-packages local-model-background
	HOST=$(HOST) PORT=$(PORT) bash scripts/serve.sh

# The debug server: Django's runserver (daphne's, ASGI) with auto-reload and the debug pages.
dev: serve-packages local-model-background migrate
	$(BIN)/python manage.py ensure_admin
	DJANGO_DEBUG=1 $(BIN)/python manage.py runserver $(HOST):$(PORT)

# The second run selects PostgreSQL and Redis (DATABASE_URL, REDIS_URL) for the same suite. The
# browser tests and tests/test_scale_out.py start their own servers whatever those say, so
# running them again would repeat the first run.
test: setup
	$(JS_TESTS)
	$(BIN)/python -m pytest
	bash scripts/with-services.sh $(BIN)/python -m pytest -q --ignore=tests/browser --ignore=tests/test_scale_out.py

# Only the Python packages and the browser libraries (the Node tests import marked from
# static/vendor): the unit tests need no browser, database, system service or model.
test-fast: dev-packages browser-packages
	$(JS_TESTS)
	$(BIN)/python -m pytest tests/unit -q

# Benchmarks: figures printed and written to docs/benchmarks.md (about 15 minutes on 2 cores).
bench: setup
	$(BIN)/python -m bench.run

# Open http://127.0.0.1:8000/ (CLUSTER_PORT); docs/deploy.md explains what runs.
run-cluster: setup
	bash scripts/cluster.sh

setup: system-packages python-packages browser-packages

serve-packages: site-packages browser-packages

# Debian packages the tests need: Chromium for browser tests, Redis and PostgreSQL for scale-out,
# nginx for `make run-cluster`.
system-packages:
	@bash scripts/system-packages.sh

# Every Python package: the site's, the tests' and the local model's (waiting for its install).
python-packages: site-packages local-model dev-packages

site-packages: $(VENV)/.site-installed

dev-packages: $(VENV)/.dev-installed

$(VENV)/.site-installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.site-installed
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# llama-cpp-python compiles llama.cpp on install: on every core, and only the library the site
# loads (no tests, examples, tools or server of llama.cpp, no multimodal library, no TLS for model
# downloads it never makes). pip caches the wheel, so this happens once per machine.
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF -DLLAVA_BUILD=OFF
export LLAMA_CMAKE_ARGS

# Now, waiting for a background install already running (make test, make bench).
local-model: site-packages
	@bash scripts/local-model.sh install

# In a process of its own that outlives make (make run, make dev): var/local-model-install.log.
local-model-background: site-packages
	@bash scripts/local-model.sh background

# Browser libraries: pinned in package-lock.json, installed with npm, served from static/vendor/.
browser-packages: static/vendor/.installed

static/vendor/.installed: package.json package-lock.json scripts/vendor.sh
	npm ci --no-audit --no-fund --silent
	bash scripts/vendor.sh
	touch $@

migrate: site-packages
	$(BIN)/python manage.py migrate --noinput

lint: dev-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: dev-packages
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules static/vendor
