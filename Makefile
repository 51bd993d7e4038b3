# Two commands do all set-up: `make train` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0  # first: the local CPU wheel, so '.[torch]' below downloads no CUDA build
	$(PY) -m pip install -q -e '.[dev,sweep,mlflow,tensorboard,jax,torch]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)    ## train the default model (offline-capable); extra Hydra overrides via ARGS="..."
	$(PY) -m dynarch $(ARGS)

test: $(STAMP)     ## fast test suite
	$(PY) -m pytest -q

lint: $(STAMP)     ## ruff lint + format check (also a pre-commit hook: pre-commit install)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-slow: $(STAMP)  ## multi-process and long tests
	$(PY) -m pytest -q -m slow

clean:
	rm -rf outputs multirun .pytest_cache

bench: $(STAMP)    ## throughput vs plain Keras + the keras/fused loop table (experiments/throughput/), ~10 min; ARGS=--no-loops skips the table
	$(PY) experiments/throughput/bench.py $(ARGS)
