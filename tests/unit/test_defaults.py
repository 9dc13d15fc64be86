"""Defaults stated once: each module's documented default is its argument spec's, and the argument specs take the
pool's defaults from module_utils (_pool/domain/defaults.py, launcher.DEFAULT_FALLBACK_ON), not from literals of their own."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import defaults
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import DEFAULT_FALLBACK_ON
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_INIT_WAIT_TIMEOUT
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_LEASE_TTL
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_MAX_SIZE
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_RECONCILE_WAIT_TIMEOUT

MODULES = ["spot_pool_get", "spot_pool_info", "spot_pool_init", "spot_pool_reconcile", "spot_pool_release",
           "spot_pool_terminate"]


class _SpecSeen(Exception):
    pass


def argument_spec(name, monkeypatch):
    """The argument spec that module `name` builds in main(), caught where it makes its module object."""
    module = importlib.import_module("ansible_collections.ec2spot.pool.plugins.modules." + name)

    def catch(argument_spec, **_kwargs):
        raise _SpecSeen(argument_spec)

    for factory in ("AnsibleModule", "AnsibleAWSModule"):
        if hasattr(module, factory):
            monkeypatch.setattr(module, factory, catch)
    with pytest.raises(_SpecSeen) as seen:
        module.main()
    return seen.value.args[0], yaml.safe_load(module.DOCUMENTATION)["options"]


@pytest.mark.parametrize("name", MODULES)
def test_every_documented_default_is_the_argument_specs(name, monkeypatch):
    spec, documented = argument_spec(name, monkeypatch)
    for option, doc in documented.items():
        assert option in spec, option
        assert doc.get("default") == spec[option].get("default"), option
        if "choices" in doc:
            assert list(doc["choices"]) == list(spec[option]["choices"]), option


def test_init_takes_the_pool_defaults_from_module_utils(monkeypatch):
    spec, documented = argument_spec("spot_pool_init", monkeypatch)
    assert spec["cooldown"]["default"] == defaults.COOLDOWN_SECONDS
    assert spec["orphan_grace"]["default"] == defaults.ORPHAN_GRACE_SECONDS
    assert spec["fallback_action"]["default"] == defaults.FALLBACK_ACTION
    assert spec["fallback_action"]["choices"] == list(defaults.FALLBACK_ACTIONS)
    assert spec["allocation_strategy"]["default"] == defaults.ALLOCATION_STRATEGY
    assert spec["allocation_strategy"]["choices"] == list(defaults.ALLOCATION_STRATEGIES)
    assert spec["max_size"]["default"] == DEFAULT_MAX_SIZE
    assert spec["wait_timeout"]["default"] == DEFAULT_INIT_WAIT_TIMEOUT
    # fallback_on has no default in the spec (None means the launcher's); its description lists every code.
    assert spec["fallback_on"].get("default") is None
    description = " ".join(documented["fallback_on"]["description"])
    listed = description[description.index("Defaults to"):]
    assert sorted(re.findall(r"C\(([A-Za-z.]+)\)", listed)) == sorted(DEFAULT_FALLBACK_ON)


def test_get_takes_the_lease_ttl_from_module_utils(monkeypatch):
    spec, _documented = argument_spec("spot_pool_get", monkeypatch)
    assert spec["lease_ttl"]["default"] == DEFAULT_LEASE_TTL


def test_reconcile_takes_its_wait_timeout_from_module_utils(monkeypatch):
    spec, _documented = argument_spec("spot_pool_reconcile", monkeypatch)
    assert spec["wait_timeout"]["default"] == DEFAULT_RECONCILE_WAIT_TIMEOUT


PLAYBOOKS = sorted((Path(__file__).resolve().parents[2] / "playbooks").glob("*.yml"))
DEFAULTED = re.compile(r"\|\s*default\((?P<value>[^)]*)\)")


def _module_options(playbook):
    """(task name, option, value) of every ec2spot.pool module task in a playbook."""
    for play in yaml.safe_load(playbook.read_text()) or []:
        for task in play.get("tasks") or []:
            for key, options in task.items():
                if key.startswith("ec2spot.pool.") and isinstance(options, dict):
                    for option, value in options.items():
                        yield task.get("name"), option, value


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda path: path.name)
def test_the_playbooks_leave_the_modules_defaults_to_the_modules(playbook):
    """A playbook variable that is not set must reach the module as 'not given' (default(omit)): a default written
    again in the playbook drifts from the module's own and makes two answers to 'what is the default?'."""
    restated = [(task, option, match.group("value"))
                for task, option, value in _module_options(playbook) if isinstance(value, str)
                for match in DEFAULTED.finditer(value) if match.group("value").split(",")[0].strip() != "omit"]
    assert restated == []


def test_the_playbook_check_reads_module_tasks():
    """The check above would pass on playbooks it cannot read: make sure it sees the options of every playbook."""
    assert all(list(_module_options(playbook)) for playbook in PLAYBOOKS
               if re.search(r"^\s+ec2spot\.pool\.spot_pool_\w+:", playbook.read_text(), re.M))
