# Two commands on a fresh machine: `make demo` (the main job on the built-in synthetic corpus) and
# `make test` (the test suite, every tier). Both create .venv and install everything first; re-running skips
# that. `make test-fast` runs the unit tier only (pyproject.toml's markers say what each tier holds).
# The pinned stack needs Python 3.11 exactly (pyproject.toml): python3.11 where it is on PATH, else python3,
# whose version is checked before anything is installed. `make demo PYTHON=/path/to/python3.11` for another.
PYTHON ?= $(shell command -v python3.11 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint docs clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
	  f"$(PYTHON) is Python {sys.version.split()[0]}: mlbpipe needs 3.11 (its pinned torch stack); install it, then make PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# facenet-pytorch's metadata pins torch<2.3/numpy<2/Pillow<10.3, yet it runs on our stack.
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.cli demo

# Every tier (the gpu tests skip themselves without a GPU) on 2 pytest-xdist workers, as CI has 2 cores.
# --dist loadfile: a test module runs whole on one worker, so its module fixtures (a torchrun launch, a Ray
# instance, trained runs) are built once; --no-loadscope-reorder: modules go out in collection order (e2e
# first, tests/conftest.py), not most-tests-first, which would leave the few but long DVC tests for the end.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The unit tier, in this process: on so few seconds of tests a second worker costs more than it saves.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

# ruff's lint and format checks, and the import layering (pyproject.toml, [tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check pipeline mlb tests bench
	$(BIN)/ruff format --check pipeline mlb tests bench
	$(BIN)/lint-imports

# The documentation site from docs/ (mkdocs.yml) into site/, strict: a broken link or anchor, or a page
# missing from the nav, fails it. The command-line reference page is checked by tests/test_cli_reference.py.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
