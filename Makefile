# One command each: `make demo` installs and runs the local deployment; `make test` installs
# and runs the whole test suite (what CI runs, via .ci/run).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck clean system-deps web

# The browser UI (web/, Vite + TypeScript) is built with this machine's Node.js (20 or later)
# into the package, where `medshard serve` finds it; rebuilt only when web/ has changed.
WEB_DIST := src/medshard/web_dist
WEB_STAMP := $(WEB_DIST)/.built
WEB_SOURCES := $(shell find web -path web/node_modules -prune -o -type f -print 2>/dev/null)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[ai,dev,ray]"
	touch $(STAMP)

$(WEB_STAMP): $(WEB_SOURCES)
	@command -v npm >/dev/null || { echo "error: Node.js 20+ with npm is needed to build the web UI (web/)"; exit 1; }
	cd web && npm ci --no-audit --no-fund && npm run build
	touch $(WEB_STAMP)

web: $(WEB_STAMP)

install: $(STAMP) $(WEB_STAMP)

demo: $(STAMP) $(WEB_STAMP)
	$(BIN)/medshard demo

test: $(STAMP) $(WEB_STAMP) system-deps
	$(BIN)/pytest -q tests

# DICOM peers (dcmtk, Orthanc) from Debian's packages, for the interoperability tests,
# Debian's chromium for the browser tests (Playwright drives it; it never downloads a browser),
# and iptables to cut a storage node off the network in the fault tests (as root).
system-deps:
	@command -v storescu >/dev/null && command -v Orthanc >/dev/null && command -v chromium >/dev/null \
	  && command -v iptables >/dev/null || \
	  (command -v apt-get >/dev/null && (apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk orthanc orthanc-dicomweb chromium iptables >/dev/null) \
	   || echo "warning: could not install dcmtk/orthanc/chromium/iptables; their tests will be skipped")

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) medshard-demo $(WEB_DIST) web/node_modules test-artifacts
