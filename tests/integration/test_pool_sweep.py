"""Nothing leaks and nothing dead is handed out: an interrupted instance is replaced from another offering, expired
leases end, orphans (pool tag, in neither the pool nor a lease) are marked then terminated while leased instances
are never touched, a corrupt pool file is rebuilt from the tags, and terminate leaves no instance with the pool tag
running.
"""

from __future__ import annotations

import time

from tests.integration.conftest import (AMI, POOL_ID_TAG, POOL_TAG, TYPE_TAG, debug_msgs, tags_of, task_result,
                                        wait_until)
from tests.integration.healing import assert_consistent, fleets, instance_ids_in, wait_refill_done

ORPHAN_TAG = "ec2spot:orphan-since"
LEASED_TAG = "ec2spot:leased-at"
NOT_TERMINATED = ("pending", "running", "stopping", "stopped", "shutting-down")


def _stray_instance(pool) -> str:
    """An instance with the pool's tags (name and id) that the pool does not know (a crashed launcher's)."""
    tags = [{"Key": POOL_TAG, "Value": pool.pool_name}, {"Key": POOL_ID_TAG, "Value": pool.pool_id},
            {"Key": TYPE_TAG, "Value": "spot"}]
    return pool.ec2.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                  TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                                  )["Instances"][0]["InstanceId"]


