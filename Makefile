# Two commands do all set-up on a fresh machine:
#   make demo   - emulator, Redis, two sidecars and a mixed-priority burst, with a summary table
#   make test   - every test: unit, real redis-server, real kube-apiserver + etcd (built once, cached)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint golden bench testground sysdeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP) sysdeps
	$(VENV)/bin/o1pool demo

# System packages the tests use: redis-server from Debian.
sysdeps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }

testground:
	bash hack/kube-testground.sh build

test: $(STAMP) sysdeps testground
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Regenerate golden files (rendered sidecar config, injected pods) after an intended change.
golden: $(STAMP)
	O1POOL_UPDATE_GOLDEN=1 $(PY) -m pytest -q tests -k golden

bench: $(STAMP) sysdeps
	$(PY) -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/o1pool bench --plot bench/out/bench.png

clean:
	rm -rf $(VENV) build *.egg-info
