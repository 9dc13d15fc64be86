"""Imports run one way: modules -> operations -> the refill / the stores / the launcher -> the AWS calls -> the pure
rules -> plain values. docs/architecture.md draws the same layers; this test keeps the code and the picture equal.

Every import counts, also one inside a function (Ansible's payload builder reads those too)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "_pool"
MODULES_DIR = PACKAGE.parents[1] / "modules"

# Lowest first. A module may import only modules of lower layers.
LAYERS = [
    ("values", {"defaults", "errors", "timefmt", "identity"}),
    ("entries", {"entries"}),
    ("rules", {"store", "refill_plan", "quotas"}),  # pure: the claim rule, decide/settle, the vCPU quotas
    ("aws request", {"signing"}),  # one signed request without a service model (credentials, endpoint, SigV4)
    ("aws", {"connection", "ec2", "ec2query", "dynamoquery"}),
    ("parts", {"state", "ending", "launcher"}),  # the file store, ending instances, launching
    ("shared store", {"dynamo"}),  # the DynamoDB store: reuses the file store's schema check and local-file rules
    ("refill", {"refill", "jobcontrol"}),  # the pass and its job; starting and stopping the job
    ("operations", {"operations"}),
    ("module glue", {"common", "refill_payload"}),
]
LAYER_OF = {name: index for index, (_label, names) in enumerate(LAYERS) for name in names}
IMPORT_RE = re.compile(r"^\s*from \.(?P<module>\w+) import|^\s*from \. import (?P<names>[\w, ]+)", re.M)


def imports_of(path):
    found = set()
    for match in IMPORT_RE.finditer(path.read_text(encoding="utf-8")):
        if match.group("module"):
            found.add(match.group("module"))
        else:
            found.update(name.strip() for name in match.group("names").split(","))
    return found


def package_modules():
    return sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def test_every_module_has_a_layer():
    assert [name for name in package_modules() if name not in LAYER_OF] == []


@pytest.mark.parametrize("name", package_modules())
def test_a_module_imports_only_lower_layers(name):
    upward = sorted(dep for dep in imports_of(PACKAGE / (name + ".py"))
                    if dep in LAYER_OF and LAYER_OF[dep] >= LAYER_OF[name])
    assert upward == [], "%s (layer %s) imports %s" % (name, LAYERS[LAYER_OF[name]][0], upward)


def test_the_import_reader_sees_function_level_imports():
    """The check above would pass on a reader that saw nothing."""
    assert {"ec2", "launcher", "refill", "identity"} <= imports_of(PACKAGE / "operations.py")


@pytest.mark.parametrize("module", sorted(path.name for path in MODULES_DIR.glob("spot_pool_*.py")))
def test_the_modules_reach_the_pool_through_the_operations(module):
    """A module is thin: it calls the operations (and the glue that builds a store and a client), never a store,
    the launcher, the refill or an EC2 call directly."""
    text = (MODULES_DIR / module).read_text(encoding="utf-8")
    used = set(re.findall(r"module_utils\._pool\.(\w+) import", text))
    # connection, ec2query and dynamoquery build the clients the operations are given (get's EC2 check is ec2query's
    # signed request; its DynamoDB client, with the DynamoDB store, dynamoquery's).
    allowed = {"operations", "common", "connection", "ec2query", "dynamoquery", "defaults", "errors", "refill_payload"}
    assert used and used <= allowed, sorted(used - allowed)
