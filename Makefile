# make demo / make test on a fresh machine: both create .venv and install the project first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-arm arm-root test-all lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# Byte-compiled now, as a wheel install on a device is: where PYTHONDONTWRITEBYTECODE is
	# set, every node process would otherwise compile the project again at each start.
	$(PY) -m compileall -q edge_swarm ledger_lite
	# Agents run with -OO (edge_swarm/site/runtime_env.py), whose .opt-2.pyc nobody else
	# writes: the modules an agent imports (the project, numpy, paho, the stdlib), here too.
	$(PY) -OO -m compileall -q -j0 -x '/tests?/' edge_swarm ledger_lite \
	  $$($(PY) -c 'import sysconfig, os; l = sysconfig.get_paths()["purelib"]; \
	  print(os.path.join(l, "numpy"), os.path.join(l, "paho"))')
	$(PY) -OO -m compileall -q -j0 -x '/(tests?|idlelib|tkinter|turtledemo|lib2to3|ensurepip|site-packages)/' \
	  $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') \
	  || echo "the stdlib is not writable here: agents compile what they import of it at start"
	touch $(STAMP)

demo: $(STAMP)   ## the standard workload; then a head fine-tuned over a backbone made from public data
	$(VENV)/bin/edge-swarm demo
	$(VENV)/bin/edge-swarm demo --backbone auto --engine tflite --workdir demo-run/backbone

test: $(STAMP)
	$(PY) -m pytest -q

# An emulated Raspberry Pi (Debian 12 arm64 under qemu-user): bundles installed offline, its
# agent in a swarm of x86 ones (tests/test_arm*.py). Needs root and Debian's qemu-user-static,
# binfmt-support and debootstrap (.ci/run installs them); the arm64 root is built on first use
# and cached in $$EDGE_SWARM_CACHE (default ~/.cache/edge-swarm), as are the wheels.
test-arm: $(STAMP)
	$(PY) -m pytest -q -m arm $(wildcard tests/test_arm*.py)

arm-root: $(STAMP)   ## build the cached arm64 root again from Debian's registry
	$(PY) -m tests.arm_root --rebuild

test-all: $(STAMP)   ## including the slow scale runs that CI skips
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/bench_swarm.py

clean:
	rm -rf demo-run .pytest_cache .ruff_cache .hypothesis
