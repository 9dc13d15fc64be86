"""The ec2spot.pool.pool inventory plugin, run the way users run it: `ansible-inventory -i <file>.pool.yml`.

State files are written by the tests in the collection's schema (design.md section 3); the tag path asks the
session's moto server. The addresses moto hands out are only compared as data, never contacted.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.ansible import BIN, REPO, ansible_env
from tests.support.moto import REGION
from tests.support.pool_entries import pool_entry

LAUNCH = {"image_id": "ami-12345678", "instance_types": ["t3.micro"], "availability_zones": ["us-east-1a"]}


def entry(instance_id, ip, private_ip, kind="spot", zone="us-east-1a", **extra):
    # The addresses are what the inventory's reading is tested on: exactly the values given.
    return pool_entry(instance_id, ready=False, kind=kind, availability_zone=zone, ip=ip, private_ip=private_ip,
                      **extra)


def write_pool(state_dir: Path, pool_name: str, instances=(), leases=(), pool_id=None) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / f"{pool_name}.json"
    state = {"version": 1, "pool_name": pool_name, "target_size": 3, "launch": LAUNCH,
             "instances": list(instances), "leases": list(leases),
             "refill": {"pid": None, "started_at": None, "last_error": None}}
    if pool_id:
        state["pool_id"] = pool_id
    path.write_text(json.dumps(state))
    path.chmod(0o600)
    return path


def inventory(tmp_path: Path, config: dict, env: dict | None = None, name: str = "test.pool.yml",
              fail_unparsed: bool = True) -> subprocess.CompletedProcess:
    source = tmp_path / name
    source.write_text(yaml.safe_dump(dict({"plugin": "ec2spot.pool.pool"}, **config)))
    extra = {"ANSIBLE_INVENTORY_UNPARSED_FAILED": "1" if fail_unparsed else "0",
             "ANSIBLE_INVENTORY_ENABLED": "ec2spot.pool.pool"}
    return subprocess.run([str(BIN / "ansible-inventory"), "-i", str(source), "--list"], cwd=REPO,
                          env=ansible_env({**extra, **(env or {})}), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def plain(value):
    """ansible-inventory marks strings from an inventory source as never to be templated ({"__ansible_unsafe":
    ...}); the tests compare the values themselves."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def listing(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return plain(json.loads(proc.stdout))


def group_hosts(data: dict, group: str) -> set[str]:
    return set(data.get(group, {}).get("hosts", []))


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


def test_groups_and_hostvars_from_the_state_file(tmp_path, state_dir):
    write_pool(state_dir, "ci",
               instances=[entry("i-spot1", "198.51.100.1", "10.0.0.1"),
                          entry("i-fall1", "198.51.100.2", "10.0.0.2", kind="fallback", zone="us-east-1b"),
                          entry("i-pending", None, None)],
               leases=[entry("i-lease1", "198.51.100.3", "10.0.0.3", leased_at="2026-11-22T11:00:00Z")])
    data = listing(inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir)}))

    assert group_hosts(data, "ec2spot_pool_ci") == {"i-spot1", "i-fall1", "i-lease1"}
    assert group_hosts(data, "ec2spot_spot") == {"i-spot1", "i-lease1"}
    assert group_hosts(data, "ec2spot_fallback") == {"i-fall1"}
    assert group_hosts(data, "ec2spot_leased") == {"i-lease1"}
    assert group_hosts(data, "ec2spot_ready") == {"i-spot1", "i-fall1"}
    hostvars = data["_meta"]["hostvars"]
    assert "i-pending" not in hostvars  # no address yet: nothing to connect to
    assert hostvars["i-lease1"]["ansible_host"] == "198.51.100.3"
    assert hostvars["i-lease1"]["ec2spot_leased"] is True
    assert hostvars["i-lease1"]["ec2spot_leased_at"] == "2026-11-22T11:00:00Z"
    assert hostvars["i-fall1"] == {
        "ansible_host": "198.51.100.2", "ec2spot_pool": "ci", "ec2spot_instance_id": "i-fall1",
        "ec2spot_type": "fallback", "ec2spot_leased": False, "ec2spot_public_ip": "198.51.100.2",
        "ec2spot_private_ip": "10.0.0.2", "ec2spot_availability_zone": "us-east-1b",
        "ec2spot_instance_type": "t3.micro", "ec2spot_launched_at": "2026-11-22T10:00:00Z",
    }


