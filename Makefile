# Two commands do all the set-up on a fresh machine:
#   make demo   virtual environment, pinned install, `dvc repro` on the built-in dataset
#   make test   the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# DVC runs each stage's `python -m stages.x` through the shell: put the venv first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test repro clean-outputs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: install
	@test -d .dvc || $(BIN)/dvc init --quiet
	time $(BIN)/dvc repro
	$(BIN)/dvc metrics show
	@echo "next: source $(VENV)/bin/activate && salis baseline   (records this run: what dvc metrics diff,"
	@echo "      dvc exp diff, salis savings and every dvc exp run compare against; see README)"

repro: install
	$(BIN)/dvc repro

test: install
	$(BIN)/pytest -q

clean-outputs:
	rm -rf data models metrics
