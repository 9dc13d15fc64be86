"""Spot failures through the playbooks: the genuine EC2 errors are injected by the fault proxy in front of moto.

Capacity faults are offering rules (market spot, every type and zone, forever) so they hold whichever launch call
the launcher makes (RunInstances or an instant CreateFleet) and however often it is retried.
"""

from __future__ import annotations

from tests.integration.conftest import POOL_TAG, TYPE_TAG, debug_msgs, tags_of, task_result


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