def test_private_address_and_pending_instances(tmp_path, state_dir):
    write_pool(state_dir, "ci", instances=[entry("i-a", "198.51.100.1", "10.0.0.1"),
                                           entry("i-pending", None, None)])
    data = listing(inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir), "address": "private",
                                        "include_pending": True}))
    hostvars = data["_meta"]["hostvars"]
    assert hostvars["i-a"]["ansible_host"] == "10.0.0.1"
    assert "ansible_host" not in hostvars["i-pending"]
    assert group_hosts(data, "ec2spot_pending") == {"i-pending"}
    assert group_hosts(data, "ec2spot_ready") == {"i-a"}


def test_default_state_dir_follows_xdg_state_home(tmp_path):
    write_pool(tmp_path / "xdg" / "ec2spot", "default", instances=[entry("i-a", "198.51.100.1", "10.0.0.1")])
    data = listing(inventory(tmp_path, {}, env={"XDG_STATE_HOME": str(tmp_path / "xdg")}))
    assert group_hosts(data, "ec2spot_pool_default") == {"i-a"}


def test_pool_file_option_and_safe_group_names(tmp_path):
    path = write_pool(tmp_path / "elsewhere", "nightly-ci.v2", instances=[entry("i-a", "198.51.100.1", "10.0.0.1")])
    data = listing(inventory(tmp_path, {"pool_name": "nightly-ci.v2", "pool_file": str(path),
                                        "group_prefix": "spotpool_"}))
    assert group_hosts(data, "spotpool_pool_nightly_ci_v2") == {"i-a"}
    assert data["_meta"]["hostvars"]["i-a"]["ec2spot_pool"] == "nightly-ci.v2"


def test_constructed_options_apply(tmp_path, state_dir):
    write_pool(state_dir, "ci", instances=[entry("i-a", "198.51.100.1", "10.0.0.1", zone="us-east-1c")])
    data = listing(inventory(tmp_path, {
        "pool_name": "ci", "state_dir": str(state_dir),
        "keyed_groups": [{"key": "ec2spot_availability_zone", "prefix": "az"}],
        "compose": {"worker_url": "'http://' ~ ansible_host ~ ':8080'"},
    }))
    assert group_hosts(data, "az_us_east_1c") == {"i-a"}
    assert data["_meta"]["hostvars"]["i-a"]["worker_url"] == "http://198.51.100.1:8080"


def test_empty_pool_lists_no_host(tmp_path, state_dir):
    write_pool(state_dir, "ci")
    data = listing(inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir)}))
    assert data["_meta"]["hostvars"] == {}
    assert group_hosts(data, "ec2spot_pool_ci") == set()


def test_unknown_pool_is_a_clear_error(tmp_path, state_dir):
    write_pool(state_dir, "ci", instances=[entry("i-a", "198.51.100.1", "10.0.0.1")])
    proc = inventory(tmp_path, {"pool_name": "nope", "state_dir": str(state_dir)})
    assert proc.returncode != 0
    assert "pool 'nope' is unknown" in proc.stderr
    assert str(state_dir / "nope.json") in proc.stderr
    # Looking for a pool must not create anything next to the real ones.
    assert sorted(p.name for p in state_dir.iterdir()) == ["ci.json"]


def test_unknown_pool_without_strict_parsing_is_a_warning_and_no_hosts(tmp_path, state_dir):
    proc = inventory(tmp_path, {"pool_name": "nope", "state_dir": str(state_dir)}, fail_unparsed=False)
    assert proc.returncode == 0
    assert "pool 'nope' is unknown" in proc.stderr
    assert plain(json.loads(proc.stdout))["_meta"]["hostvars"] == {}


def test_corrupt_state_file_is_reported_and_kept(tmp_path, state_dir):
    state_dir.mkdir(mode=0o700)
    path = state_dir / "ci.json"
    path.write_text("{not json")
    path.chmod(0o600)
    proc = inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir)})
    assert proc.returncode != 0
    assert "is not valid JSON" in proc.stderr
    assert path.read_text() == "{not json"


