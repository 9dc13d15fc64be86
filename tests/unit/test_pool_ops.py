"""The module operations as plain functions: hand-out, release, terminate, info, init (refill off)."""

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import pool as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import state as ops_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import NoReadyInstance
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import StateFileError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import PoolStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.ec2query import InstanceStates
from tests.support.moto import POOL_LAUNCH
from tests.support.moto import REGION

LAUNCH = POOL_LAUNCH


@pytest.fixture
def store(tmp_path):
    return PoolStore(str(tmp_path / "state" / "p.json"), "p")


@pytest.fixture
def pool(store, client):
    result = ops.init_pool(store, client, 3, dict(LAUNCH), wait=True, wait_timeout=60)
    assert result["counts"]["ready"] == 3
    return store


def no_client(ids=None):
    raise AssertionError("this hand-out must not call EC2")


@pytest.fixture
def ec2_states(aws_env):
    """What spot_pool_get asks EC2 with: the signed DescribeInstances, here against the moto server."""
    return InstanceStates({"region": REGION, "endpoint_url": aws_env["AWS_URL"], "access_key": "testing",
                           "secret_key": "testing"})


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


def test_get_hands_out_without_calling_ec2_when_recently_verified_and_allowed(pool):
    before = pool.read()
    got = ops.get_instance(pool, no_client, refill=False, verify_max_age=60)
    assert got["instance_id"] == before["instances"][0]["id"] and got["ip"] == before["instances"][0]["ip"]
    assert got["verified"] is False and got["counts"]["leased"] == 1 and got["counts"]["ready"] == 2
    assert pool.read()["leases"][0]["id"] == got["instance_id"]


def test_get_in_check_mode_writes_nothing(pool, ec2_states):
    before = open(pool.path, "rb").read()
    got = ops.get_instance(pool, ec2_states, refill=False, check_mode=True)
    assert got["instance_id"] and open(pool.path, "rb").read() == before


def test_a_verifying_get_never_hands_out_a_dead_instance(pool, client, ec2_states):
    first = pool.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[first])
    got = ops.get_instance(pool, ec2_states, verify_max_age=0, refill=False)
    assert got["verified"] and got["dropped"] == [first] and got["instance_id"] != first
    assert first not in [e["id"] for e in pool.read()["instances"]]


def test_no_ready_instance_fails_with_counts_and_changes_nothing(pool):
    for _lease in range(3):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    before = open(pool.path, "rb").read()
    with pytest.raises(NoReadyInstance, match=r"pool 'p' has 0 ready of 3; 0 pending; 3 leased"):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    assert open(pool.path, "rb").read() == before


def test_get_from_a_pool_that_does_not_exist(store):
    with pytest.raises(NoReadyInstance, match="does not exist"):
        ops.get_instance(store, no_client, refill=False)


def test_lease_ttl_and_private_address(pool):
    got = ops.get_instance(pool, no_client, refill=False, verify=False, lease_ttl=600, address="private")
    assert got["ip"] == got["private_ip"] and got["expires_at"] > got["leased_at"]


def test_release_ends_the_lease_by_market(pool, client):
    with pool.transaction() as tx:  # make the second instance a fallback, as the launcher would have tagged it
        tx.state["instances"][1]["type"] = "fallback"
    spot = ops.get_instance(pool, no_client, refill=False, verify=False)
    fallback = ops.get_instance(pool, no_client, refill=False, verify=False)
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
    leased = ops.get_instance(pool, no_client, refill=False, verify=False)["instance_id"]
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
    leased = ops.get_instance(pool, no_client, refill=False, verify=False)["instance_id"]
    client.create_tags(Resources=[leased], Tags=[{"Key": "ec2spot:leased-at", "Value": "2026-11-22T10:00:00Z"}])
    idle = sorted(e["id"] for e in pool.read()["instances"])
    with open(pool.path, "w") as handle:
        handle.write("{torn write")
    with pytest.raises(StateFileError):
        ops.init_pool(pool, client, 3, dict(LAUNCH))
    rebuilt = ops.init_pool(pool, client, 3, dict(LAUNCH), rebuild=True)
    assert open(rebuilt["moved_aside"]).read() == "{torn write"
    state = pool.read()
    assert [lease["id"] for lease in state["leases"]] == [leased]
    assert set(idle) <= {e["id"] for e in state["instances"]}
    assert len(state["instances"]) == 3  # the hand-out's slot was refilled


