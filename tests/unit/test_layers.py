"""The tree shows the architecture, and imports run one way (docs/architecture.md draws the same picture):

    modules -> _pool (operations, refill, jobcontrol, launcher, ending, common) -> stores/ -> _aws/ -> domain/

- `domain/`: the pool's rules as plain values; imports nothing outside domain/.
- `_aws/`: AWS access, private to the collection; imports domain/ only.
- `stores/`: where a pool lives; imports domain/ and _aws/. The two stores are siblings: neither imports the other.
- the top: the operations and the parts that act; may import everything below.

No circle at any depth, counting every import (one inside a function or under TYPE_CHECKING too: Ansible's payload
builder reads those as well)."""

from __future__ import annotations

import re

import pytest

from tests.support.pool_imports import POOL
from tests.support.pool_imports import imports_of
from tests.support.pool_imports import pool_modules

MODULES_DIR = POOL.parents[1] / "modules"
TOP = ""  # the folder name of the top layer's modules

# Which folders a folder's modules may import (its own included).
MAY_IMPORT = {
    "domain": {"domain"},
    "_aws": {"_aws", "domain"},
    "stores": {"stores", "_aws", "domain"},
    TOP: {TOP, "stores", "_aws", "domain"},
}


def folder_of(name):
    return name.split(".")[0] if "." in name else (name if name in MAY_IMPORT else TOP)


def test_every_module_sits_in_a_known_folder():
    assert [name for name in pool_modules() if folder_of(name) not in MAY_IMPORT] == []
    assert {folder_of(name) for name in pool_modules()} == set(MAY_IMPORT)


@pytest.mark.parametrize("name", pool_modules())
def test_a_module_imports_only_what_its_folder_may(name):
    wrong = sorted(dep for dep in imports_of(name) if folder_of(dep) not in MAY_IMPORT[folder_of(name)])
    assert wrong == [], "%s (in %r) imports %s" % (name, folder_of(name) or "the top", wrong)


def test_the_stores_are_siblings():
    """Neither store's module imports the other's: what both need lives in base.py, localfiles.py or the domain."""
    assert "stores.filestore" not in imports_of("stores.dynamodb")
    assert "stores.dynamodb" not in imports_of("stores.filestore")


def test_no_import_circle_at_any_depth():
    graph = {name: imports_of(name) for name in pool_modules()}
    done, path = set(), []

    def visit(name):
        assert name not in path, "import circle: %s" % " -> ".join(path[path.index(name):] + [name])
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph.get(name, ())):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_import_reader_sees_what_is_there():
    """The checks above would pass on a reader that saw nothing: function-level, relative at two levels, absolute."""
    assert {"_aws.ec2", "launcher", "refill", "domain.identity"} <= imports_of("operations")
    assert {"domain.errors", "stores.base", "stores.localfiles"} <= imports_of("stores.dynamodb")
    assert imports_of("domain.claim") == {"domain.entries", "domain.timefmt"}


def test_the_aws_files_say_they_are_private():
    for path in sorted((POOL / "_aws").glob("*.py")):
        assert "PRIVATE to the ec2spot.pool collection" in path.read_text(encoding="utf-8"), path.name


@pytest.mark.parametrize("module", sorted(path.name for path in MODULES_DIR.glob("spot_pool_*.py")))
def test_the_modules_reach_the_pool_through_the_operations(module):
    """A module is thin: it calls the operations (and the glue that builds a store and a client), never a store,
    the launcher, the refill or an EC2 call directly."""
    text = (MODULES_DIR / module).read_text(encoding="utf-8")
    used = set()
    for prefix, name in re.findall(r"module_utils\._pool((?:\.\w+)*) import (\w+)", text):
        prefix = prefix.strip(".")
        used.add(prefix if prefix and prefix not in MAY_IMPORT else ".".join(filter(None, (prefix, name))))
    # connection, ec2query and dynamoquery build the clients the operations are given (get's EC2 check is ec2query's
    # signed request; its DynamoDB client, with the DynamoDB store, dynamoquery's).
    allowed = {"operations", "common", "_aws.connection", "_aws.ec2query", "_aws.dynamoquery", "domain.defaults",
               "domain.errors", "refill_payload"}
    assert used and used <= allowed, sorted(used - allowed)


def test_no_caller_reaches_around_the_store_interface():
    """Stores and leases are asked through their interface (stores/base.py), never probed for what kind they are."""
    probes = re.compile(r"\b(?:getattr|hasattr)\((?:self\.)?(?:store|lock|lease|self\.lock|self\.store)\b")
    found = ["%s:%d" % (path.relative_to(POOL), number)
             for path in sorted(POOL.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if probes.search(line)]
    assert found == []


def test_every_store_and_lease_implements_the_whole_interface():
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import base  # pylint: disable=import-outside-toplevel
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import dynamodb  # pylint: disable=import-outside-toplevel
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import filestore  # pylint: disable=import-outside-toplevel

    def abstract(cls):
        return {name for name, value in vars(cls).items()
                if callable(value) and "raise NotImplementedError" in (value.__doc__ or "") + _source(value)}

    for interface, implementations in ((base.PoolStore, (filestore.FileStore, dynamodb.DynamoStore)),
                                       (base.RefillLease, (filestore._RefillLock, dynamodb._DynamoLease))):
        for cls in implementations:
            assert issubclass(cls, interface)
            missing = sorted(name for name in abstract(interface) if getattr(cls, name) is getattr(interface, name))
            assert missing == [], "%s does not implement %s" % (cls.__name__, missing)


def _source(function):
    import inspect  # pylint: disable=import-outside-toplevel

    return inspect.getsource(function)
