# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PY := .venv/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint format clean

install:
	@bash scripts/setup.sh

serve: install
	$(PY) -m app --host $(HOST) --port $(PORT)

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf .venv .pytest_cache .ruff_cache
