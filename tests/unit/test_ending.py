"""The one rule for ending an instance (ending.py), and the rule that no AWS call is made under the pool's lock."""

from __future__ import annotations

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import ending
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import end_plan
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.localfiles import FileLock
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from tests.support.moto import POOL_LAUNCH

GONE = "i-0123456789abcdef0"  # an id EC2 does not know (never launched, or terminated long ago)


# -- the decision: plain values ------------------------------------------------------------------------------------
def test_spot_is_terminated_and_a_fallback_stopped_or_terminated_per_the_action():
    instances = [{"id": "i-s", "type": "spot"}, {"id": "i-f", "type": "fallback"}, {"id": "i-untyped"}]
    assert end_plan.plan_end(instances, "stop") == end_plan.EndPlan(["i-s", "i-untyped"], ["i-f"])
    assert end_plan.plan_end(instances, "terminate") == end_plan.EndPlan(["i-s", "i-f", "i-untyped"], [])


def test_what_ec2_already_ends_or_keeps_needs_nothing_and_an_unknown_state_counts_as_live():
    instances = [{"id": "i-1", "type": "spot", "state": "shutting-down"},
                 {"id": "i-2", "type": "fallback", "state": "terminated"},
                 {"id": "i-3", "type": "fallback", "state": "stopped"},
                 {"id": "i-4", "type": "fallback", "state": "stopping"},
                 {"id": "i-5", "type": "fallback", "state": "running"},
                 {"id": "i-6", "type": "fallback", "state": None},
                 {"id": "i-7", "type": "spot", "state": "stopped"}]
    assert end_plan.plan_end(instances, "stop") == end_plan.EndPlan(["i-7"], ["i-5", "i-6"])
    # Terminating a pool ends its stopped fallbacks too.
    assert end_plan.plan_end(instances, "terminate") == end_plan.EndPlan(["i-3", "i-4", "i-5", "i-6", "i-7"], [])


def test_an_instance_named_twice_is_ended_once():
    twice = [{"id": "i-1", "type": "fallback"}, {"id": "i-1", "type": "fallback"}]
    assert end_plan.plan_end(twice, "stop") == end_plan.EndPlan([], ["i-1"])


def test_an_unknown_action_is_refused():
    with pytest.raises(ValueError, match="fallback_action must be one of stop, terminate, not 'keep'"):
        end_plan.plan_end([{"id": "i-1"}], "keep")


@pytest.mark.parametrize("launch, expected", [({"fallback_action": "terminate"}, "terminate"),
                                              ({"fallback_action": "stop"}, "stop"),
                                              ({}, "stop"), (None, "stop")],
                         ids=["terminate", "stop", "pool-made-before-the-option", "no-launch"])
def test_the_pool_s_own_fallback_action(launch, expected):
    assert end_plan.fallback_action_of(launch) == expected


# -- carried out, against the emulator -----------------------------------------------------------------------------
def run(client, count=1):
    return [i["InstanceId"] for i in client.run_instances(ImageId=POOL_LAUNCH["image_id"], MinCount=count,
                                                          MaxCount=count)["Instances"]]


def states(client, ids):
    return {i["InstanceId"]: i["State"]["Name"] for r in client.describe_instances(InstanceIds=ids)["Reservations"]
            for i in r["Instances"]}


def tags(client, instance_id):
    found = client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {tag["Key"]: tag["Value"] for tag in found.get("Tags", [])}


def test_an_instance_ec2_no_longer_knows_is_gone_and_the_others_are_still_ended(client):
    spot_a, spot_b, fallback = run(client, 3)
    with pytest.raises(Exception, match="InvalidInstanceID.NotFound"):  # what EC2 does with the whole call
        client.terminate_instances(InstanceIds=[spot_a, GONE])
    ended = ending.end(client, [{"id": spot_a}, {"id": GONE, "type": "fallback"}, {"id": spot_b},
                                {"id": fallback, "type": "fallback"}], "stop")
    assert ended == ending.Ended([spot_a, spot_b], [fallback], [GONE])
    assert states(client, [spot_a, spot_b, fallback]) == {spot_a: "terminated", spot_b: "terminated",
                                                          fallback: "stopped"}
    assert "ec2spot:released-at" in tags(client, fallback)  # kept for reuse: the orphan sweep leaves it alone


@pytest.fixture
def store(tmp_path):
    return FileStore(str(tmp_path / "state" / "p.json"), "p")


def lease_a_fallback(store):
    with store.transaction() as tx:
        tx.state["instances"][0]["type"] = "fallback"
    return ops.get_instance(store, None, verify=False, refill=False)


@pytest.mark.parametrize("pool_action", ["stop", "terminate"])
def test_release_with_defaults_follows_the_pool_s_fallback_action(store, client, pool_action):
    ops.init_pool(store, client, ops.InitRequest(2, dict(POOL_LAUNCH, fallback_action=pool_action)))
    fallback = lease_a_fallback(store)
    released = ops.release_instance(store, client, fallback["instance_id"], lease_id=fallback["lease_id"])
    assert released["action"] == pool_action
    assert states(client, [fallback["instance_id"]]) == {
        fallback["instance_id"]: "stopped" if pool_action == "stop" else "terminated"}
    # The option still overrides the pool's setting.
    other = ops.get_instance(store, None, verify=False, refill=False)
    with store.transaction() as tx:
        next(lease for lease in tx.state["leases"] if lease["id"] == other["instance_id"])["type"] = "fallback"
    override = "terminate" if pool_action == "stop" else "stop"
    assert ops.release_instance(store, client, other["instance_id"], override)["action"] == override


