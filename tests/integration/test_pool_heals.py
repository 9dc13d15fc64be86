"""The pool heals itself, through `ansible-playbook` / `ansible -m` and the detached refill job, against genuine EC2
errors injected by the fault proxy in front of moto.

Each test counts what reached EC2 (the proxy's records) and checks EC2 itself (the test's own client talks to moto
directly) and the pool file. Cool-downs are a few seconds so that a test can watch one start and end, and long
enough that the refill job's next pass (its backoff is 1, 2, 4, 8 s) surely falls inside one on a loaded machine.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.conftest import task_result, wait_until
from tests.integration.healing import (assert_consistent, epoch, fleets, instance_ids_in, launched_by_proxy,
                                       refill_running, wait_refill_done, wait_whole)

TYPES = ["t3.micro", "t3.small"]
ZONES = ["us-east-1a", "us-east-1b"]
# The cool-down of the two timing tests below: a get and its refill job must fall inside it, and on a machine
# that other test processes load (load average 7 on 2 cores, seen in make test), 10-12 s was too short.
COOLDOWN = 25


def _offerings(records) -> list[tuple]:
    return [(o.market, o.instance_type, o.subnet_id or o.availability_zone) for r in records for o in r.offerings]


def test_capacity_error_cools_down_that_offering_while_the_others_fill_in(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    dry = {"market": "spot", "instance_type": "t3.micro", "availability_zone": "us-east-1a"}
    proxy.fail_offering("InsufficientInstanceCapacity", **dry)

    run = pool.init(size=2, spot_pool_instance_types=TYPES, spot_pool_availability_zones=ZONES,
                    spot_pool_cooldown=COOLDOWN)
    assert run.rc == 0, run.stdout[-3000:]
    init = task_result(run, "spot_pool_init")
    # One fleet over all four offerings: the dry one is reported in its Errors, the next one supplied both.
    assert init["counts"] == {"target": 2, "ready": 2, "pending": 0, "leased": 0, "spot": 2, "fallback": 0}
    [fleet] = fleets(proxy)
    assert [(e.offering.instance_type, e.offering.availability_zone, e.code) for e in fleet.fleet_errors] == \
        [("t3.micro", "us-east-1a", "InsufficientInstanceCapacity")]
    assert fleets(proxy, market="on-demand") == [], "a capacity error of one offering is no reason for On-Demand"
    [cooldown] = init["cooldowns"]
    assert (cooldown["scope"], cooldown["market"], cooldown["instance_type"], cooldown["location"]) == \
        ("offering", "spot", "t3.micro", "us-east-1a")
    until = epoch(cooldown["until"])

    # During the cool-down: a get leases one instance, its refill job launches the replacement without asking the
    # dry offering again.
    cooling_from = time.time()
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["refill"]["started"], got
    wait_refill_done(pool)
    assert_consistent(pool)
    during = fleets(proxy, since=cooling_from)
    assert len(during) == 1 and during[0].started < until, \
        f"the refill's fleet request must fall inside the cool-down (until {until}, at {during[0].started})"
    assert ("spot", "t3.micro", "us-east-1a") not in _offerings(during)
    assert proxy.offering_requests(since=cooling_from, **dry) == []
    assert set(_offerings(during)) == {("spot", "t3.micro", "us-east-1b"), ("spot", "t3.small", "us-east-1a"),
                                       ("spot", "t3.small", "us-east-1b")}
    assert len(during[0].instance_ids) == 1
    print(f"offering cool-down: 0 requests for the dry offering, the refill's fleet {until - during[0].started:.1f}s "
          f"before the cool-down ended, 1 instance from the other offerings")

    # After it: the offering is asked again (still dry here, so it cools down again; the others still fill in).
    wait_until(lambda: time.time() >= until + 1, timeout=COOLDOWN + 5, what="the cool-down over")
    after = time.time()
    rc, got = pool.module("spot_pool_get")
    assert rc == 0, got
    wait_refill_done(pool)
    state = assert_consistent(pool)
    assert len(proxy.offering_requests(since=after, **dry)) == 1
    assert [c["location"] for c in state["cooldowns"]] == ["us-east-1a"]
    assert [lease["type"] for lease in state["leases"]] == ["spot", "spot"]


def test_account_limit_turns_spot_off_for_the_cooldown_and_goes_on_demand_at_once(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    limit = proxy.fail_offering("MaxSpotInstanceCountExceeded", market="spot")

    run = pool.init(size=2, spot_pool_instance_types=TYPES, spot_pool_cooldown=COOLDOWN)
    assert run.rc == 0, run.stdout[-3000:]
    init = task_result(run, "spot_pool_init")
    assert init["counts"]["fallback"] == 2 and init["counts"]["ready"] == 2, init["counts"]
    # On-Demand in the same pass, right after the refused Spot fleet: no waiting, no second Spot attempt.
    spot, on_demand = fleets(proxy)
    assert spot.params["TargetCapacitySpecification.DefaultTargetCapacityType"] == "spot"
    assert {e.code for e in spot.fleet_errors} == {"MaxSpotInstanceCountExceeded"} and not spot.instance_ids
    assert on_demand.params["TargetCapacitySpecification.DefaultTargetCapacityType"] == "on-demand"
    assert on_demand.seq == spot.seq + 1 and on_demand.started - spot.started < 1.0
    assert sorted(on_demand.instance_ids) == sorted(init["launched"])
    [cooldown] = init["cooldowns"]
    assert (cooldown["scope"], cooldown["market"], cooldown["code"]) == ("market", "spot",
                                                                         "MaxSpotInstanceCountExceeded")
    until = epoch(cooldown["until"])
    # init left the refill job running: it has fallbacks to replace by Spot once Spot is back.
    wait_until(lambda: refill_running(pool), timeout=5, what="the refill job init started")

    # During the cool-down the job launches a missing instance On-Demand without asking Spot at all, and asks
    # Spot again only once the cool-down is over; a second account limit turns Spot off again.
    proxy.remove_rule(limit)
    proxy.fail_offering("VcpuLimitExceeded", market="spot")
    cooling_from = time.time()
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["type"] == "fallback", got
    first = wait_until(lambda: fleets(proxy, since=cooling_from, answered=True), timeout=20,
                       what="the refill's fleet")[0]
    assert first.started < until
    assert first.params["TargetCapacitySpecification.DefaultTargetCapacityType"] == "on-demand"
    assert len(first.instance_ids) == 1
    asked_again = wait_until(lambda: fleets(proxy, market="spot", since=cooling_from, answered=True),
                             timeout=COOLDOWN + 15,
                             what="Spot asked again after the cool-down")[0]
    assert asked_again.started >= until - 1  # the file keeps whole seconds
    assert {e.code for e in asked_again.fleet_errors} == {"VcpuLimitExceeded"}
    passes = [line for line in pool.refill_log.read_text().splitlines()
              if '"reconciled"' in line and epoch(json.loads(line)["time"]) < until - 1]
    assert len(passes) >= 2, "the job did look at the pool during the cool-down"
    print(f"account limit: {len(passes)} passes and 0 Spot requests in the cool-down, On-Demand "
          f"{(on_demand.started - spot.started) * 1000:.0f} ms after the refusal, Spot asked again "
          f"{asked_again.started - until:+.1f}s from the cool-down's end")
    assert proxy.offering_requests(market="spot", since=spot.started + 0.001) == \
        proxy.offering_requests(market="spot", since=asked_again.started)
    state = wait_until(lambda: [c for c in pool.state()["cooldowns"] if c["code"] == "VcpuLimitExceeded"] and
                       pool.state(), timeout=10, what="the new cool-down recorded")
    assert [(c["scope"], c["market"]) for c in state["cooldowns"]] == [("market", "spot")]
    state = assert_consistent(pool)
    assert [e["type"] for e in state["instances"]] == ["fallback", "fallback"]


def test_full_subnet_cools_down_the_subnet_for_every_type(faulty_pool):
    pool, proxy, ec2 = faulty_pool, faulty_pool.proxy, faulty_pool.ec2
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    full = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    spare = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.2.0/24", AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    proxy.fail_offering("InsufficientFreeAddressesInSubnet", subnet_id=full)

    run = pool.init(size=2, spot_pool_instance_types=TYPES, spot_pool_subnet_ids=[full, spare],
                    spot_pool_cooldown=30)
    assert run.rc == 0, run.stdout[-3000:]
    init = task_result(run, "spot_pool_init")
    assert init["counts"]["spot"] == 2 and init["counts"]["ready"] == 2, init["counts"]
    [fleet] = fleets(proxy)
    assert [(e.offering.subnet_id, e.code) for e in fleet.fleet_errors] == \
        [(full, "InsufficientFreeAddressesInSubnet")]
    [cooldown] = init["cooldowns"]
    assert (cooldown["scope"], cooldown["location"]) == ("subnet", full)
    until = epoch(cooldown["until"])
    assert {pool.instance(e["id"])["SubnetId"] for e in pool.state()["instances"]} == {spare}

    # The refill's fleet leaves the full subnet out for both instance types, Spot and On-Demand alike.
    cooling_from = time.time()
    rc, got = pool.module("spot_pool_get")
    assert rc == 0, got
    wait_refill_done(pool)
    assert_consistent(pool)
    during = fleets(proxy, since=cooling_from)
    assert len(during) == 1 and during[0].started < until
    assert proxy.offering_requests(subnet_id=full, since=cooling_from) == []
    assert set(_offerings(during)) == {("spot", "t3.micro", spare), ("spot", "t3.small", spare)}


def test_throttling_is_retried_with_backoff_and_a_cap(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    # Two throttled fleet requests and two 5xx answers to DescribeInstances, then EC2 answers again.
    proxy.fail("CreateFleet", "RequestLimitExceeded", times=2)
    proxy.fail("DescribeInstances", "Unavailable", times=2)

    run = pool.init(size=2)
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_init")["counts"]["spot"] == 2
    attempts = fleets(proxy)
    assert [(r.outcome, r.status) for r in attempts] == [("injected", 503), ("injected", 503), ("fleet", 200)]
    assert len({r.params["ClientToken"] for r in attempts}) == 1, "a retry repeats the request, token included"
    gaps = [b.started - a.started for a, b in zip(attempts, attempts[1:])]
    assert all(0 < gap < 1.0 + 2.0 + 0.5 for gap in gaps), gaps  # jittered: at most 1 s, then at most 2 s
    describes = proxy.records("DescribeInstances")
    assert [r.status for r in describes[:3]] == [503, 503, 200]
    assert len(launched_by_proxy(proxy)) == 2

    # Throttled for good: 4 attempts of the same request, then the job stops and says why (no retry storm). The
    # request stays pending; the next refill replays it with the same token once EC2 answers again.
    throttled = proxy.fail("CreateFleet", "RequestLimitExceeded")
    started = time.time()
    rc, got = pool.module("spot_pool_get")
    assert rc == 0, got
    state = wait_refill_done(pool, timeout=30)
    stopped_after = time.time() - started
    storm = fleets(proxy, since=started)
    assert len(storm) == 4 and len({r.params["ClientToken"] for r in storm}) == 1, [r.params for r in storm]
    assert "RequestLimitExceeded" in state["refill"]["last_error"], state["refill"]
    assert [p["token"] for p in state["pending_launches"]] == [storm[0].params["ClientToken"]]

    proxy.remove_rule(throttled)
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and "RequestLimitExceeded" in " ".join(got.get("warnings", [])), got
    wait_refill_done(pool)
    state = assert_consistent(pool)
    token = storm[0].params["ClientToken"]
    assert [r.outcome for r in fleets(proxy, token=token)] == ["injected"] * 4 + ["fleet"]
    assert state["refill"]["last_error"] is None
    print(f"capped throttling: {len(storm)} attempts, job stopped after {stopped_after:.1f}s")


@pytest.mark.parametrize("where, action, code, status", [
    ("request", "CreateFleet", "UnauthorizedOperation", 403),
    ("request", "DescribeInstances", "AuthFailure", 401),
    ("override", "CreateFleet", "UnauthorizedOperation", 200),  # in the fleet answer's Errors, for every offering
], ids=["unauthorized-fleet", "auth-failure", "unauthorized-in-fleet-errors"])
def test_auth_error_stops_the_refill_and_is_reported_by_info_and_get(faulty_pool, where, action, code, status):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2).rc == 0
    denied = proxy.fail(action, code) if where == "request" else proxy.fail_offering(code)
    started = time.time()
    # verify=false: the get's own DescribeInstances is not the subject here (it would fail on AuthFailure too).
    rc, got = pool.module("spot_pool_get", verify=False)
    assert rc == 0 and got["refill"]["started"], got
    wait_refill_done(pool, timeout=20)
    attempts = [r for r in proxy.records(action) if r.started >= started]
    assert [r.status for r in attempts] == [status], "asked once, never retried"
    assert launched_by_proxy(proxy, since=started) == []

    info = pool.info()
    assert code in info["refill"]["last_error"] and info["refill"]["running"] is False, info["refill"]
    assert info["counts"]["ready"] == 1 and info["counts"]["leased"] == 1
    # It will not get past this by itself, and info says what to do.
    assert info["refill"]["will_restart"] is False and info["refill"]["pid"] is None, info["refill"]
    assert info["refill"]["fix"].startswith("give the credentials") and "spot_pool_init" in info["refill"]["fix"]

    # The next get hands out the last ready instance and warns; EC2 accepts us again, so its refill heals the pool.
    proxy.remove_rule(denied)
    run = pool.playbook("get_instance.yml")
    assert run.rc == 0, run.stdout[-3000:]
    result = task_result(run, "spot_pool_get")
    assert any(code in warning and "refill" in warning for warning in result.get("warnings", [])), result
    wait_refill_done(pool)
    state = assert_consistent(pool)
    assert state["refill"]["last_error"] is None and len(state["leases"]) == 2


def test_fallback_on_restricts_which_spot_errors_fall_back(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    limit = proxy.fail_offering("MaxSpotInstanceCountExceeded", market="spot")
    only_capacity = ["InsufficientInstanceCapacity"]

    # A cool-down of 0 s: the next init asks Spot again at once (no sleep waiting one out).
    run = pool.init(size=2, spot_pool_fallback_on=only_capacity, spot_pool_cooldown=0)
    assert run.rc != 0
    msg = task_result(run, "spot_pool_init")["msg"]
    assert "MaxSpotInstanceCountExceeded" in msg, msg
    assert fleets(proxy, market="on-demand") == [] and len(fleets(proxy, market="spot")) == 1
    assert pool.tagged_instances() == []

    # A capacity error is in the list: the same pool falls back.
    proxy.remove_rule(limit)
    proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    again = time.time()
    run = pool.init(size=2, spot_pool_fallback_on=only_capacity, spot_pool_cooldown=1)
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_init")["counts"]["fallback"] == 2
    # Spot was asked again (refused for capacity), then On-Demand.
    assert fleets(proxy, market="spot", since=again) and len(fleets(proxy, market="on-demand")) == 1


@pytest.mark.parametrize("fallback_action", ["stop", "terminate"])
def test_fallbacks_are_replaced_by_spot_once_spot_is_back_never_a_leased_one(faulty_pool, fallback_action):
    pool, proxy = faulty_pool, faulty_pool.proxy
    dry = proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    run = pool.init(size=3, spot_pool_cooldown=2, spot_pool_fallback_action=fallback_action)
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_init")["counts"]["fallback"] == 3
    rc, leased = pool.module("spot_pool_get")
    assert rc == 0 and leased["type"] == "fallback", leased

    spot_back = time.time()
    proxy.remove_rule(dry)
    wait_whole(pool, timeout=60, spot=3, fallback=0)
    replaced_after = time.time() - spot_back
    wait_refill_done(pool, timeout=20)
    state = assert_consistent(pool)

    # Every fallback but the leased one was idle: each was replaced (the third new Spot instance fills the leased
    # slot; a fallback the job launched for that slot before Spot came back is replaced like the others).
    fallbacks = set(launched_by_proxy(proxy)) - {e["id"] for e in state["instances"]} - {leased["instance_id"]}
    new_spot = [i for r in fleets(proxy, market="spot", since=spot_back) for i in r.instance_ids]
    assert sorted(new_spot) == sorted(e["id"] for e in state["instances"]), "the pool is the new Spot instances"
    assert len(new_spot) == 3 and len(fallbacks) in (2, 3), (fallbacks, new_spot)
    stopped = instance_ids_in(proxy.records("StopInstances"))
    terminated = instance_ids_in(proxy.records("TerminateInstances"))
    retired, untouched = (stopped, terminated) if fallback_action == "stop" else (terminated, stopped)
    assert sorted(retired) == sorted(fallbacks) and untouched == []
    gone = ("stopping", "stopped") if fallback_action == "stop" else ("shutting-down", "terminated")
    assert all(pool.instance(i)["State"]["Name"] in gone for i in fallbacks)
    # The leased fallback is the job's user's: never stopped, terminated or re-tagged as anything but leased.
    assert leased["instance_id"] not in stopped + terminated
    assert pool.instance(leased["instance_id"])["State"]["Name"] == "running"
    assert [lease["id"] for lease in state["leases"]] == [leased["instance_id"]]
    print(f"replacement ({fallback_action}): {len(new_spot)} new Spot, {len(retired)} idle fallbacks retired, "
          f"leased fallback untouched, whole with Spot {replaced_after:.1f}s after Spot came back")

    # terminate (fallback_action=terminate) ends everything with the pool tag: new Spot, the leased fallback, and
    # the stopped fallbacks that are in neither the pool nor a lease any more.
    run = pool.playbook("terminate_all.yml", spot_pool_fallback_action="terminate")
    assert run.rc == 0, run.stdout[-3000:]
    ended = task_result(run, "spot_pool_terminate")
    assert set(ended["terminated"]) >= set(new_spot) | {leased["instance_id"]}
    assert pool.tagged_instances(states=("pending", "running", "stopping", "stopped")) == []
    assert not pool.state_file.exists()


# -- a stopped refill starts again; what a get learns from EC2 is kept --------------------------------------------
def test_a_refill_stopped_by_an_error_is_started_again_by_the_next_get_that_finds_nothing(faulty_pool):
    """Item 5: a pool of one; its refill stops on UnauthorizedOperation; EC2 recovers. The next get finds 0 ready:
    it must (re)start the refill and say so, instead of failing on the old error for ever."""
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=1).rc == 0
    denied = proxy.fail("CreateFleet", "UnauthorizedOperation")
    rc, first = pool.module("spot_pool_get")
    assert rc == 0 and first["refill"]["started"], first
    wait_refill_done(pool, timeout=20)
    info = pool.info()
    assert "UnauthorizedOperation" in info["refill"]["last_error"] and info["refill"]["will_restart"] is False

    proxy.remove_rule(denied)  # EC2 accepts us again
    run = pool.playbook("get_instance.yml")
    assert run.rc != 0
    msg = task_result(run, "spot_pool_get")["msg"]
    assert msg.startswith("pool 'default' has 0 ready of 1; 0 pending; 1 leased"), msg
    assert "refill error: " in msg and "UnauthorizedOperation" in msg, msg
    assert "the refill job was started (pid " in msg, msg
    state = wait_whole(pool)
    assert state["refill"]["last_error"] is None and [lease["id"] for lease in state["leases"]] == \
        [first["instance_id"]]
    rc, second = pool.module("spot_pool_get")
    assert rc == 0 and second["instance_id"] != first["instance_id"], second
    wait_refill_done(pool)
    assert_consistent(pool)


def test_dead_instances_a_get_finds_stay_dropped_and_the_refill_starts(pool):
    """Item 6: every instance ended outside the pool. The get fails (nothing is running), but what EC2 said is
    recorded (not rolled back with the failed get) and the refill starts, so the pool heals."""
    assert pool.init(size=3).rc == 0
    dead = sorted(entry["id"] for entry in pool.state()["instances"])
    pool.ec2.terminate_instances(InstanceIds=dead)

    run = pool.playbook("get_instance.yml", spot_pool_verify_max_age=0)
    assert run.rc != 0
    msg = task_result(run, "spot_pool_get")["msg"]
    assert msg.startswith("pool 'default' has 0 ready of 3"), msg
    assert "dropped %s" % ", ".join(dead) in msg and "the refill job was started" in msg, msg
    assert not set(dead) & {entry["id"] for entry in pool.info()["pool"]}
    state = wait_whole(pool)
    assert not set(dead) & {entry["id"] for entry in state["instances"]} and len(state["instances"]) == 3
    wait_refill_done(pool)
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["instance_id"] not in dead, got
    wait_refill_done(pool)
    assert_consistent(pool)


def test_the_default_get_never_hands_out_an_instance_ec2_reports_terminated(faulty_pool):
    """Item 7: right after init (the pool was checked a moment ago), the first instance is terminated outside the
    pool. A get with default options asks EC2 about the one it would hand out, drops it and hands out the next:
    one DescribeInstances of one id, then one for the rest."""
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=3).rc == 0
    dead = pool.state()["instances"][0]["id"]
    pool.ec2.terminate_instances(InstanceIds=[dead])
    started = time.time()
    run = pool.playbook("get_instance.yml")
    assert run.rc == 0, run.stdout[-3000:]
    got = task_result(run, "spot_pool_get")
    assert got["instance_id"] != dead and got["verified"] is True and got["dropped"] == [dead], got
    assert pool.instance(got["instance_id"])["State"]["Name"] == "running"
    # The get's calls ask by instance id (the refill's ask by the pool tag).
    asked = [sorted(value for key, value in r.params.items() if key.startswith("Filter.1.Value."))
             for r in proxy.records("DescribeInstances") if r.started >= started
             and r.params.get("Filter.1.Name") == "instance-id"]
    assert asked[0] == [dead] and len(asked) == 2, asked
    assert got["instance_id"] in asked[1] and len(asked[1]) == 2 and dead not in asked[1], asked
    wait_refill_done(pool)
    assert_consistent(pool)