def test_other_file_names_are_not_claimed(tmp_path, state_dir):
    write_pool(state_dir, "ci", instances=[entry("i-a", "198.51.100.1", "10.0.0.1")])
    proc = inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir)}, name="hosts.yml")
    assert proc.returncode != 0  # ANSIBLE_INVENTORY_UNPARSED_FAILED: nobody took the file


# -- the tag path, against the moto server ------------------------------------------------------------------

POOL_ID = "0123456789abcdef"


def launch(ec2, pool_name, kind, spot=False, pool_id=POOL_ID):
    params = dict(ImageId="ami-12345678", InstanceType="t3.micro", MinCount=1, MaxCount=1,
                  TagSpecifications=[{"ResourceType": "instance", "Tags": [
                      {"Key": "ec2spot:pool", "Value": pool_name}, {"Key": "ec2spot:pool-id", "Value": pool_id},
                      {"Key": "ec2spot:type", "Value": kind}]}])
    if spot:
        params["InstanceMarketOptions"] = {"MarketType": "spot"}
    return ec2.run_instances(**params)["Instances"][0]["InstanceId"]


def describe(ec2, instance_id):
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def test_tags_add_unknown_instances_and_drop_dead_ones(tmp_path, state_dir, ec2, aws_env):
    spot = launch(ec2, "ci", "spot", spot=True)
    leased = launch(ec2, "ci", "fallback")
    untracked = launch(ec2, "ci", "spot", spot=True)      # launched, but the state file never got it
    gone = launch(ec2, "ci", "spot", spot=True)
    other_pool = launch(ec2, "other", "spot", spot=True)
    same_name = launch(ec2, "ci", "spot", spot=True, pool_id="f" * 16)  # another controller's pool named ci
    ec2.terminate_instances(InstanceIds=[gone])
    write_pool(state_dir, "ci",
               instances=[entry(spot, "stale-address", "stale-private"), entry(gone, "198.51.100.9", "10.0.0.9")],
               leases=[entry(leased, "198.51.100.8", "10.0.0.8", kind="fallback", leased_at="2026-11-22T11:00:00Z")],
               pool_id=POOL_ID)

    data = listing(inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir), "use_tags": True}))

    assert group_hosts(data, "ec2spot_pool_ci") == {spot, leased, untracked}
    assert other_pool not in data["_meta"]["hostvars"] and gone not in data["_meta"]["hostvars"]
    assert same_name not in data["_meta"]["hostvars"]
    assert group_hosts(data, "ec2spot_leased") == {leased}
    assert group_hosts(data, "ec2spot_ready") == {spot, untracked}
    assert group_hosts(data, "ec2spot_fallback") == {leased}
    assert group_hosts(data, "ec2spot_spot") == {spot, untracked}
    hostvars = data["_meta"]["hostvars"]
    live = describe(ec2, spot)
    assert hostvars[spot]["ansible_host"] == live["PublicIpAddress"]  # EC2's address, not the stale one
    assert hostvars[spot]["ec2spot_private_ip"] == live["PrivateIpAddress"]
    assert hostvars[spot]["ec2spot_state"] == "running"
    assert hostvars[leased]["ec2spot_leased_at"] == "2026-11-22T11:00:00Z"
    assert hostvars[untracked]["ec2spot_type"] == "spot"
    assert hostvars[untracked]["ec2spot_availability_zone"] == live["Placement"]["AvailabilityZone"]


def test_tags_alone_rebuild_the_pool_without_a_state_file(tmp_path, state_dir, ec2, aws_env):
    first = launch(ec2, "ci", "spot", spot=True)
    data = listing(inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir), "use_tags": True,
                                        "address": "private"}))
    assert group_hosts(data, "ec2spot_pool_ci") == {first}
    assert data["_meta"]["hostvars"][first]["ansible_host"] == describe(ec2, first)["PrivateIpAddress"]


