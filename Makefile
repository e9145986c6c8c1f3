# simdist: every target creates .venv and installs the project when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# The main job on the default robot. Stages that are not built yet are added as they land.
demo: $(STAMP)
	$(BIN)/simdist robots
	$(BIN)/simdist train-expert --robot cartpole --preset default --out runs/demo/cartpole/expert
	$(BIN)/simdist eval-expert --expert runs/demo/cartpole/expert --episodes 32

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cartpole.py

clean:
	rm -rf $(VENV) runs *.egg-info
