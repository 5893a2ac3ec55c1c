# The two commands the README promises: `make demo` and `make test`. Both set the machine up first (idempotent):
# scripts/setup.sh makes the project virtual environment $(VENV), and every target runs that environment's tools,
# never a `starfish` or `python` that happens to be on PATH.
PYTHON ?= python3
VENV ?= .venv
export PYTHON
export STARFISH_VENV := $(VENV)
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup demo test lint typecheck hadolint bench docs-check

setup:
	bash scripts/setup.sh

# The demo starts its own Mosquitto on 127.0.0.1:1883 when none is listening, and stops it afterwards.
demo: setup
	$(BIN)/starfish agent demo

# Tests start their own brokers on free loopback ports (tests/helpers/mqtt_broker.py): no system broker needed.
# Coverage counts the lines run inside the pytest process (agent and CLI subprocesses are not traced): a floor.
# PostgreSQL on 127.0.0.1:5432 for the shore station's storage tests (the other engine is SQLite).
test: setup lint typecheck hadolint
	bash scripts/ensure_postgres.sh
	$(PY) -m pytest -q --cov --cov-report=; rc=$$?; \
	    if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; \
	    echo "coverage: $$($(PY) -m coverage report --format=total)% of lines (in-process, pyproject [tool.coverage])"; \
	    exit $$rc

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

hadolint: setup
	$(BIN)/hadolint docker/Dockerfile.*

bench: setup
	$(BIN)/starfish bench models/demo/bundle --key models/demo/demo_key.pub \
	    --backends torch-cpu,ort-cpu,ort-cpu-int8,ort-cpu-int8-u8 --checkpoint models/generalize/best.ckpt

# Every command in every README, at small sizes (slow: a few minutes on two cores).
docs-check: setup
	STARFISH=$(BIN)/starfish PY=$(PY) bash scripts/check_docs.sh
