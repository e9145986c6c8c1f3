# simdist: every target creates .venv and installs the project when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

.PHONY: setup lock demo test bench clean quadruped-artifacts quadruped-adaptation

# requirements.lock pins every package to the versions the suite and the demo were last run
# with, so a fresh clone installs the same numerics (a newer mujoco or jax changes rollouts
# and the demo's table). `make lock` rewrites it from .venv after a deliberate upgrade.
LOCK := requirements.lock
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

lock: $(STAMP)
	@{ echo "# Exact versions that make test and make demo were last run with (python 3.11, linux x86_64)."; \
	   echo "# make setup installs with pip -c (constraints); regenerate with make lock after an upgrade."; \
	   $(BIN)/python -m pip freeze --exclude-editable; } > $(LOCK)
	@touch $(STAMP)

# The main job on the default robot, end to end: expert, dataset, world model, zero-shot
# deploy on the "real" cartpole, finetuning in both modes, deploy again; one table and a plot.
# Each stage is skipped when its output is complete, so an interrupted demo continues.
demo: $(STAMP)
	$(BIN)/simdist robots
	$(BIN)/simdist demo --robot cartpole --preset default --out runs/demo/cartpole

# The suite runs in TEST_WORKERS processes (pytest-xdist): most of its time is single-threaded
# tracing and XLA compilation, so two workers on a 2-core CPU beat one (13 min cold against about
# 19 min in one, measured before the resume and integrity tests; 33 min cold with them, 2026-12-07). `make test TEST_WORKERS=0` runs it in one process (xdist's `-n 0`).
# --dist loadgroup keeps tests marked with one xdist_group on one worker, so that they share
# compiled programs (train-expert reuses them per config within a process).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cartpole.py
	$(BIN)/python benchmarks/bench_quadruped.py

# Rebuild the artifacts the quadruped ships (robots/quadruped/pretrained) with the exact
# commands and seeds of docs/quadruped.md: about 40 min on a 2-core CPU (20 + 8 + 10 min measured; train-expert is not
# bit-reproducible across machines; docs/quadruped.md says how the shipped model's data was made).
Q := runs/quadruped
quadruped-artifacts: $(STAMP)
	$(BIN)/simdist train-expert --robot quadruped --preset default --seed 0 --out $(Q)/expert
	$(BIN)/simdist generate-data --robot quadruped --preset default --seed 0 --expert $(Q)/expert --out $(Q)/data
	$(BIN)/simdist distill --robot quadruped --preset default --seed 0 --data $(Q)/data --out $(Q)/model
	$(BIN)/simdist export --robot quadruped --expert $(Q)/expert --model $(Q)/model --out robots/quadruped/pretrained --overwrite

# The slippery-slope experiment of experiments/README.md on the shipped artifacts (~20 min).
quadruped-adaptation: $(STAMP)
	$(BIN)/python -m experiments.quadruped_adaptation --gap slippery-slope --rounds 3 --residual --out $(Q)/adaptation

clean:
	rm -rf $(VENV) runs *.egg-info