def test_tags_empty_pool_and_unknown_pool(tmp_path, state_dir, ec2, aws_env):
    write_pool(state_dir, "ci")
    data = listing(inventory(tmp_path, {"pool_name": "ci", "state_dir": str(state_dir), "use_tags": True}))
    assert data["_meta"]["hostvars"] == {}

    proc = inventory(tmp_path, {"pool_name": "nope", "state_dir": str(state_dir), "use_tags": True})
    assert proc.returncode != 0
    assert "pool 'nope' is unknown" in proc.stderr
    assert f"ec2spot:pool=nope in region {REGION}" in proc.stderr


# -- store=dynamodb: the pool's items in a DynamoDB table -------------------------------------------------------------
def dynamodb_pool(url, table, pool_name, instances=(), leases=()):
    """A pool written to `table` through the DynamoDB store's own atomic change (the table made as init makes it)."""
    # pylint: disable=import-outside-toplevel
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.pool import new_state
    from tests.unit.test_store import dynamodb_client

    store = DynamoStore(dynamodb_client(url), table, pool_name)
    store.ensure_table()
    with store.transaction() as tx:
        tx.state = dict(new_state(pool_name, 3, LAUNCH), instances=list(instances), leases=list(leases))
    return store


def test_store_dynamodb_lists_the_pool_in_the_table(tmp_path, aws_env):
    table = "inventory-" + tmp_path.name[-12:].replace("_", "-")
    dynamodb_pool(aws_env["AWS_URL"], table, "ci",
                  instances=[entry("i-spot1", "198.51.100.1", "10.0.0.1"),
                             entry("i-fall1", "198.51.100.2", "10.0.0.2", kind="fallback")],
                  leases=[entry("i-lease1", "198.51.100.3", "10.0.0.3", leased_at="2026-11-22T11:00:00Z")])
    dynamodb_pool(aws_env["AWS_URL"], table, "other", instances=[entry("i-other", "198.51.100.9", "10.0.0.9")])
    data = listing(inventory(tmp_path, {"pool_name": "ci", "store": "dynamodb", "dynamodb_table": table,
                                        "state_dir": str(tmp_path / "state")}))
    assert group_hosts(data, "ec2spot_pool_ci") == {"i-spot1", "i-fall1", "i-lease1"}
    assert group_hosts(data, "ec2spot_leased") == {"i-lease1"}
    assert group_hosts(data, "ec2spot_fallback") == {"i-fall1"}
    assert data["_meta"]["hostvars"]["i-spot1"]["ansible_host"] == "198.51.100.1"
    assert not (tmp_path / "state").exists(), "reading the table creates nothing on the controller"

    proc = inventory(tmp_path, {"pool_name": "nope", "store": "dynamodb", "dynamodb_table": table})
    assert proc.returncode != 0
    assert f"pool 'nope' is unknown: it is not in dynamodb table {table}, pool nope" in proc.stderr


def test_store_dynamodb_refuses_a_missing_table_no_region_and_a_pool_file(tmp_path, aws_env, monkeypatch):
    proc = inventory(tmp_path, {"pool_name": "ci", "store": "dynamodb", "dynamodb_table": "no-such-table"})
    assert proc.returncode != 0 and "DynamoDB table no-such-table does not exist" in proc.stderr
    proc = inventory(tmp_path, {"pool_name": "ci", "store": "dynamodb", "pool_file": str(tmp_path / "p.json")})
    assert proc.returncode != 0 and "pool_file" in proc.stderr and "store=dynamodb" in proc.stderr
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    proc = inventory(tmp_path, {"pool_name": "ci", "store": "dynamodb"},
                     env={"AWS_CONFIG_FILE": str(tmp_path / "none")})
    assert proc.returncode != 0 and "needs a region" in proc.stderr and "AWS_REGION" in proc.stderr


@pytest.mark.parametrize("option", ["state_dir", "pool_file", "dynamodb_table"])
def test_an_empty_option_that_names_where_the_pool_lives_is_an_error(tmp_path, option):
    """An empty value (an unset variable in the inventory source) never means the default directory or table."""
    write_pool(tmp_path / "xdg" / "ec2spot", "default", instances=[entry("i-a", "198.51.100.1", "10.0.0.1")])
    proc = inventory(tmp_path, {option: ""}, env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert proc.returncode != 0 and f"{option} is empty" in proc.stderr, proc.stderr
