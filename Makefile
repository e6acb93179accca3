# Two commands on a fresh machine: `make demo` (the main job on the built-in synthetic corpus) and
# `make test` (the test suite). Both create .venv and install everything first; re-running skips that.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# facenet-pytorch's metadata pins torch<2.3/numpy<2/Pillow<10.3, yet it runs on our stack.
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.cli demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff's lint and format checks, and the import layering (pyproject.toml, [tool.importlinter])
lint: $(STAMP)
	$(BIN)/ruff check pipeline mlb tests bench
	$(BIN)/ruff format --check pipeline mlb tests bench
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
