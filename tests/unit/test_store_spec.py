"""One way to open a store (stores/spec.py, stores/opening.py): the options of a module or of the inventory, and the
refill job's command line, make the same StoreSpec; every bad option is refused while the spec is made; the store
opened from a spec keeps it, and its client is a constructor argument."""

from __future__ import annotations

import argparse
import re

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.defaults import DEFAULT_TABLE
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.defaults import STORE
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.defaults import STORES
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.opening import open_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.spec import StoreSpec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.spec import add_job_arguments
from tests.support.pool_imports import POOL

PLUGINS = POOL.parents[1]


@pytest.fixture(autouse=True)
def state_home(monkeypatch, tmp_path):
    """The user's default state directory, under tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "ec2spot"


# -- from the options ---------------------------------------------------------------------------------------------
def test_options_left_out_name_the_default_store_in_the_default_directory(state_home):
    spec = StoreSpec.from_options({"pool_name": "ci"})
    assert spec.kind == STORE
    assert spec == ("file", "ci", None, str(state_home), str(state_home / "ci.json"))


def test_store_dynamodb_names_the_default_table_and_the_default_directory(state_home):
    spec = StoreSpec.from_options({"pool_name": "ci", "store": "dynamodb", "dynamodb_table": None, "state_dir": None})
    assert spec == ("dynamodb", "ci", DEFAULT_TABLE, str(state_home), None)


def test_paths_are_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert StoreSpec.from_options({"pool_name": "ci", "state_dir": "s"}).pool_file == str(tmp_path / "s" / "ci.json")
    assert StoreSpec.from_options({"pool_name": "ci", "pool_file": "f.json", "state_dir": "s"}) == (
        "file", "ci", None, str(tmp_path), str(tmp_path / "f.json"))
    assert StoreSpec.from_options({"pool_name": "ci", "store": "dynamodb", "state_dir": "s"}).state_dir == str(
        tmp_path / "s")


def test_a_table_named_with_store_file_is_not_the_files_business():
    assert StoreSpec.from_options({"pool_name": "ci", "store": "file", "dynamodb_table": "x"}).table is None


@pytest.mark.parametrize("params, message", [
    ({"pool_name": ""}, "^pool_name is empty: name the pool explicitly"),
    ({"pool_name": None}, "^pool_name is empty: name the pool explicitly"),
    ({"pool_name": "ci", "state_dir": " "}, "^state_dir is empty: "),
    ({"pool_name": "ci", "pool_file": ""}, "^pool_file is empty: "),
    ({"pool_name": "ci", "dynamodb_table": "\t"}, "^dynamodb_table is empty: "),
    ({"pool_name": "../ci"}, "^pool_name '../ci' is not valid: use 1-64 letters"),
    ({"pool_name": "ci", "store": "dynamodb", "dynamodb_table": ""}, "^dynamodb_table is empty: "),
    ({"pool_name": "", "store": "dynamodb"}, "^pool_name is empty: "),
    ({"pool_name": None, "store": "dynamodb"}, "^pool_name None is not valid: "),
    ({"pool_name": "ci\n", "store": "dynamodb"}, "^pool_name 'ci\\\\n' is not valid: "),
    ({"pool_name": "ci", "store": "dynamodb", "dynamodb_table": "no"}, "^dynamodb_table 'no' is not a DynamoDB table"),
    ({"pool_name": "ci", "store": "dynamodb", "dynamodb_table": "a/b"}, "^dynamodb_table 'a/b' is not a DynamoDB"),
    ({"pool_name": "ci", "store": "dynamodb", "pool_file": "/x/ci.json"},
     "^pool_file /x/ci.json names a JSON state file, and store=dynamodb keeps the pool in DynamoDB table None: "),
    ({"pool_name": "ci", "store": "dynamodb", "pool_file": "/x/ci.json", "dynamodb_table": "t"},
     "^pool_file /x/ci.json .* DynamoDB table t: remove pool_file"),
])
def test_every_bad_option_is_refused_while_the_spec_is_made(params, message):
    with pytest.raises(InvalidRequest, match=message):
        StoreSpec.from_options(params)


def test_the_stores_refuse_what_the_spec_refuses():
    """The table and pool-name rules are the spec's, which the DynamoDB store's constructor applies as well."""
    for table, pool_name in (("no", "p"), ("ec2spot-pool", ""), ("ec2spot-pool", "-p")):
        with pytest.raises(InvalidRequest) as by_spec:
            StoreSpec.dynamodb(table, pool_name)
        with pytest.raises(InvalidRequest) as by_store:
            DynamoStore(object(), table, pool_name)
        assert by_store.value.message == by_spec.value.message


# -- the refill job's command line --------------------------------------------------------------------------------
def job_parser():
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    return parser


@pytest.mark.parametrize("params", [
    {"pool_name": "ci"},
    {"pool_name": "ci", "pool_file": "/srv/pools/ci.json"},
    {"pool_name": "ci", "store": "dynamodb"},
    {"pool_name": "ci", "store": "dynamodb", "dynamodb_table": "team.pools", "state_dir": "/srv/state"},
])
def test_spec_to_job_arguments_to_spec_gives_the_spec_back(params):
    spec = StoreSpec.from_options(params)
    assert StoreSpec.from_job_arguments(job_parser().parse_args(spec.job_arguments())) == spec


def test_the_job_arguments_are_the_flags_of_the_previous_version(state_home):
    """A job started by the previous version's get is recognised by its command line (jobcontrol)."""
    assert StoreSpec.from_options({"pool_name": "ci"}).job_arguments() == [
        "--state-file", str(state_home / "ci.json"), "--pool-name", "ci"]
    assert StoreSpec.from_options({"pool_name": "ci", "store": "dynamodb"}).job_arguments() == [
        "--dynamodb-table", DEFAULT_TABLE, "--pool-name", "ci", "--state-dir", str(state_home)]


