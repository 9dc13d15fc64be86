"""The module operations as plain functions: hand-out, release, terminate, info, init (refill off)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import pool as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import NoReadyInstance
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import StateFileError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import PoolStore
from tests.support.moto import POOL_LAUNCH

LAUNCH = POOL_LAUNCH


@pytest.fixture
def store(tmp_path):
    return PoolStore(str(tmp_path / "state" / "p.json"), "p")


@pytest.fixture
def pool(store, client):
    result = ops.init_pool(store, client, 3, dict(LAUNCH), wait=True, wait_timeout=60)
    assert result["counts"]["ready"] == 3
    return store


def no_client():
    raise AssertionError("this hand-out must not call EC2")


def states(client, ids):
    return {i["InstanceId"]: i["State"]["Name"] for r in client.describe_instances(InstanceIds=ids)["Reservations"]
            for i in r["Instances"]}


def test_init_is_idempotent_and_check_mode_changes_nothing(store, client):
    planned = ops.init_pool(store, client, 2, dict(LAUNCH), check_mode=True)
    assert planned["changed"] and planned["would_launch"] == 2 and not store.exists()
    first = ops.init_pool(store, client, 2, dict(LAUNCH))
    assert first["changed"] and len(first["launched"]) == 2
    again = ops.init_pool(store, client, 2, dict(LAUNCH))
    assert not again["changed"] and again["launched"] == []
    smaller = ops.init_pool(store, client, 1, dict(LAUNCH))
    assert smaller["changed"] and len(smaller["terminated"]) == 1
    assert states(client, smaller["terminated"]) == {smaller["terminated"][0]: "terminated"}
    with pytest.raises(InvalidRequest, match="size must be 0 or more"):
        ops.init_pool(store, client, -1, dict(LAUNCH))


def test_get_hands_out_without_calling_ec2_when_recently_verified(pool):
    before = pool.read()
    got = ops.get_instance(pool, no_client, refill=False)
    assert got["instance_id"] == before["instances"][0]["id"] and got["ip"] == before["instances"][0]["ip"]
    assert got["verified"] is False and got["counts"]["leased"] == 1 and got["counts"]["ready"] == 2
    assert pool.read()["leases"][0]["id"] == got["instance_id"]


def test_get_in_check_mode_writes_nothing(pool):
    before = open(pool.path, "rb").read()
    got = ops.get_instance(pool, no_client, refill=False, check_mode=True)
    assert got["instance_id"] and open(pool.path, "rb").read() == before


def test_a_verifying_get_never_hands_out_a_dead_instance(pool, client):
    first = pool.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[first])
    got = ops.get_instance(pool, lambda: client, verify_max_age=0, refill=False)
    assert got["verified"] and got["dropped"] == [first] and got["instance_id"] != first
    assert first not in [e["id"] for e in pool.read()["instances"]]
    # That check counts as a fresh verification: the next default get does not ask EC2 again.
    assert ops.get_instance(pool, no_client, refill=False)["verified"] is False


def test_no_ready_instance_fails_with_counts_and_changes_nothing(pool):
    for _lease in range(3):
        ops.get_instance(pool, no_client, refill=False)
    before = open(pool.path, "rb").read()
    with pytest.raises(NoReadyInstance, match=r"pool 'p' has 0 ready of 3; 0 pending; 3 leased"):
        ops.get_instance(pool, no_client, refill=False)
    assert open(pool.path, "rb").read() == before


def test_get_from_a_pool_that_does_not_exist(store):
    with pytest.raises(NoReadyInstance, match="does not exist"):
        ops.get_instance(store, no_client, refill=False)


def test_lease_ttl_and_private_address(pool):
    got = ops.get_instance(pool, no_client, refill=False, lease_ttl=600, address="private")
    assert got["ip"] == got["private_ip"] and got["expires_at"] > got["leased_at"]


def test_release_ends_the_lease_by_market(pool, client):
    with pool.transaction() as tx:  # make the second instance a fallback, as the launcher would have tagged it
        tx.state["instances"][1]["type"] = "fallback"
    spot = ops.get_instance(pool, no_client, refill=False)
    fallback = ops.get_instance(pool, no_client, refill=False)
    assert (spot["type"], fallback["type"]) == ("spot", "fallback")
    released = ops.release_instance(pool, client)  # most recent lease first
    assert (released["instance_id"], released["action"]) == (fallback["instance_id"], "stop")
    assert ops.release_instance(pool, client, spot["instance_id"])["action"] == "terminate"
    assert states(client, [spot["instance_id"], fallback["instance_id"]]) == {
        spot["instance_id"]: "terminated", fallback["instance_id"]: "stopped"}
    assert pool.read()["leases"] == []
    kept = client.describe_instances(InstanceIds=[fallback["instance_id"]])["Reservations"][0]["Instances"][0]
    assert "ec2spot:released-at" in {tag["Key"] for tag in kept["Tags"]}  # the orphan sweep leaves it alone
    nothing = ops.release_instance(pool, client)
    assert not nothing["changed"] and nothing["action"] == "none"
    with pytest.raises(InvalidRequest, match="i-0123 is not leased from pool 'p'"):
        ops.release_instance(pool, client, "i-0123")


def test_terminate_ends_everything_including_orphans_and_is_idempotent(pool, client):
    leased = ops.get_instance(pool, no_client, refill=False)["instance_id"]
    orphan = client.run_instances(ImageId=LAUNCH["image_id"], MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "ec2spot:pool", "Value": "p"},
                                              {"Key": "ec2spot:type", "Value": "spot"}]}])["Instances"][0]["InstanceId"]
    planned = ops.terminate_pool(pool, client, check_mode=True)
    assert orphan in planned["orphans"] and pool.exists()
    done = ops.terminate_pool(pool, client)
    assert leased in done["terminated"] and orphan in done["terminated"] and len(done["terminated"]) == 4
    assert not pool.exists()
    assert set(states(client, done["terminated"]).values()) == {"terminated"}
    again = ops.terminate_pool(pool, client)
    assert not again["changed"] and again["terminated"] == []


def test_terminate_with_a_corrupt_file_finds_instances_by_tag_and_keeps_the_file(pool, client):
    ids = [e["id"] for e in pool.read()["instances"]]
    with open(pool.path, "w") as handle:
        handle.write("{garbage")
    done = ops.terminate_pool(pool, client)
    assert sorted(done["terminated"]) == sorted(ids)
    assert "not valid JSON" in done["warnings"][0]
    assert open(pool.path).read() == "{garbage"


def test_info_reads_and_verifies_without_changing(pool, client):
    victim = pool.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[victim])
    before = open(pool.path, "rb").read()
    info = ops.pool_info(pool, lambda: client, verify=True)
    assert info["exists"] and info["counts"]["ready"] == 3 and info["dead"] == [victim]
    assert info["refill"]["running"] is False
    assert open(pool.path, "rb").read() == before
    assert ops.pool_info(PoolStore(pool.path + ".none", "p"))["exists"] is False


def test_rebuild_from_tags_moves_a_corrupt_file_aside_and_knows_leases(pool, client):
    leased = ops.get_instance(pool, no_client, refill=False)["instance_id"]
    client.create_tags(Resources=[leased], Tags=[{"Key": "ec2spot:leased-at", "Value": "2026-11-22T10:00:00Z"}])
    idle = sorted(e["id"] for e in pool.read()["instances"])
    damaged = '{"version": 1, "pool_name": "p", "instances": "lost", "leases": null}'
    with open(pool.path, "w") as handle:
        handle.write(damaged)
    with pytest.raises(StateFileError):
        ops.init_pool(pool, client, 3, dict(LAUNCH))
    rebuilt = ops.init_pool(pool, client, 3, dict(LAUNCH), rebuild=True)
    assert open(rebuilt["moved_aside"]).read() == damaged
    state = pool.read()
    assert [lease["id"] for lease in state["leases"]] == [leased]
    assert set(idle) <= {e["id"] for e in state["instances"]}
    assert len(state["instances"]) == 3  # the hand-out's slot was refilled


@pytest.mark.parametrize("content", [
    "{torn write",  # not JSON: nothing says it is a pool file
    "# my dotfile\nexport PATH=$HOME/bin:$PATH\n",
    '{"version": 1, "pool_name": "other", "instances": [], "leases": []}',  # another pool's
    '{"version": 2, "pool_name": "p"}',  # a newer collection's
])
def test_rebuild_moves_aside_only_this_pools_file_unless_forced(pool, client, content):
    directory = os.path.dirname(pool.path)
    with open(pool.path, "w") as handle:
        handle.write(content)
    before = sorted(os.listdir(directory))
    instances = sorted(ops.terminate_pool(pool, client, check_mode=True)["terminated"])
    assert len(instances) == 3
    with pytest.raises(StateFileError) as err:
        ops.init_pool(pool, client, 3, dict(LAUNCH), rebuild=True)
    assert pool.path in err.value.message and "force_rebuild" in err.value.message, err.value.message
    assert open(pool.path).read() == content and sorted(os.listdir(directory)) == before  # nothing moved or written
    assert sorted(ops.terminate_pool(pool, client, check_mode=True)["terminated"]) == instances

    rebuilt = ops.init_pool(pool, client, 3, dict(LAUNCH), force_rebuild=True)
    assert open(rebuilt["moved_aside"]).read() == content
    assert pool.read()["pool_name"] == "p" and len(pool.read()["instances"]) == 3


def test_a_rebuild_never_moves_a_link_or_another_users_file(pool, client, tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    os.unlink(pool.path)
    os.symlink(target, pool.path)
    for force in (False, True):
        with pytest.raises(StateFileError, match="symbolic link"):
            ops.init_pool(pool, client, 3, dict(LAUNCH), rebuild=True, force_rebuild=force)
        assert os.path.islink(pool.path) and target.read_text() == "keep me"


def test_terminate_deletes_the_pool_template(pool, client):
    template = pool.read()["launch"]["template"]
    assert template["owned"]
    ops.terminate_pool(pool, client)
    assert client.describe_launch_templates(Filters=[{"Name": "launch-template-name",
                                                      "Values": ["ec2spot-p"]}])["LaunchTemplates"] == []


def test_get_reports_a_failed_refill(pool):
    with pool.transaction() as tx:
        tx.state["refill"]["last_error"] = "CreateFleet failed: not authorized (UnauthorizedOperation)"
    got = ops.get_instance(pool, no_client, refill=False)
    assert "UnauthorizedOperation" in got["warnings"][0]
