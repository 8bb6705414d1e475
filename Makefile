# Two commands do all the set-up on a fresh machine:
#   make demo   virtual environment, pinned install, `dvc repro` on the built-in dataset
#   make test   the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# DVC runs each stage's `python -m stages.x` through the shell: put the venv first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test repro clean-outputs label-studio test-label-studio

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

# test files run TEST_WORKERS at a time (pytest-xdist), each file whole in one worker so that its
# module fixtures (a two-cycle pipeline, a Label Studio server) are built once; one torch thread
# per worker (tests/conftest.py), so the workers share the cores instead of oversubscribing them;
# the 15 slowest tests are listed at the end, to see where the 15-minute CI budget goes
TEST_WORKERS ?= 2
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# Label Studio in its own environment (it pins pyarrow < 25 and Django): for `salis labels
# push/pull` against a local server and for the real-server test
LS_VENV ?= .label-studio/venv
label-studio: $(LS_VENV)/.installed

$(LS_VENV)/.installed: requirements-label-studio.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet -r requirements-label-studio.txt
	touch $@

test-label-studio: install label-studio
	SALIS_LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(BIN)/pytest -q -m label_studio

clean-outputs:
	rm -rf data models metrics
