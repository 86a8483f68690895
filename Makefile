# mia: membership inference against diffusion models. `make` lists the commands.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install demo test test-slow lint bench sweep sync clean

help: ## list the commands
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## create .venv and install mia with everything it needs (quick when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: install ## train a small target on digits and attack it with NA (about 3 minutes on 2 CPU cores)
	$(BIN)/mia-train experiment=demo
	$(BIN)/mia-attack target.path=runs/demo/target attack=na hydra.run.dir=runs/demo/attack_na

test: install ## run the test suite (CPU, a few minutes; slow tests excluded)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install ## run only the slow tests
	$(BIN)/python -m pytest -m slow -q

bench: install ## speed benchmark: attack overhead, training throughput, memory (ratios; under 10 minutes)
	$(BIN)/python -m bench.speed

sweep: install ## NA over timestep x noise scale on the demo target (run `make demo` first)
	$(BIN)/mia-attack experiment=sweep_na_t_noise target.path=runs/demo/target

lint: install ## ruff
	$(BIN)/ruff check .

sync: install ## upload offline W&B runs under runs/ (needs `wandb login` and network)
	@find runs -type d -name 'offline-run-*' -print0 2>/dev/null | xargs -0 -r $(BIN)/wandb sync

clean: ## remove runs, caches and build files (keeps .venv)
	rm -rf runs outputs multirun .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
