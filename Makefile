# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PY := .venv/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install browser serve test lint format clean

install:
	@bash scripts/setup.sh

serve: install
	$(PY) -m app --host $(HOST) --port $(PORT)

# Debian's chromium, for the playground's browser test (Playwright's own browser download
# is never used). Installed when missing and we are root (as in CI); otherwise that one test
# skips, saying why.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "note: no chromium (apt-get install chromium): the browser test will skip"; \
	  fi; \
	fi

test: install browser
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
