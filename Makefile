# athena-sandbox. The two commands of the README: `make demo` and `make test`.
# Everything runs from a project-local virtualenv (.venv). scripts/setup.sh installs and starts
# what the machine lacks (as root; as another user it names the one command to run as root).
# Each set-up step that takes more than a few seconds prints one [setup] line; the rest is quiet.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help setup setup-demo fresh-check venv docker-up gvisor postgres-up images node-tools demo doctor test test-unit test-integration test-postgres lint bench sweep clean \
	cluster-up cluster-down cluster-test diagram

help:
	@echo "make demo              set up everything and run examples under the three policies"
	@echo "make setup             install and start what make test needs (root, once; idempotent)"
	@echo "make fresh-check       both commands on a throwaway clean Debian 12 with its own engine"
	@echo "make test              all tests, integration tests against the real Docker engine included"
	@echo "make test-unit         unit tests only (no Docker, no PostgreSQL)"
	@echo "make test-postgres     the memory store tests on PostgreSQL (starts it on 127.0.0.1)"
	@echo "make security          hostile code (RedCode-Exec and more) judged by the host's state"
	@echo "make lint              ruff and mypy"
	@echo "make images            build the sandbox images (only what changed)"
	@echo "make bench             latency, throughput, HumanEval and memory benchmarks, side by side with docker run, epicbox and the host"
	@echo "make docker-up         install and start a Docker engine if none answers"
	@echo "make doctor            which isolation modes work here, and how to enable the others"
	@echo "make gvisor            install gVisor's runsc and register it with the Docker engine"
	@echo "make postgres-up       install and start PostgreSQL on 127.0.0.1 for the store tests"
	@echo "make diagram           render docs/architecture.svg from docs/architecture.dot (Graphviz)"
	@echo "make cluster-up        three nodes behind HAProxy on 127.0.0.1:8800, one PostgreSQL (prints ATHENA_URL, ATHENA_TOKEN)"
	@echo "make cluster-down      stop the cluster's HAProxy and nodes; nothing of theirs left running"
	@echo "make cluster-test      cluster-up, the contract, tenant-isolation and load tests through HAProxy, cluster-down"

# The machine: Debian packages, the Docker engine, runsc, PostgreSQL (scripts/setup.sh says which).
setup:
	@bash scripts/setup.sh test

setup-demo:
	@bash scripts/setup.sh demo

# Both commands in a throwaway privileged container with its own engine, from a clean clone
# (FRESH_SRC=dir to check a directory instead); docs/fresh-machine.md has what it runs and times.
fresh-check:
	bash scripts/fresh-check.sh $(FRESH_SRC)

$(STAMP): pyproject.toml
	@echo "[setup] creating .venv and installing the project and its dev tools with pip (once; again when pyproject.toml changes)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip
	@$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

docker-up:
	@bash scripts/ensure-docker.sh

# The srt fallback: Anthropic's Sandbox Runtime from npm, pinned in package-lock.json.
node_modules/.package-lock.json: package.json package-lock.json
	@echo "[setup] installing the srt mode's Node tools with npm ci (once; again when package-lock.json changes)"
	@npm ci --no-audit --no-fund --loglevel=error >/dev/null

node-tools: node_modules/.package-lock.json

doctor: venv
	$(BIN)/athena-sandbox doctor

# gVisor: Debian's runsc, registered with dockerd as runsc and runsc-nonet (ptrace platform).
gvisor: docker-up
	bash scripts/ensure-runsc.sh

# Quiet unless it fails: its progress goes to .venv/images.log.
images: venv docker-up
	@echo "[setup] building the sandbox images (once; later runs rebuild only what changed)"
	@$(BIN)/athena-sandbox images >$(VENV)/images.log 2>&1 || { tail -n 40 $(VENV)/images.log; exit 1; }

demo: setup-demo images
	$(BIN)/athena-sandbox demo

# The embeddings extra (torch, CPU build from local files) so the hybrid recall is tested too.
$(VENV)/.embeddings: $(STAMP)
	@echo "[setup] installing the embeddings extra (torch, CPU build) with pip (once)"
	@$(BIN)/pip install --quiet -e '.[dev,embeddings]'
	@touch $(VENV)/.embeddings

# PostgreSQL on 127.0.0.1 for the memory store tests (role athena, database athena_test); root.
postgres-up:
	bash scripts/ensure-postgres.sh

test: setup images node-tools $(VENV)/.embeddings
	$(BIN)/pytest -q --durations=25

test-unit: venv
	$(BIN)/pytest -q -m "not postgres" tests/unit

test-postgres: venv postgres-up
	$(BIN)/pytest -q -m postgres tests/unit tests/integration/test_memory_records.py

test-integration: images node-tools
	$(BIN)/pytest -q tests/integration

# Hostile code judged by the state of the host (tests/security); prints the case x mode table
# and writes benchmarks/results/security.md. ci: the whole RedCode-Exec corpus on runc and in
# the fast mode, two snippets per scenario on the other modes; full: everything on every mode.
.PHONY: security security-full
security: images node-tools
	ATHENA_SECURITY_SCOPE=ci $(BIN)/pytest -q -m security tests/security

security-full: images node-tools
	ATHENA_SECURITY_SCOPE=full $(BIN)/pytest -q -m security tests/security

lint: venv
	$(BIN)/ruff check orchestrator memory_store athena tests benchmarks
	$(BIN)/ruff format --check orchestrator memory_store athena tests benchmarks
	$(BIN)/mypy

bench: setup images node-tools postgres-up
	$(BIN)/python benchmarks/bench_latency.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python -m benchmarks.bench_sessions
	$(BIN)/python -m benchmarks.bench_fast
	$(BIN)/python -m benchmarks.bench_humaneval
	$(BIN)/python -m benchmarks.bench_cluster

# The cluster on one machine (scripts/cluster.sh): PostgreSQL, three nodes sharing this
# machine's engine, HAProxy in front on 127.0.0.1:$${CLUSTER_PORT:-8800}. cluster-test always
# ends with cluster-down, and fails if any of its tests did.
cluster-up: setup images
	@bash scripts/cluster.sh up

cluster-down:
	@bash scripts/cluster.sh down

cluster-test: setup images
	bash scripts/cluster.sh test

# The cluster's picture (docs/cluster.md); a unit test checks the committed SVG is current.
diagram:
	dot -Tsvg docs/architecture.dot -o docs/architecture.svg

sweep: venv
	$(BIN)/athena-sandbox sweep

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache benchmarks/results
