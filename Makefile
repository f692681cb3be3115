# The README's two commands: `make demo` and `make test`. Both set everything up first.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
TORCH_CPU = torch==2.13.0
# The demo runs on this machine (a login node's cluster would queue it behind everyone's jobs):
# `make demo EXECUTOR=slurm` (or auto) sends it to the cluster instead.
EXECUTOR ?= local

.PHONY: setup demo test lint bench cluster-start cluster-stop clean

setup: $(VENV)/.installed

# Where no NVIDIA GPU answers, install torch's CPU wheel first (small; on these machines it lies on
# disk) so that the project's torch range does not pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! nvidia-smi -L >/dev/null 2>&1; then $(PY) -m pip install -q $(TORCH_CPU) || \
	  $(PY) -m pip install -q $(TORCH_CPU) --index-url https://download.pytorch.org/whl/cpu; fi
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/batch-ast submit manifests/demo.csv --executor $(EXECUTOR) --wait
	$(VENV)/bin/batch-ast report results
	$(PY) -c "import batch_ast; print(batch_ast.load_index('results')[['name','status','optimizer','iterations_run','final_total','output']].to_string())"

# As root: starts the three-node SLURM test cluster (slurm/start.sh --nodes 3) and installs Debian's
# chromium for the browser test; elsewhere those tests skip with a reason (in CI they fail instead).
# As root, the tests run as an unprivileged user at umask 002 (tests/as-user.sh creates it), but
# for those marked root_only; BATCH_AST_TEST_AS_ROOT=1 runs them all as root.
test: setup
	if [ "$$(id -u)" = 0 ]; then bash slurm/start.sh --nodes 3; else echo "not root: SLURM tests will skip"; fi
	if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); fi
	$(VENV)/bin/ruff check batch_ast tests benchmarks
	if [ "$$(id -u)" = 0 ] && [ -z "$$BATCH_AST_TEST_AS_ROOT" ]; then bash tests/as-user.sh $(PY); \
	  else $(PY) -m pytest -ra; fi

lint: setup
	$(VENV)/bin/ruff check batch_ast tests benchmarks

# The quick benchmark (small sizes, a few minutes); `python -m benchmarks.bench` for everything.
bench: setup
	$(PY) -m benchmarks.bench --quick

cluster-start:
	bash slurm/start.sh

cluster-stop:
	bash slurm/stop.sh

clean:
	rm -rf results/runs results/submitit results/submissions results/*.parquet
