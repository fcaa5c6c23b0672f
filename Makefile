# intercom-sso-gateway — `make demo` runs the gateway locally, `make test` checks everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests and benchmarks talk to (real peers, never mocks)
SYSTEM_PACKAGES := redis-server nginx-light chromium wrk samba-ad-dc samba-ad-provision

.PHONY: demo test lint typecheck layers unit bench sysdeps venv clean

demo: $(STAMP)
	$(BIN)/sso-gateway demo

test: sysdeps $(STAMP) lint typecheck layers unit

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest

bench: sysdeps $(STAMP)
	$(BIN)/python bench/run.py

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs the real peers when run as root on Debian/Ubuntu; otherwise says what is
# missing (their tests are then skipped with the reason, or fail under CI=true).
sysdeps:
	@sh scripts/install-system-packages.sh $(SYSTEM_PACKAGES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