def test_terminate_deletes_the_pool_template(pool, client):
    template = pool.read()["launch"]["template"]
    assert template["owned"]
    ops.terminate_pool(pool, client)
    assert client.describe_launch_templates(Filters=[{"Name": "launch-template-name",
                                                      "Values": ["ec2spot-p"]}])["LaunchTemplates"] == []


def test_get_reports_a_failed_refill(pool):
    with pool.transaction() as tx:
        tx.state["refill"]["last_error"] = "CreateFleet failed: not authorized (UnauthorizedOperation)"
    got = ops.get_instance(pool, no_client, refill=False, verify=False)
    assert "UnauthorizedOperation" in got["warnings"][0]


# -- issue 9: the hand-out ------------------------------------------------------------------------------------------
def leases_of(store):
    return [lease["id"] for lease in store.read()["leases"]]


def test_a_get_whose_lease_write_fails_leaves_no_lease(pool, monkeypatch):
    """Item 4: the disk fills up at the lease's write (the exact write: the temp file of the transaction)."""
    before = open(pool.path, "rb").read()
    real_fsync = ops_state.os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ops_state.os, "fsync", disk_full)
    with pytest.raises(ops.PoolError, match=r"cannot write the pool file .*No space left on device; nothing was leased"):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    monkeypatch.setattr(ops_state.os, "fsync", real_fsync)
    assert open(pool.path, "rb").read() == before and leases_of(pool) == []
    assert [name for name in os.listdir(pool.directory) if name.endswith(".tmp")] == []


def test_a_refill_that_cannot_start_after_the_lease_is_a_warning_not_a_failed_get(pool, monkeypatch):
    """Item 4: the lease was written; starting the job then hit a full disk (its code copy): the get stands."""
    def disk_full(store, env):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ops.jobcontrol, "start_refill", disk_full)
    got = ops.get_instance(pool, no_client, verify=False, refill_env={})
    assert leases_of(pool) == [got["instance_id"]]
    assert got["refill"]["started"] is False and "No space left on device" in got["refill"]["error"]
    assert any("could not be started" in warning and "lease stands" in warning for warning in got["warnings"])


def test_leases_expire_after_a_day_by_default_and_zero_means_never(pool):
    got = ops.get_instance(pool, no_client, refill=False, verify=False)
    leased, expires = ops_state.parse_time(got["leased_at"]), ops_state.parse_time(got["expires_at"])
    assert (expires - leased).total_seconds() == ops.DEFAULT_LEASE_TTL == 86400
    forever = ops.get_instance(pool, no_client, refill=False, verify=False, lease_ttl=0)
    assert forever["expires_at"] is None
    assert "expires_at" not in next(lease for lease in pool.read()["leases"] if lease["id"] == forever["instance_id"])


def test_a_negative_lease_ttl_is_refused_and_changes_nothing(pool):
    before = open(pool.path, "rb").read()
    with pytest.raises(InvalidRequest, match=r"lease_ttl must be a number of seconds, or 0 .*never expires; got -60"):
        ops.get_instance(pool, no_client, refill=False, verify=False, lease_ttl=-60)
    assert open(pool.path, "rb").read() == before


def test_a_get_that_finds_nothing_ready_restarts_a_stopped_refill_and_says_so(pool, monkeypatch):
    """Item 5: a refill that stopped on an error is started again by the next get that finds no ready instance."""
    for _lease in range(3):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    with pool.transaction() as tx:
        tx.state["refill"].update(last_error="DescribeInstances failed: AWS was not able to validate (AuthFailure)",
                                  last_error_code="AuthFailure", last_error_permanent=True, pid=None)
    started = []
    monkeypatch.setattr(ops.jobcontrol, "start_refill", lambda store, env: started.append(store.path) or (True, 4242))
    with pytest.raises(NoReadyInstance) as failure:
        ops.get_instance(pool, no_client, verify=False, refill_env={})
    assert started == [pool.path]
    assert "refill error: DescribeInstances failed" in failure.value.message
    assert "the refill job was started (pid 4242)" in failure.value.message