# -- opening ------------------------------------------------------------------------------------------------------
def test_a_store_opened_from_a_spec_keeps_it_and_its_client(tmp_path):
    client = object()
    file_spec = StoreSpec.from_options({"pool_name": "ci", "state_dir": str(tmp_path)})
    dynamo_spec = StoreSpec.from_options({"pool_name": "ci", "store": "dynamodb", "state_dir": str(tmp_path)})
    file_store, dynamo_store = open_store(file_spec, client), open_store(dynamo_spec, client)
    assert isinstance(file_store, FileStore) and file_store.spec == file_spec
    assert file_store.path == str(tmp_path / "ci.json")
    assert isinstance(dynamo_store, DynamoStore) and dynamo_store.spec == dynamo_spec
    assert dynamo_store.client is client
    assert (dynamo_store.table, dynamo_store.directory) == (DEFAULT_TABLE, str(tmp_path))
    assert {file_spec.kind, dynamo_spec.kind} == set(STORES)


def test_a_dynamodb_store_is_never_opened_without_its_client():
    with pytest.raises(ValueError):
        open_store(StoreSpec.from_options({"pool_name": "ci", "store": "dynamodb"}))


def test_a_store_made_directly_keeps_the_spec_that_opens_it_again(tmp_path):
    store = FileStore(str(tmp_path / "p.json"), "p")
    assert open_store(store.spec).spec == store.spec
    dynamo = DynamoStore(object(), "t-1", "p", str(tmp_path))
    assert open_store(dynamo.spec, object()).spec == dynamo.spec


# -- one way ------------------------------------------------------------------------------------------------------
CONSTRUCTION = re.compile(r"\b(?:FileStore|DynamoStore)\(")
CLIENT_ASSIGNED = re.compile(r"\b(?!self\b)\w+\.client\s*=[^=]")


def _plugin_lines():
    for path in sorted(PLUGINS.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            yield path.relative_to(PLUGINS).as_posix(), number, line


def test_only_open_store_makes_a_store():
    """No caller in plugins/ builds a store by hand (the class lines themselves are definitions, not calls)."""
    found = ["%s:%d" % (name, number) for name, number, line in _plugin_lines()
             if CONSTRUCTION.search(line) and not line.lstrip().startswith("class ")
             and name != "module_utils/_pool/stores/opening.py"]
    assert found == []


def test_no_store_is_given_its_client_after_it_was_made():
    found = ["%s:%d" % (name, number) for name, number, line in _plugin_lines() if CLIENT_ASSIGNED.search(line)]
    assert found == []


def test_the_checks_above_see_what_they_look_for():
    """They would pass on a reader that saw nothing: today's opening.py makes both stores, and the seed's way of
    giving a client afterwards is seen."""
    opening = [line for name, number, line in _plugin_lines() if name == "module_utils/_pool/stores/opening.py"]
    assert sum(bool(CONSTRUCTION.search(line)) for line in opening) == 2
    assert CLIENT_ASSIGNED.search("    store.client = dynamodb_client(params)")
    assert not CLIENT_ASSIGNED.search("        self.client = client")
