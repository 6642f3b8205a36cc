# Two commands set up everything on a fresh machine:
#   make demo   install (CPU torch first, then the rest pinned to it) and run the demo
#   make test   install, lint, build the docs site and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every dependency at its tested version; `make lock` refreshes it on purpose.
LOCK := requirements.lock

.PHONY: install demo test test-all bench clean lock

# CPU torch first (a plain `torch` requirement would pull a multi-GB CUDA build), then
# everything else constrained by the lock; then the venv is checked against the lock.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) torch==2.13.0
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev]"
	$(BIN)/python tools/lock.py check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/asign demo --out asign-demo

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium unavailable: the report screenshot test will be skipped"
	$(BIN)/ruff check .
	# the docs site: a broken link, a page missing from the nav or a CLI that cannot be
	# imported for the generated reference fails here (built offline, to a throw-away folder)
	d=$$(mktemp -d) && $(BIN)/mkdocs build --strict --quiet --site-dir $$d; rc=$$?; rm -rf $$d; exit $$rc
	$(BIN)/python -m pytest -q -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc
	# second stage: the long tests that guard data safety (kill -9 mid-ingest, then re-run)
	$(BIN)/python -m pytest -q -m "slow and safety"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no safety tests collected"; exit 1; fi; exit $$rc

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# Resolve today's newest versions inside the bounds of pyproject.toml in a throw-away venv,
# starting from constraints.txt (torch==2.13.0 only), and write them to the lock.
lock:
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q -c constraints.txt torch==2.13.0
	.lock-venv/bin/pip install -q -c constraints.txt -e ".[dev]"
	.lock-venv/bin/python tools/lock.py write $(LOCK)
	rm -rf .lock-venv
	@echo "$(LOCK) refreshed: review the diff, then make clean && make test"

clean:
	rm -rf $(VENV) asign-demo .pytest_cache .ruff_cache site
