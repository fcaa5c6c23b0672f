# intercom-sso-gateway — `make demo` runs the gateway locally, `make test` checks everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the real OpenID provider the OIDC tests log in against (npm oidc-provider)
OP_DIR     := tests/oidc_op
NODE_STAMP := $(OP_DIR)/node_modules/.installed
# Debian packages the tests and benchmarks talk to (real peers, never mocks)
# (libnginx-mod-http-set-misc: set_escape_uri, as ingress-nginx uses for auth-signin's rd)
SYSTEM_PACKAGES := redis-server nginx-light libnginx-mod-http-set-misc chromium wrk nodejs npm xmlsec1 \
                   samba-ad-dc samba-ad-provision
# only `make bench` needs these: the established C implementation it compares against
BENCH_PACKAGES := apache2 libapache2-mod-auth-openidc haproxy

.PHONY: demo test lint typecheck layers unit bench sysdeps benchdeps venv clean

demo: $(STAMP)
	$(BIN)/sso-gateway demo

test: sysdeps $(STAMP) $(NODE_STAMP) lint typecheck layers unit

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest

bench: sysdeps benchdeps $(STAMP) $(NODE_STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/oidc.py
	$(BIN)/python bench/saml.py
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/proxy_streams.py

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# npm packages of the test OpenID provider, exactly as locked; skipped (and the
# OIDC tests with it) where npm is missing
$(NODE_STAMP): $(OP_DIR)/package.json $(OP_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(OP_DIR) --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); \
	else echo "warning: npm not found: the OpenID Connect tests will be skipped" >&2; fi

# Installs the real peers when run as root on Debian/Ubuntu; otherwise says what is
# missing (their tests are then skipped with the reason, or fail under CI=true).
sysdeps:
	@sh scripts/install-system-packages.sh $(SYSTEM_PACKAGES)

benchdeps:
	@sh scripts/install-system-packages.sh $(BENCH_PACKAGES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(OP_DIR)/node_modules
