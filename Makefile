# One command each: `make demo` installs and runs the local deployment; `make test` installs
# and runs the whole test suite (what CI runs, via .ci/run).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck clean system-deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[ai,dev,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medshard demo

test: $(STAMP) system-deps
	$(BIN)/pytest -q tests

# DICOM peers (dcmtk, Orthanc) from Debian's packages, for the interoperability tests.
system-deps:
	@command -v storescu >/dev/null && command -v Orthanc >/dev/null || \
	  (command -v apt-get >/dev/null && (apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk orthanc orthanc-dicomweb >/dev/null) \
	   || echo "warning: could not install dcmtk/orthanc; their tests will be skipped")

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) medshard-demo
