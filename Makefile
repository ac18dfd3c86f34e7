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
# Bench scripts run as plain files; give them the same import roots as pytest (pyproject).
BENCH_PYTHONPATH := $(CURDIR):$(CURDIR)/back-end:$(CURDIR)/analysis-server

.PHONY: help setup dev test lint bench clean distclean

help:
	@echo "make dev      set up, then run the whole local stack (Ctrl-C stops it)"
	@echo "make test     set up, then run the test suite (PYTEST_ARGS='-k upload -x' to narrow)"
	@echo "make lint     ruff check + ruff format --check"
	@echo "make bench    run bench/bench_*.py in turn, then print bench/results/summary.md"
	@echo "make setup    only create .venv, install requirements.txt and the Debian packages"
	@echo "make clean    remove var/ and caches;  make distclean  also removes .venv"

# Debian's python3 lacks venv/ensurepip until python3-venv is installed; a failed venv is
# removed so the next run does not mistake it for a good one.
$(PY):
	@bash scripts/ensure_system_deps.sh python
	@echo "==> creating $(VENV)"
	@python3 -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): requirements.txt | $(PY)
	@echo "==> installing requirements.txt into $(VENV)"
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

setup: $(STAMP)
	@bash scripts/ensure_system_deps.sh services

dev: setup
	@bash scripts/dev.sh

test: setup
	@bash scripts/ensure_system_deps.sh browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Both checks run even when the first fails, so one run shows every problem.
lint: setup
	@rc=0; \
	$(VENV)/bin/ruff check . || rc=1; \
	$(VENV)/bin/ruff format --check . || rc=1; \
	exit $$rc

# Not decided yet whether bench becomes a package (`python -m bench`); until then every
# bench/bench_*.py is a standalone script writing into bench/results/.
bench: setup
	@found=0; \
	for script in bench/bench_*.py; do \
		[[ -e $$script ]] || continue; \
		found=1; \
		echo "==> $$script"; \
		PYTHONPATH=$(BENCH_PYTHONPATH) $(PY) "$$script"; \
	done; \
	if [[ $$found == 0 ]]; then echo "no bench/bench_*.py scripts yet"; fi; \
	if [[ -f bench/results/summary.md ]]; then echo; cat bench/results/summary.md; fi

clean:
	rm -rf var .pytest_cache .ruff_cache tests/artifacts
	find . \( -path ./.venv -o -path ./.git \) -prune -o -type d -name __pycache__ -prune \
		-exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
