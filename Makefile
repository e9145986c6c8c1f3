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

# The main job on the default robot, end to end: expert, dataset, world model, zero-shot
# deploy on the "real" cartpole, finetuning in both modes, deploy again; one table and a plot.
# Each stage is skipped when its output is complete, so an interrupted demo continues.
demo: $(STAMP)
	$(BIN)/simdist robots
	$(BIN)/simdist demo --robot cartpole --preset default --out runs/demo/cartpole

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cartpole.py
	$(BIN)/python benchmarks/bench_quadruped.py

clean:
	rm -rf $(VENV) runs *.egg-info
