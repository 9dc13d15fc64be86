# ec2spot.pool: `make demo` runs the main job against a local AWS emulator (`make demo-shared`: with two controllers
# sharing a DynamoDB table), `make test` runs every test.
# Everything is installed into .venv from this repository's own requirements files.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
COLLECTION_LINK := build/collections/ansible_collections/ec2spot/pool
REQUIREMENTS := requirements.txt requirements-test.txt worker/pyproject.toml
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# The pytest runs spread their tests over PYTEST_WORKERS processes (pytest-xdist; 0 runs them in this process).
# Each process starts its own moto server and fault proxy on free ports and has its own tmp_path, so tests share
# no port, file or process. Chosen by measurement on 2 cores (README, Development): the tests mostly wait on
# ansible-playbook children and the emulator, so more processes than cores still pay.
PYTEST_WORKERS ?= 4
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider -n $(PYTEST_WORKERS)
# What `make pytest` runs; tests/unit/test_make.py points it at an empty folder.
TEST_PATHS ?= tests worker/tests

.PHONY: setup demo demo-shared test pytest unit integration sanity lint bench bench-store clean molecule unit-security nspawn-tools \
	mutation

setup: $(VENV)/.installed $(COLLECTION_LINK)

$(VENV)/.installed: $(REQUIREMENTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pipefail: a failed install must stop here; grep only hides the mirror's noise about absent index folders.
	set -o pipefail; $(BIN)/pip install -q -r requirements-test.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -c 'import ansible_collections.amazon.aws, boto3, moto, pytest, xdist' # fail here, not later
	touch $@

# Ansible finds this checkout as the collection ec2spot.pool through ansible.cfg's collections_path.
$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

demo: setup
	$(BIN)/python scripts/demo.py

# The same cycle with two controllers (two HOME and state directories) sharing one DynamoDB table on the emulator.
demo-shared: setup
	$(BIN)/python scripts/demo_shared.py

test: pytest
	$(MAKE) --no-print-directory sanity lint unit-security molecule

# Every pytest exit code but 0 fails the target, 5 (no test collected) included: a run that tested nothing must
# not pass. tests/unit/test_make.py keeps it so.
pytest: setup
	$(PYTEST) $(TEST_PATHS)

unit: setup
	$(PYTEST) tests/unit

integration: setup
	$(PYTEST) tests/integration

sanity: setup
	$(BIN)/python scripts/sanity.py

lint: setup
	$(BIN)/ansible-lint --profile production --offline

# The drain_worker role's systemd unit: systemd-analyze verify, and the sandbox score (fails above 2.0).
unit-security: setup
	scripts/unit_security.sh

# The drain_worker role on a real systemd: a cached debootstrap bookworm rootfs booted with systemd-nspawn in its
# own network namespace (extensions/molecule/). Needs root. The container, namespace and veth go away even when
# the scenario fails (molecule's destroy, then machine.sh down as a last resort).
nspawn-tools:
	@command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null && command -v ip >/dev/null || \
	  { apt-get install -y -q systemd-container debootstrap iproute2 || \
	    { apt-get update -q && apt-get install -y -q systemd-container debootstrap iproute2; }; }

# drain_worker_sqs then runs the role with the SQS queue against a moto server on the host end of its own veth;
# its last resort also stops that server (emulator.py cleanup: machine.sh down with the scenario's names, then moto).
molecule: setup nspawn-tools
	$(BIN)/molecule test -s drain_worker || { extensions/molecule/nspawn/machine.sh down; exit 1; }
	extensions/molecule/nspawn/machine.sh down
	$(BIN)/molecule test -s drain_worker_sqs || { $(BIN)/python extensions/molecule/drain_worker_sqs/emulator.py cleanup; exit 1; }
	$(BIN)/python extensions/molecule/drain_worker_sqs/emulator.py cleanup

# Mutation testing of the pure rules (not part of `make test`; docs/mutation.md): mutmut changes one operator or
# constant at a time in module_utils/_pool's pure modules and runs their plain-value unit tests ([tool.mutmut] in
# pyproject.toml) against each change; scripts/mutation_score.py then fails when a module's tests let more than 5 %
# of its mutants live. It runs in build/mutation, where ansible_collections/ec2spot/pool links to this checkout,
# so that the mutated copies keep the module names the tests import. Each run starts from fresh copies.
MUTATION_DIR := build/mutation
mutation: setup
	rm -rf $(MUTATION_DIR)/mutants
	mkdir -p $(MUTATION_DIR)/ansible_collections/ec2spot
	ln -sfn ../../../.. $(MUTATION_DIR)/ansible_collections/ec2spot/pool
	ln -sfn ../../tests $(MUTATION_DIR)/tests
	ln -sfn ../../pyproject.toml $(MUTATION_DIR)/pyproject.toml
	cd $(MUTATION_DIR) && $(BIN)/mutmut run --max-children $$(nproc)
	cd $(MUTATION_DIR) && $(BIN)/python $(abspath scripts/mutation_score.py)

bench: setup
	$(BIN)/python bench/get_latency.py

# Hand-out throughput, claim latency and DynamoDB requests per hand-out, per store (bench/README.md).
bench-store: setup
	$(BIN)/python bench/store_claims.py

clean:
	rm -rf build tests/output .pytest_cache
