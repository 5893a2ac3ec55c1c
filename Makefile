# The two commands the README promises: `make demo` and `make test`. Both set the machine up first (idempotent).
PYTHON ?= python3
export PYTHON

.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/ensure_broker.sh
	starfish agent demo

test: setup
	bash scripts/ensure_broker.sh
	bash scripts/ensure_postgres.sh
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

lint:
	$(PYTHON) -m ruff check .

bench: setup
	starfish bench models/demo --backends torch-cpu,ort-cpu,ort-cpu-int8,ort-cpu-int8-u8
