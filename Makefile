# ec2spot.pool: `make demo` runs the main job against a local AWS emulator, `make test` runs every test.
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

.PHONY: setup demo test unit integration sanity lint bench clean molecule unit-security nspawn-tools

setup: $(VENV)/.installed $(COLLECTION_LINK)

$(VENV)/.installed: $(REQUIREMENTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pipefail: a failed install must stop here; grep only hides the mirror's noise about absent index folders.
	set -o pipefail; $(BIN)/pip install -q -r requirements-test.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -c 'import ansible_collections.amazon.aws, boto3, moto, pytest' # fail here, not later
	touch $@

# Ansible finds this checkout as the collection ec2spot.pool through ansible.cfg's collections_path.
$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

demo: setup
	$(BIN)/python scripts/demo.py

test: setup
	$(BIN)/python -m pytest -p no:cacheprovider tests worker/tests
	$(MAKE) --no-print-directory sanity lint unit-security molecule

unit: setup
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit

integration: setup
	$(BIN)/python -m pytest -p no:cacheprovider tests/integration

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

molecule: setup nspawn-tools
	$(BIN)/molecule test -s drain_worker || { extensions/molecule/nspawn/machine.sh down; exit 1; }
	extensions/molecule/nspawn/machine.sh down

bench: setup
	$(BIN)/python bench/get_latency.py

clean:
	rm -rf build tests/output .pytest_cache
