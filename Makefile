# The two commands of the README: `make demo` and `make test`.
# Both create the virtualenv on first use; nothing else needs installing
# beyond python3 (with venv) and make. Run as root, `make test` also installs
# the system packages the tests need (.ci/packages) before pytest, so no test
# skips for want of a tool; as another user those tests skip and the run ends
# by saying which and how to enable them.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test system-packages lint typecheck pytest crashpoints soak bench bench-tiny mutation mutation-report deb clean

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
	$(BIN)/python -m pip install --quiet -e '.[test,dask]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ipspool.tools.demo

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then .ci/install-packages; fi

pytest: $(STAMP) system-packages
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The full crash-point and error-injection exploration (tests/e2e/test_crashpoints.py,
# needs strace); the report goes to build/crashpoints/ (points.jsonl, summary.jsonl).
crashpoints: $(STAMP)
	rm -rf build/crashpoints
	CRASHPOINTS_REPORT=$(CURDIR)/build/crashpoints $(BIN)/pytest -m crashpoints_full -s tests/e2e/test_crashpoints.py $(PYTEST_ARGS)

# kill -9 random processes of the daemon while a producer submits, then audit.
SOAK_ARGS ?= --rounds 1000
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,dask,bench]'
	$(BIN)/python -m bench.intelmq --setup
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Mutation testing of the unit tests (docs/mutation.md). mutmut imports its
# mutated copy only from ./, src/ or source/, so it runs in build/mutation/,
# where src/ is a link to daemon/; [tool.mutmut] in pyproject.toml lists the
# modules. One worker: the machine is shared. MUTANTS='ipspool.clock*' runs
# only the mutants matching a pattern (the others stay "not checked").
MUTATION_DIR := build/mutation
MUTANTS ?=

mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,mutation]'
	rm -rf $(MUTATION_DIR) && mkdir -p $(MUTATION_DIR)
	ln -s ../../daemon $(MUTATION_DIR)/src
	for p in daemon tests docs config README.md pyproject.toml; do ln -s ../../$$p $(MUTATION_DIR)/$$p; done
	cd $(MUTATION_DIR) && $(CURDIR)/$(BIN)/mutmut run --max-children 1 $(MUTANTS)
	@$(MAKE) --no-print-directory mutation-report

mutation-report:
	$(BIN)/python -m bench.mutation_report $(MUTATION_DIR)/mutants

# dpkg-buildpackage -b -us -uc in a clean root of each release (needs root):
# packaging/out/RELEASE/ipspool_VERSION_ARCH.deb. DEB_RELEASES=trixie for one.
DEB_RELEASES ?= bookworm trixie
deb:
	packaging/build-deb.sh $(DEB_RELEASES)

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info demo packaging/out .mypy_cache .ruff_cache .pytest_cache .hypothesis
