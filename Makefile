# The two commands of the README: `make demo` and `make test`.
# Both create the virtualenv on first use; nothing else needs installing
# beyond python3 (with venv) and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest crashpoints soak bench bench-tiny deb clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "ipspool needs Python 3.11 or newer (found: $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "python3 -m venv needs Debian's python3-venv: installing it"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	    $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "creating the virtualenv failed; on Debian: sudo apt-get install python3-venv"; exit 1; \
	  fi; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ipspool.demo

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The full crash-point and error-injection exploration (tests/test_crashpoints.py,
# needs strace); the report goes to build/crashpoints/ (points.jsonl, summary.jsonl).
crashpoints: $(STAMP)
	rm -rf build/crashpoints
	CRASHPOINTS_REPORT=$(CURDIR)/build/crashpoints $(BIN)/pytest -m crashpoints_full -s tests/test_crashpoints.py $(PYTEST_ARGS)

# kill -9 random processes of the daemon while a producer submits, then audit.
SOAK_ARGS ?= --rounds 1000
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

deb:
	packaging/build-deb.sh

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info demo .mypy_cache .ruff_cache .pytest_cache .hypothesis
