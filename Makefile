# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PY := .venv/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

# $(call debian_package,COMMAND,WHAT NEEDS IT): apt-get install COMMAND's package (of the same
# name) when the command is missing and we are root; otherwise a note of what will skip.
define debian_package
	@if ! command -v $(1) >/dev/null 2>&1 && [ ! -x /usr/sbin/$(1) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); \
	  else \
	    echo "note: no $(1) (apt-get install $(1)): $(2) will skip (under CI=true: fail)"; \
	  fi; \
	fi
endef

.PHONY: install browser nginx curl serve test test-lowest lint format clean

install:
	@bash scripts/setup.sh

serve: install
	$(PY) -m app --host $(HOST) --port $(PORT)

# Debian's packages that some tests run, installed when missing and we are root (as in CI).
# Without one, its tests skip locally, saying why, and fail under CI=true: what CI reports
# as tested ran. chromium: the playground's browser test (Playwright's own browser download
# is never used); nginx: the scale-out test, tests/deploy/test_scaleout.py, which runs the
# project's deploy/nginx.conf in front of two replicas; curl: the README's commands.
browser:
	$(call debian_package,chromium,the browser test)

nginx:
	$(call debian_package,nginx,the scale-out test)

curl:
	$(call debian_package,curl,the README's curl commands)

test: install browser nginx curl
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
	  -c constraints/lowest.txt pytest openai playwright langchain-openai llm
	@# numba's compiled kernels of another numba version go to a cache of their own, so
	@# neither venv's cache overwrites the other's
	NUMBA_CACHE_DIR=$(LOWEST)/numba-cache $(LOWEST)/bin/python -m pytest -q -p no:cacheprovider tests/model tests/app

lint: install
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf .venv $(LOWEST) .pytest_cache .ruff_cache
