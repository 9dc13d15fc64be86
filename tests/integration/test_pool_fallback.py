"""Spot failures through the playbooks: the genuine EC2 errors are injected by the fault proxy in front of moto.

Capacity faults are offering rules (market spot, every type and zone, forever), so they hold for every override of
the launcher's instant CreateFleet calls however often they are retried (and for a RunInstances, were one made).
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import POOL_TAG, TYPE_TAG, debug_msgs, tags_of, task_result
from tests.integration.healing import RELEASED_TAG, kill_refill_job


def test_spot_capacity_errors_give_fallback_instances(faulty_pool):
    pool = faulty_pool
    pool.proxy.fail_offering("InsufficientInstanceCapacity", market="spot")

    run = pool.init(size=2)
    assert run.rc == 0, run.stdout[-3000:]
    init = task_result(run, "spot_pool_init")
    assert init["counts"] == {"target": 2, "ready": 2, "pending": 0, "leased": 0, "spot": 0, "fallback": 2}
    assert pool.proxy.offering_requests(market="spot"), "Spot was tried first"
    assert pool.proxy.offering_requests(market="on-demand")
    instances = pool.tagged_instances()
    assert sorted(inst["InstanceId"] for inst in instances) == sorted(init["launched"])
    for inst in instances:
        assert inst["State"]["Name"] == "running"
        assert inst.get("InstanceLifecycle") != "spot", "a fallback is an On-Demand instance"
        assert tags_of(inst)[TYPE_TAG] == "fallback" and tags_of(inst)[POOL_TAG] == "default"
    assert [entry["type"] for entry in pool.state()["instances"]] == ["fallback", "fallback"]


def test_spot_capacity_errors_without_fallback_fail_and_leave_nothing_running(faulty_pool):
    pool = faulty_pool
    pool.proxy.fail_offering("InsufficientInstanceCapacity", market="spot")

    run = pool.init(size=2, spot_pool_fallback=False)
    assert run.rc != 0
    result = task_result(run, "spot_pool_init")
    assert result["failed"] is True
    assert "InsufficientInstanceCapacity" in result["msg"] and "default" in result["msg"], result["msg"]
    assert pool.proxy.offering_requests(market="spot")
    assert pool.proxy.offering_requests(market="on-demand") == [], "fallback=false: no On-Demand launch"
    assert pool.tagged_instances() == []
    state = pool.state()
    assert state is None or state["instances"] == [], "no instance is recorded that does not exist"


def test_non_capacity_spot_error_fails_loudly_without_fallback(faulty_pool):
    pool = faulty_pool
    # Not a capacity problem: launching On-Demand instead would hide a broken account or policy.
    pool.proxy.fail_offering("UnauthorizedOperation", market="spot")

    run = pool.init(size=2)
    assert run.rc != 0
    result = task_result(run, "spot_pool_init")
    assert "UnauthorizedOperation" in result["msg"], result["msg"]
    assert pool.proxy.offering_requests(market="on-demand") == []
    assert pool.tagged_instances() == []


def test_release_terminates_spot_and_stops_or_terminates_fallback(faulty_pool):
    pool = faulty_pool
    # One Spot instance while Spot has capacity, then two fallbacks once it has none.
    assert pool.init(size=1).rc == 0
    pool.proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    run = pool.init(size=3)
    assert run.rc == 0, run.stdout[-3000:]
    counts = task_result(run, "spot_pool_init")["counts"]
    assert counts == {"target": 3, "ready": 3, "pending": 0, "leased": 0, "spot": 1, "fallback": 2}, counts
    # The refill job init started (to replace the fallbacks) would refill the slots leased below, and it starts a
    # stopped fallback again before it launches a new one: this test is about release alone.
    kill_refill_job(pool)

    # Lease the whole pool without refilling it, so that the releases below act on known instances only.
    leases = []
    for _lease_number in range(3):
        rc, lease = pool.module("spot_pool_get", refill=False)
        assert rc == 0, lease
        leases.append(lease)
    spot = next(lease for lease in leases if lease["type"] == "spot")
    fallback_kept, fallback_ended = [lease for lease in leases if lease["type"] == "fallback"][:2]

    run = pool.playbook("release_instance.yml", spot_pool_instance_id=spot["instance_id"])
    assert run.rc == 0, run.stdout[-3000:]
    assert debug_msgs(run) == [f"{spot['instance_id']}: terminate"]
    assert pool.instance(spot["instance_id"])["State"]["Name"] in ("shutting-down", "terminated")

    run = pool.playbook("release_instance.yml", spot_pool_instance_id=fallback_kept["instance_id"])
    assert run.rc == 0, run.stdout[-3000:]
    assert debug_msgs(run) == [f"{fallback_kept['instance_id']}: stop"]
    assert pool.instance(fallback_kept["instance_id"])["State"]["Name"] in ("stopping", "stopped")

    run = pool.playbook("release_instance.yml", spot_pool_instance_id=fallback_ended["instance_id"],
                        spot_pool_fallback_action="terminate")
    assert run.rc == 0, run.stdout[-3000:]
    assert debug_msgs(run) == [f"{fallback_ended['instance_id']}: terminate"]
    assert pool.instance(fallback_ended["instance_id"])["State"]["Name"] in ("shutting-down", "terminated")

    assert pool.state()["leases"] == [], "every released lease is gone from the pool file"


@pytest.mark.parametrize("pool_action, state", [("stop", "stopped"), ("terminate", "terminated")])
def test_release_with_defaults_follows_the_pool_s_fallback_action(faulty_pool, pool_action, state):
    pool = faulty_pool
    pool.proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    run = pool.init(size=1, spot_pool_fallback_action=pool_action)
    assert run.rc == 0, run.stdout[-3000:]
    kill_refill_job(pool)  # it would replace the fallback in the background: this test is about release alone
    rc, lease = pool.module("spot_pool_get", refill=False)
    assert rc == 0 and lease["type"] == "fallback", lease

    run = pool.playbook("release_instance.yml", spot_pool_instance_id=lease["instance_id"],
                        spot_pool_lease_id=lease["lease_id"])  # no spot_pool_fallback_action: the pool's own
    assert run.rc == 0, run.stdout[-3000:]
    assert debug_msgs(run) == [f"{lease['instance_id']}: {pool_action}"]
    instance = pool.instance(lease["instance_id"])
    assert instance["State"]["Name"] in (("stopping", state) if pool_action == "stop" else ("shutting-down", state))
    assert (RELEASED_TAG in tags_of(instance)) is (pool_action == "stop")


def test_a_released_fallback_is_reused_and_terminate_all_ends_what_is_left(faulty_pool):
    """Issue 9, item 9: a stopped fallback is started again before a new On-Demand launch, info lists the ones kept,
    and terminate_all.yml with defaults leaves none behind."""
    pool = faulty_pool
    pool.proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    assert pool.init(size=2).rc == 0
    kill_refill_job(pool)  # it would replace the fallbacks (by Spot, in vain) in the background: this test's passes only
    first, second = (pool.module("spot_pool_get", refill=False)[1]["instance_id"] for _lease in range(2))
    for leased in (first, second):
        run = pool.playbook("release_instance.yml", spot_pool_instance_id=leased)
        assert run.rc == 0 and debug_msgs(run) == [f"{leased}: stop"], run.stdout[-3000:]

    # The next init needs two fallbacks: it starts the stopped ones instead of launching On-Demand instances.
    on_demand = len(pool.proxy.offering_requests(market="on-demand"))
    run = pool.init(size=2)
    assert run.rc == 0, run.stdout[-3000:]
    kill_refill_job(pool)
    assert sorted(task_result(run, "spot_pool_init")["launched"]) == sorted([first, second])
    assert len(pool.proxy.offering_requests(market="on-demand")) == on_demand, "no new On-Demand launch"
    assert sorted(e["id"] for e in pool.state()["instances"]) == sorted([first, second])
    assert all(RELEASED_TAG not in tags_of(pool.instance(i)) for i in (first, second))

    # Leased and released again: the next refill pass lists it as kept for reuse; terminate ends it with the pool.
    rc, got = pool.module("spot_pool_get", refill=False)
    assert rc == 0, got
    assert pool.playbook("release_instance.yml", spot_pool_instance_id=got["instance_id"]).rc == 0
    assert pool.init(size=1).rc == 0  # one idle left: nothing to launch, the pass sees the kept fallback
    assert [k["id"] for k in pool.info()["kept_fallbacks"]] == [got["instance_id"]]
    run = pool.playbook("terminate_all.yml")
    assert run.rc == 0, run.stdout[-3000:]
    ended = task_result(run, "spot_pool_terminate")
    assert ended["kept_fallbacks"] == [got["instance_id"]] and got["instance_id"] in ended["terminated"]
    assert pool.tagged_instances(states=("pending", "running", "stopping", "stopped")) == []
