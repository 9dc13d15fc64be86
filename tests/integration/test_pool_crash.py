"""The refill job killed with SIGKILL at each step of a pass, then a new refill: the pool is consistent, nothing
launched twice, nothing left untracked.

The steps are reached by holding one EC2 call in the fault proxy (a delay rule) and killing the job while it waits
for the answer: a held CreateFleet is still carried out by moto once the delay ends, so its answer is lost exactly
as when a process dies on AWS. After each kill a new refill (a get's job, or init) must replay the fleet request
that was recorded before the call with the same ClientToken, get the same instances back, and launch nothing extra.
"""

from __future__ import annotations

import time

from tests.integration.conftest import task_result
from tests.integration.healing import (assert_consistent, fleets, kill_refill_job, launched_by_proxy,
                                       wait_refill_done)

MARKET = "TargetCapacitySpecification.DefaultTargetCapacityType"


def _lease_and_hold(pool, action: str, **hold) -> tuple[float, int]:
    """Hold the next `action` request, lease an instance (its get starts the refill job) and wait until the job's
    request is held. Returns when the get started and how many `action` requests there were before."""
    proxy = pool.proxy
    before = proxy.count(action)
    proxy.slow(action, 3.0, times=1, **hold)
    started = time.time()
    # verify=false: the get's own DescribeInstances (of the instance it hands out) must not take the hold.
    rc, got = pool.module("spot_pool_get", verify=False)
    assert rc == 0 and got["refill"]["started"], got
    proxy.wait_for(action, count=before + 1, timeout=20)
    return started, before


def test_killed_before_create_fleet(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2).rc == 0

    # The job's first call of the pass, DescribeInstances, is held: the job dies before any launch.
    started = _lease_and_hold(pool, "DescribeInstances")[0]
    kill_refill_job(pool)
    state = pool.state()
    assert fleets(proxy, since=started) == [] and state.get("pending_launches", []) == []
    assert len(state["instances"]) == 1 and len(state["leases"]) == 1

    # A new refill (another get's job) launches the two missing instances, once.
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["refill"]["started"], got
    wait_refill_done(pool)
    state = assert_consistent(pool)
    assert len(fleets(proxy, since=started)) == 1 and len(launched_by_proxy(proxy, since=started)) == 2
    assert len(state["leases"]) == 2


def test_killed_while_create_fleet_is_in_flight_the_answer_is_lost(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2).rc == 0

    started, before = _lease_and_hold(pool, "CreateFleet")
    kill_refill_job(pool)
    [pending] = pool.state()["pending_launches"]  # written before the call
    [held] = proxy.wait_for("CreateFleet", count=before + 1, done=True, timeout=20)[before:]
    assert held.params["ClientToken"] == pending["token"]
    [launched] = held.instance_ids  # moto launched it although nobody heard the answer
    assert launched not in {e["id"] for e in pool.state()["instances"]}

    # init (same options) is the new refill: it replays the token and adopts the instance instead of launching.
    run = pool.init(size=2)
    assert run.rc == 0, run.stdout[-3000:]
    assert launched in task_result(run, "spot_pool_init")["launched"]
    state = assert_consistent(pool)
    assert launched in {e["id"] for e in state["instances"]}
    replays = fleets(proxy, token=pending["token"])
    assert [r.outcome for r in replays] == ["fleet", "replayed"] and replays[1].instance_ids == [launched]
    assert launched_by_proxy(proxy, since=started) == [launched], "no extra launch"
    assert len(fleets(proxy, since=started)) == 2


def test_killed_after_a_fleet_answered_before_the_state_write(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=3).rc == 0
    rc, first = pool.module("spot_pool_get", refill=False)
    assert rc == 0, first
    # Spot supplies one more instance, then has no capacity: the pass asks On-Demand for the rest in the same pass.
    # That second CreateFleet is held: the Spot answer is then in the job's memory, not yet in the file.
    proxy.limit_offering(1, market="spot")
    started, before = _lease_and_hold(pool, "CreateFleet", params={MARKET: "on-demand"})
    proxy.wait_for("CreateFleet", count=before + 2, timeout=20)
    kill_refill_job(pool)

    spot_fleet, od_fleet = proxy.wait_for("CreateFleet", count=before + 2, done=True, timeout=20)[before:]
    assert spot_fleet.params[MARKET] == "spot" and od_fleet.params[MARKET] == "on-demand"
    [spot_id], [od_id] = spot_fleet.instance_ids, od_fleet.instance_ids
    state = pool.state()
    assert {p["token"] for p in state["pending_launches"]} == {spot_fleet.params["ClientToken"],
                                                               od_fleet.params["ClientToken"]}
    assert not {spot_id, od_id} & {e["id"] for e in state["instances"]}, "neither answer reached the file"

    run = pool.init(size=3)
    assert run.rc == 0, run.stdout[-3000:]
    state = assert_consistent(pool)
    assert {e["id"]: e["type"] for e in state["instances"] if e["id"] in (spot_id, od_id)} == \
        {spot_id: "spot", od_id: "fallback"}
    for fleet in (spot_fleet, od_fleet):
        replays = fleets(proxy, token=fleet.params["ClientToken"])
        assert [r.outcome for r in replays] == ["fleet", "replayed"]
        assert replays[1].instance_ids == fleet.instance_ids
    assert sorted(launched_by_proxy(proxy, since=started)) == sorted([spot_id, od_id]), "no extra launch"


def test_killed_after_the_state_write(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2).rc == 0

    # Pass 1 launches and writes the new entry (no address yet); pass 2's DescribeInstances is held: kill there.
    fleets_before = proxy.count("CreateFleet")
    started = time.time()
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["refill"]["started"], got
    [fleet] = proxy.wait_for("CreateFleet", count=fleets_before + 1, done=True, timeout=20)[fleets_before:]
    describes = proxy.count("DescribeInstances")
    proxy.slow("DescribeInstances", 3.0, times=1)
    proxy.wait_for("DescribeInstances", count=describes + 1, timeout=20)
    kill_refill_job(pool)
    [written] = fleet.instance_ids
    state = pool.state()
    assert [(e["id"], e["ip"]) for e in state["instances"] if e["id"] == written] == [(written, None)]
    assert state.get("pending_launches", []) == []

    # Another get's job fills the address in, and launches only for the slot that get leased.
    rc, second = pool.module("spot_pool_get")
    assert rc == 0 and second["refill"]["started"], second
    wait_refill_done(pool)
    state = assert_consistent(pool)
    assert written in {e["id"] for e in state["instances"]} | {lease["id"] for lease in state["leases"]}
    assert len(launched_by_proxy(proxy, since=started)) == 2 and len(fleets(proxy, since=started)) == 2
