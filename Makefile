# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PY := .venv/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install browser nginx serve test test-lowest lint format clean

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

# Debian's nginx, for the scale-out test (tests/deploy/test_scaleout.py runs the project's
# deploy/nginx.conf in front of two replicas). Installed like chromium above; without it
# that test skips, saying why.
nginx:
	@if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; \
	  else \
	    echo "note: no nginx (apt-get install nginx): the scale-out test will skip"; \
	  fi; \
	fi

test: install browser nginx
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# The lowest versions pyproject.toml allows (constraints/lowest.txt), in a venv of their own,
# under the model and app suites: a floor nobody runs is only a guess. PyTorch is the
# exception the constraints file explains.
LOWEST := .venv-lowest
test-lowest:
	@VENV=$(LOWEST) EXTRAS= CONSTRAINTS=constraints/lowest.txt bash scripts/setup.sh
	$(LOWEST)/bin/python -m pip install --disable-pip-version-check -q \
	  -c constraints/lowest.txt pytest openai playwright
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider tests/model tests/app

lint: install
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf .venv $(LOWEST) .pytest_cache .ruff_cache