def test_dead_instances_found_by_a_get_stay_dropped_when_the_get_fails(pool, client, ec2_states, monkeypatch):
    """Item 6: every instance ended outside the pool. What EC2 said is recorded, and the refill is started."""
    ids = [entry["id"] for entry in pool.read()["instances"]]
    client.terminate_instances(InstanceIds=ids)
    started = []
    monkeypatch.setattr(ops.jobcontrol, "start_refill", lambda store, env: started.append(1) or (True, 4242))
    with pytest.raises(NoReadyInstance, match=r"has 0 ready of 3; 0 pending; 0 leased; dropped i-"):
        ops.get_instance(pool, ec2_states, refill_env={})
    assert pool.read()["instances"] == [] and started == [1]
    assert ec2_states.calls == 2  # the chosen one, then the rest in one call


def test_the_default_get_checks_the_chosen_instance_even_right_after_a_refill_pass(pool, client):
    """Item 7: the refill checked the pool a moment ago; the instance died since. A default get asks EC2 about the
    one it is about to hand out (one id), drops it, and hands out the next (one more call for the others)."""
    first = pool.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[first])
    asked = []

    def states(ids):
        asked.append(list(ids))
        return {i["InstanceId"]: i["State"]["Name"]
                for r in client.describe_instances(InstanceIds=list(ids))["Reservations"] for i in r["Instances"]}

    got = ops.get_instance(pool, states, refill=False)
    assert got["instance_id"] != first and got["verified"] and got["dropped"] == [first]
    assert asked[0] == [first] and len(asked) == 2 and got["instance_id"] in asked[1]
    # A live first choice costs one call of one id.
    asked.clear()
    again = ops.get_instance(pool, states, refill=False)
    assert asked == [[again["instance_id"]]]


def test_a_get_that_cannot_ask_ec2_fails_and_changes_nothing(pool, aws_env):
    before = open(pool.path, "rb").read()
    wrong = InstanceStates({"region": REGION, "endpoint_url": "http://127.0.0.1:9", "access_key": "testing",
                            "secret_key": "testing"})
    with pytest.raises(ops.PoolError, match=r"DescribeInstances failed: cannot reach http://127.0.0.1:9"):
        ops.get_instance(pool, wrong, refill=False)
    assert open(pool.path, "rb").read() == before


def test_a_get_that_lost_its_checked_instance_to_another_get_checks_the_next(pool, ec2_states):
    """The check runs outside the lock: another get may lease the checked instance meanwhile. The claim takes it
    only if it is still idle; else this get checks the next one."""
    first = pool.read()["instances"][0]["id"]

    def states_then_someone_else_takes_it(ids):
        found = ec2_states(ids)
        if ids == [first]:
            ops.get_instance(pool, no_client, refill=False, verify=False)  # the other get
        return found

    got = ops.get_instance(pool, states_then_someone_else_takes_it, refill=False)
    assert got["instance_id"] != first and sorted(leases_of(pool)) == sorted([first, got["instance_id"]])


def test_a_successful_init_clears_the_error_that_stopped_the_refill(pool, client):
    with pool.transaction() as tx:
        tx.state["refill"].update(last_error="CreateFleet failed (UnauthorizedOperation)",
                                  last_error_code="UnauthorizedOperation", last_error_permanent=True)
    ops.init_pool(pool, client, 3, dict(LAUNCH))
    refill = pool.read()["refill"]
    assert (refill["last_error"], refill["last_error_code"], refill["last_error_permanent"]) == (None, None, None)
    assert ops.pool_info(pool)["refill"]["will_restart"] is True


def test_a_waiting_get_starts_the_refill_once_and_takes_what_it_makes_ready(pool, monkeypatch):
    taken = [ops.get_instance(pool, no_client, refill=False, verify=False)["instance_id"] for _lease in range(3)]
    started = []
    monkeypatch.setattr(ops.jobcontrol, "start_refill", lambda store, env: started.append(1) or (True, 4242))
    now = [0.0]

    def sleep(seconds):  # the "refill" makes one instance ready during the wait
        now[0] += seconds
        with pool.transaction() as tx:
            lease = tx.state["leases"].pop(0)
            tx.state["instances"].append({key: value for key, value in lease.items()
                                          if key not in ("leased_at", "expires_at")})

    got = ops.get_instance(pool, no_client, verify=False, wait_timeout=5, refill_env={}, sleep=sleep,
                           clock=lambda: now[0])
    assert got["instance_id"] == taken[0] and now[0] == 1.0
    assert started == [1, 1]  # once while waiting, once after the hand-out (a running job makes it a no-op)
