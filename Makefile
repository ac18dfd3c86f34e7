# YouSync back end: developer entry points. On a fresh Debian machine `make dev` and `make test`
# set up everything they need themselves (venv, requirements, redis-server, ffmpeg).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --no-print-directory

VENV := .venv
PY := $(VENV)/bin/python
# Lives inside the venv, so deleting .venv also forgets that requirements were installed.
STAMP := $(VENV)/.requirements.stamp

.PHONY: help setup dev prod-local test lint bench lock clean distclean

help:
	@echo "make dev      set up, then run the whole local stack (Ctrl-C stops it)"
	@echo "make prod-local  the production topology on this machine: nginx, N API processes, worker,"
	@echo "                 one Beat, Flower at /flower, prod settings (PROD_LOCAL_ARGS='--processes 4')"
	@echo "make test     set up, then run the test suite (PYTEST_ARGS='-k upload -x' to narrow)"
	@echo "make lint     ruff check + ruff format --check, mypy, import contracts (as .ci/run)"
	@echo "make bench    run bench/bench_*.py in turn, then print bench/results/summary.md"
	@echo "make setup    only create .venv, install requirements.txt and the Debian packages"
	@echo "make lock     regenerate constraints.txt from requirements.in (pip-compile)"
	@echo "make clean    remove var/ and caches;  make distclean  also removes .venv"

# Debian's python3 lacks venv/ensurepip until python3-venv is installed; a failed venv is
# removed so the next run does not mistake it for a good one.
$(PY):
	@bash scripts/ensure_system_deps.sh python
	@echo "==> creating $(VENV)"
	@python3 -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): requirements.txt constraints.txt back-end/pyproject.toml analysis-server/pyproject.toml media-guard/pyproject.toml | $(PY)
	@echo "==> installing requirements.txt into $(VENV)"
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

setup: $(STAMP)
	@bash scripts/ensure_system_deps.sh services

dev: setup
	@bash scripts/dev.sh

# The same command lines as deploy/systemd's units, under honcho (devtools/prod_local.py).
prod-local: setup
	@bash scripts/ensure_system_deps.sh deploy
	@$(PY) -m devtools.prod_local $(PROD_LOCAL_ARGS)

test: setup
	@bash scripts/ensure_system_deps.sh browser deploy
	$(PY) -m pytest $(PYTEST_ARGS)

# Every check runs even when an earlier one fails, so one run shows every problem: ruff, the
# type checker (settings in pyproject.toml) and the import contracts between the processes'
# packages (.importlinter).
lint: setup
	@rc=0; \
	echo "==> ruff"; \
	$(VENV)/bin/ruff check . || rc=1; \
	$(VENV)/bin/ruff format --check . || rc=1; \
	echo "==> mypy"; \
	$(VENV)/bin/mypy || rc=1; \
	echo "==> import contracts"; \
	$(VENV)/bin/lint-imports --no-cache || rc=1; \
	exit $$rc

# pip-compile resolves requirements.in (our three distributions and their extras) into exact
# versions; editable lines are dropped because pip refuses them in a constraints file.
lock: setup
	$(VENV)/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --output-file constraints.txt requirements.in
	@awk '/^-e /{skip=1; next} skip && /^ +#/{next} {skip=0; print}' constraints.txt > constraints.tmp
	@mv constraints.tmp constraints.txt

# Each bench/bench_*.py runs as a module from the repository root (`python -m bench.<name>`),
# so it imports bench's helpers, devtools and the test helpers as packages; results go to
# bench/results/.
bench: setup
	@found=0; \
	for script in bench/bench_*.py; do \
		[[ -e $$script ]] || continue; \
		found=1; \
		echo "==> $$script"; \
		module=$${script%.py}; \
		$(PY) -m "$${module//\//.}"; \
	done; \
	if [[ $$found == 0 ]]; then echo "no bench/bench_*.py scripts yet"; fi; \
	if [[ -f bench/results/summary.md ]]; then echo; cat bench/results/summary.md; fi

clean:
	rm -rf var .pytest_cache .ruff_cache tests/artifacts
	find . \( -path ./.venv -o -path ./.git \) -prune -o -type d -name __pycache__ -prune \
		-exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