def test_interrupted_spot_instance_is_replaced_from_another_offering(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    types = ["t3.micro", "t3.small"]  # no zones: the pool asks for each type anywhere
    assert pool.init(size=2, spot_pool_instance_types=types, spot_pool_cooldown=30).rc == 0
    first, reclaimed = pool.state()["instances"]
    assert reclaimed["instance_type"] == "t3.micro"
    pool.ec2.terminate_instances(InstanceIds=[reclaimed["id"]])  # EC2 took it back; the pool did not end it

    # A get hands out the live one; its refill sees the idle one died, cools its offering down and replaces both
    # slots from the other offering.
    started = time.time()
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["instance_id"] == first["id"], got
    wait_refill_done(pool)
    state = assert_consistent(pool)
    assert [(c["code"], c["market"], c["instance_type"], c["location"]) for c in state["cooldowns"]] == \
        [("SpotInterruption", "spot", "t3.micro", None)]
    [fleet] = fleets(proxy, since=started)
    assert [o.instance_type for o in fleet.offerings] == ["t3.small"] and len(fleet.instance_ids) == 2
    assert [e["instance_type"] for e in state["instances"]] == ["t3.small", "t3.small"]

    # get with verify asks EC2 first and never hands out an instance that died since.
    dead = state["instances"][0]["id"]
    pool.ec2.terminate_instances(InstanceIds=[dead])
    run = pool.playbook("get_instance.yml", spot_pool_verify_max_age=0)
    assert run.rc == 0, run.stdout[-3000:]
    result = task_result(run, "spot_pool_get")
    assert result["dropped"] == [dead] and result["instance_id"] == state["instances"][1]["id"], result


def test_expired_lease_is_ended_by_a_later_refill(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2).rc == 0
    # A CI job leases for at most 1 s and dies before its release step (no refill yet, so nothing ends it early).
    rc, lost = pool.module("spot_pool_get", lease_ttl=1, refill=False)
    assert rc == 0 and lost["expires_at"], lost
    wait_until(lambda: [lease for lease in pool.info()["leases"] if lease["expired"]], timeout=5,
               what="info shows the lease as expired")
    assert pool.instance(lost["instance_id"])["State"]["Name"] == "running"

    # The next get's refill ends it (a Spot instance: terminated) and refills both slots.
    run = pool.playbook("get_instance.yml")
    assert run.rc == 0, run.stdout[-3000:]
    current = task_result(run, "spot_pool_get")["instance_id"]
    wait_refill_done(pool)
    state = assert_consistent(pool)
    assert [lease["id"] for lease in state["leases"]] == [current]
    assert pool.instance(lost["instance_id"])["State"]["Name"] in ("shutting-down", "terminated")
    assert instance_ids_in(proxy.records("TerminateInstances")) == [lost["instance_id"]]


def test_orphans_are_marked_then_terminated_and_a_leased_instance_is_never_touched(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    grace = 3  # longer than init's two passes (1 s apart), so the first init only marks
    assert pool.init(size=1, spot_pool_orphan_grace=grace).rc == 0
    rc, leased = pool.module("spot_pool_get", refill=False)
    assert rc == 0, leased
    orphan = _stray_instance(pool)
    born = time.time()

    # A pass after the boot grace marks the orphan; the leased instance is tagged as leased, never as an orphan, and
    # the replacement just launched for the lease is in the pool.
    wait_until(lambda: time.time() >= born + grace, timeout=5, what="the orphan older than the grace")
    run = pool.init(size=1, spot_pool_orphan_grace=grace)
    assert run.rc == 0, run.stdout[-3000:]
    assert ORPHAN_TAG in tags_of(pool.instance(orphan)) and pool.instance(orphan)["State"]["Name"] == "running"
    assert LEASED_TAG in tags_of(pool.instance(leased["instance_id"]))
    marked_at = time.time()

    # A pass once the mark is older than the grace terminates it.
    wait_until(lambda: time.time() >= marked_at + grace, timeout=5, what="the mark older than the grace")
    run = pool.init(size=1, spot_pool_orphan_grace=grace)
    assert run.rc == 0, run.stdout[-3000:]
    assert pool.instance(orphan)["State"]["Name"] in ("shutting-down", "terminated")
    assert instance_ids_in(proxy.records("TerminateInstances")) == [orphan], "the orphan, nothing else"
    tagged_orphan = [r for r in proxy.records("CreateTags") if any(v == ORPHAN_TAG for v in r.params.values())]
    assert instance_ids_in(tagged_orphan) == [orphan], "marked once, and nothing else was marked"
    leased_now = pool.instance(leased["instance_id"])
    assert leased_now["State"]["Name"] == "running" and ORPHAN_TAG not in tags_of(leased_now)
    state = assert_consistent(pool)
    assert [lease["id"] for lease in state["leases"]] == [leased["instance_id"]]

    # terminate sweeps everything with the pool tag, including a fresh orphan no pass has seen yet.
    fresh = _stray_instance(pool)
    run = pool.playbook("terminate_all.yml")
    assert run.rc == 0, run.stdout[-3000:]
    ended = task_result(run, "spot_pool_terminate")
    assert fresh in ended["orphans"] and {fresh, leased["instance_id"]} <= set(ended["terminated"])
    assert pool.tagged_instances(states=("pending", "running", "stopping", "stopped")) == []


def test_rebuild_from_tags_after_the_pool_file_is_corrupted(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2).rc == 0
    run = pool.playbook("get_instance.yml")
    assert run.rc == 0, run.stdout[-3000:]
    leased = task_result(run, "spot_pool_get")["instance_id"]
    before = wait_refill_done(pool)  # the job refilled the slot and tagged the lease
    assert LEASED_TAG in tags_of(pool.instance(leased))
    idle = sorted(e["id"] for e in before["instances"])

    pool_id = pool.pool_id
    garbage = b'{"version": 1, "instances": [{"id": "i-0'
    pool.state_file.write_bytes(garbage)
    fleets_before = proxy.count("CreateFleet")
    # Torn: nothing says it is this pool's file, so a plain rebuild moves nothing; force_rebuild is the choice.
    run = pool.init(size=2, spot_pool_rebuild=True)
    assert run.rc != 0 and "force_rebuild" in task_result(run, "spot_pool_init")["msg"]
    assert pool.state_bytes() == garbage
    # Nor does it say which pool of the name was its own: force_rebuild names the pool by its id.
    run = pool.init(size=2, spot_pool_force_rebuild=True)
    assert run.rc != 0 and f"pool id {pool_id} (3 instances, 1 leased)" in task_result(run, "spot_pool_init")["msg"]
    assert pool.state_bytes() == garbage
    run = pool.init(size=2, spot_pool_force_rebuild=True, spot_pool_id=pool_id)
    assert run.rc == 0, run.stdout[-3000:]
    rebuilt = task_result(run, "spot_pool_init")
    aside = rebuilt["moved_aside"]
    assert aside.startswith(str(pool.state_file) + ".corrupt-") and open(aside, "rb").read() == garbage
    assert rebuilt["launched"] == [] and proxy.count("CreateFleet") == fleets_before, "rebuilt, not relaunched"
    state = assert_consistent(pool)
    assert sorted(e["id"] for e in state["instances"]) == idle
    assert [lease["id"] for lease in state["leases"]] == [leased]

    # The lease survived the rebuild: releasing "the most recent lease" finds it.
    run = pool.playbook("release_instance.yml", spot_pool_instance_id="latest")
    assert run.rc == 0, run.stdout[-3000:]
    assert debug_msgs(run) == [f"{leased}: terminate"]
    assert pool.state()["leases"] == []