def test_terminate_ends_the_rest_when_the_state_lists_an_instance_ec2_no_longer_knows(store, client):
    ops.init_pool(store, client, ops.InitRequest(2, dict(POOL_LAUNCH)))
    live = [entry["id"] for entry in store.read()["instances"]]
    with store.transaction() as tx:
        tx.state["instances"].append(dict(tx.state["instances"][0], id=GONE))
    done = ops.terminate_pool(store, client)
    assert sorted(done["terminated"]) == sorted(live + [GONE])
    assert states(client, live) == {instance_id: "terminated" for instance_id in live}


def test_an_expired_lease_of_an_instance_ec2_no_longer_knows_ends_all_the_same(store, client):
    ops.init_pool(store, client, ops.InitRequest(2, dict(POOL_LAUNCH)))
    leased = ops.get_instance(store, None, verify=False, refill=False)
    with store.transaction() as tx:
        tx.state["leases"].append(dict(tx.state["leases"][0], id=GONE, lease_id="gone", type="fallback",
                                       expires_at="2026-01-01T00:00:00Z"))
        tx.state["leases"][0]["expires_at"] = "2026-01-01T00:00:00Z"
    result = refill.reconcile(store, client, launch=False)
    assert sorted(result.expired) == sorted([leased["instance_id"], GONE])
    assert store.read()["leases"] == []
    assert store.read()["kept_fallbacks"] == []  # a fallback that is gone is not kept for reuse
    assert states(client, [leased["instance_id"]]) == {leased["instance_id"]: "terminated"}


# -- no AWS call under the pool's lock -----------------------------------------------------------------------------
def guard_the_lock(client, store):
    """Record every EC2 call `client` makes, and those made while this process holds the pool's lock (flock is per
    open file description: a second one cannot take it while any descriptor of ours holds it)."""
    calls, under_lock = [], []

    def check(event_name, **_kwargs):
        operation = event_name.rsplit(".", 1)[-1]
        calls.append(operation)
        if FileLock(store.lock_path).is_held_elsewhere():
            under_lock.append(operation)

    client.meta.events.register("before-call.ec2", check)
    return calls, under_lock


def test_the_guard_sees_a_call_made_under_the_pool_lock(store, client):
    ops.init_pool(store, client, ops.InitRequest(1, dict(POOL_LAUNCH)))
    calls, under_lock = guard_the_lock(client, store)
    client.describe_instances()
    with store.transaction():
        client.describe_instances()
    assert calls == ["DescribeInstances", "DescribeInstances"] and under_lock == ["DescribeInstances"]


def test_no_operation_calls_ec2_while_it_holds_the_pool_lock(store, client):
    calls, under_lock = guard_the_lock(client, store)
    launch = dict(POOL_LAUNCH, fallback_action="stop")
    ops.init_pool(store, client, ops.InitRequest(3, launch))
    # Release (a Spot one), lease expiry (a fallback: stopped), an orphan swept, a surplus fallback retired.
    spot = ops.get_instance(store, None, verify=False, refill=False)
    ops.release_instance(store, client, spot["instance_id"], lease_id=spot["lease_id"])
    lease_a_fallback(store)
    orphan = run(client)[0]
    client.create_tags(Resources=[orphan], Tags=[{"Key": "ec2spot:pool", "Value": "p"},
                                                 {"Key": "ec2spot:pool-id", "Value": store.read()["pool_id"]}])
    with store.transaction() as tx:
        tx.state["leases"][0]["expires_at"] = "2026-01-01T00:00:00Z"
        tx.state["launch"]["orphan_grace_seconds"] = 0
    refill.reconcile(store, client)  # marks the orphan, ends the expired lease, refills
    refill.reconcile(store, client)  # terminates the orphan
    with store.transaction() as tx:
        tx.state["instances"][0]["type"] = "fallback"
        tx.state["target_size"] = 1
    assert refill.reconcile(store, client, launch=False).retired
    # A pool terminated while a pass launches: what it launched is terminated, outside any lock.
    with store.transaction() as tx:
        tx.state["target_size"] = 3
        before = {entry["id"] for entry in tx.state["instances"] + tx.state["leases"]}
        pool_id = tx.state["pool_id"]

    def terminate_meanwhile(event_name, **_kwargs):
        store.delete()

    client.meta.events.register("after-call.ec2.CreateFleet", terminate_meanwhile)
    with pytest.raises(refill.PoolGone):
        refill.reconcile(store, client)
    client.meta.events.unregister("after-call.ec2.CreateFleet", terminate_meanwhile)
    live = {i["InstanceId"] for r in client.describe_instances(Filters=[
        {"Name": "tag:ec2spot:pool-id", "Values": [pool_id]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"] for i in r["Instances"]}
    assert live == before, "what the pass launched outlived the pool"
    ops.terminate_pool(store, client, pool_id=pool_id)  # by its tags: the file is gone

    assert states(client, [orphan]) == {orphan: "terminated"}
    for operation in ("DescribeInstances", "CreateFleet", "CreateTags", "TerminateInstances", "StopInstances"):
        assert operation in calls, (operation, calls)
    assert under_lock == [], "EC2 called under the pool's lock: %s" % under_lock
