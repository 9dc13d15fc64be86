"""spot_pool_reconcile through ansible-playbook (playbooks/reconcile_pool.yml) against moto behind the fault proxy:
the scheduled pass ends an expired lease that no get will ever see, sweeps orphans (marked, then ended on a later
pass), replaces a dead instance, with wait makes the pool whole, in check mode reports its plan and changes nothing,
refuses a pool that does not exist, and leaves the work to a running refill job instead of stopping it.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from tests.integration.conftest import AMI, POOL_ID_TAG, POOL_TAG, TYPE_TAG, tags_of, task_result, wait_until
from tests.integration.healing import assert_consistent, instance_ids_in, wait_refill_done

ORPHAN_TAG = "ec2spot:orphan-since"
# Every EC2 call that changes something: check mode must make none of them.
WRITES = ("CreateFleet", "RunInstances", "CreateTags", "DeleteTags", "TerminateInstances", "StopInstances",
          "StartInstances", "CreateLaunchTemplate", "CreateLaunchTemplateVersion", "DeleteLaunchTemplate")
TWO_TYPES = ["t3.micro", "t3.small"]  # an interrupted offering cools down; the other one still launches Spot


def reconcile(pool, check=False, **extra_vars):
    run = pool.playbook("reconcile_pool.yml", check=check, **extra_vars)
    return run, task_result(run, "spot_pool_reconcile")


def writes(proxy) -> dict[str, int]:
    return {action: count for action in WRITES if (count := proxy.count(action))}


def stray_instance(pool) -> str:
    """An instance with the pool's tags (name and id) that the pool does not know (a crashed launcher's)."""
    tags = [{"Key": POOL_TAG, "Value": pool.pool_name}, {"Key": POOL_ID_TAG, "Value": pool.pool_id},
            {"Key": TYPE_TAG, "Value": "spot"}]
    return pool.ec2.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                  TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                                  )["Instances"][0]["InstanceId"]


def expired_lease(pool) -> str:
    """A lease of at most 1 s whose CI job died before its release step; no refill job was started for it."""
    rc, lost = pool.module("spot_pool_get", lease_ttl=1, refill=False)
    assert rc == 0 and lost["expires_at"], lost
    wait_until(lambda: [lease for lease in pool.info()["leases"] if lease["expired"]], timeout=5,
               what="info shows the lease as expired")
    return lost["instance_id"]


def directory_listing(path) -> dict[str, tuple[int, int]]:
    return {name: (os.lstat(path / name).st_size, os.lstat(path / name).st_mtime_ns) for name in os.listdir(path)}


def test_an_expired_lease_with_no_get_in_sight_is_ended_by_reconcile(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2).rc == 0
    lost = expired_lease(pool)
    assert pool.instance(lost)["State"]["Name"] == "running"
    proxy.clear_records()

    run, result = reconcile(pool)
    assert run.rc == 0, run.stdout[-3000:]
    assert result["changed"] and result["passes"] == 1 and not result["refill_running"], result
    assert result["expired"] == [lost]
    assert len(result["launched"]) == 1, "the lease's slot is filled again"
    assert pool.instance(lost)["State"]["Name"] in ("shutting-down", "terminated"), "a Spot instance is terminated"
    assert instance_ids_in(proxy.records("TerminateInstances")) == [lost]
    state = assert_consistent(pool, whole=result["whole"])
    assert state["leases"] == []
    assert pool.refill_pids() == [], "a scheduled pass leaves no process behind"


def test_an_orphan_is_marked_then_terminated_on_the_next_pass(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=1, spot_pool_orphan_grace=0).rc == 0
    wait_refill_done(pool)
    orphan = stray_instance(pool)
    proxy.clear_records()

    run, first = reconcile(pool)
    assert run.rc == 0, run.stdout[-3000:]
    assert first["orphans_marked"] == [orphan] and first["orphans_terminated"] == [] and first["changed"], first
    assert ORPHAN_TAG in tags_of(pool.instance(orphan)) and pool.instance(orphan)["State"]["Name"] == "running"

    run, second = reconcile(pool)
    assert run.rc == 0, run.stdout[-3000:]
    assert second["orphans_terminated"] == [orphan] and second["orphans_marked"] == [], second
    assert pool.instance(orphan)["State"]["Name"] in ("shutting-down", "terminated")
    assert instance_ids_in(proxy.records("TerminateInstances")) == [orphan], "the orphan, nothing else"
    assert_consistent(pool)

    run, third = reconcile(pool)
    assert run.rc == 0 and not third["changed"], third  # nothing left to do: a whole pool is left as it is
    assert writes(proxy).get("TerminateInstances") == 1 and "CreateFleet" not in writes(proxy)


def test_a_dead_instance_is_replaced(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2, spot_pool_instance_types=TWO_TYPES).rc == 0
    dead, alive = pool.state()["instances"]
    pool.ec2.terminate_instances(InstanceIds=[dead["id"]])  # EC2 took it back; the pool did not end it
    proxy.clear_records()

    run, result = reconcile(pool)
    assert run.rc == 0, run.stdout[-3000:]
    assert result["dropped"] == [dead["id"]] and result["interrupted"] == [dead["id"]], result
    [replacement] = result["launched"]
    assert proxy.count("CreateFleet") >= 1
    ids = [entry["id"] for entry in pool.state()["instances"]]
    assert sorted(ids) == sorted([alive["id"], replacement])
    assert_consistent(pool, whole=result["whole"])


def test_wait_makes_the_pool_whole(faulty_pool):
    pool = faulty_pool
    assert pool.init(size=2, spot_pool_instance_types=TWO_TYPES).rc == 0
    gone = [entry["id"] for entry in pool.state()["instances"]]
    pool.ec2.terminate_instances(InstanceIds=gone)

    run, result = reconcile(pool, spot_pool_wait=True, spot_pool_wait_timeout=60)
    assert run.rc == 0, run.stdout[-3000:]
    assert result["whole"] and result["counts"]["ready"] == 2 and result["counts"]["pending"] == 0, result
    assert sorted(result["dropped"]) == sorted(gone) and len(result["launched"]) == 2
    state = assert_consistent(pool, whole=True)
    assert not set(gone) & {entry["id"] for entry in state["instances"]}


def test_check_mode_reports_the_plan_and_changes_nothing(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2, spot_pool_orphan_grace=0, spot_pool_instance_types=TWO_TYPES).rc == 0
    wait_refill_done(pool)
    lost = expired_lease(pool)
    [dead] = [entry["id"] for entry in pool.state()["instances"]]
    pool.ec2.terminate_instances(InstanceIds=[dead])
    orphan = stray_instance(pool)
    before, listing = pool.state_bytes(), directory_listing(pool.state_dir)
    proxy.clear_records()

    run, checked = reconcile(pool, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    plan = checked["plan"]
    assert checked["changed"] and checked["passes"] == 0, checked
    assert plan["end_expired"] == [lost] and plan["mark_orphans"] == [orphan] and plan["end_orphans"] == []
    assert plan["drop"] == [dead] and plan["interrupted"] == [dead]
    assert plan["launch"] == 2 and plan["replay"] == [] and plan["fallback_action"] == "stop"
    assert writes(proxy) == {}, "check mode launches, tags and ends nothing"
    assert proxy.count("DescribeInstances") >= 1
    assert pool.state_bytes() == before and directory_listing(pool.state_dir) == listing
    assert pool.instance(lost)["State"]["Name"] == "running" and ORPHAN_TAG not in tags_of(pool.instance(orphan))

    # The pass then does what the plan said.
    run, done = reconcile(pool)
    assert run.rc == 0, run.stdout[-3000:]
    assert done["expired"] == plan["end_expired"] and done["orphans_marked"] == plan["mark_orphans"]
    assert done["dropped"] == plan["drop"] and len(done["launched"]) == plan["launch"]


@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_a_missing_pool_is_a_clear_error_and_nothing_is_created(faulty_pool, check):
    pool, proxy = faulty_pool, faulty_pool.proxy
    run, result = reconcile(pool, check=check)
    assert run.rc != 0 and result.get("failed"), result
    assert f"pool '{pool.pool_name}' does not exist" in result["msg"] and "spot_pool_init" in result["msg"]
    assert str(pool.state_file) in result["msg"]
    assert not pool.state_dir.exists(), "no state directory, lock or file made for a pool that does not exist"
    assert proxy.count() == 0 or writes(proxy) == {}


def test_a_running_refill_job_is_left_to_its_work(faulty_pool):
    pool, proxy = faulty_pool, faulty_pool.proxy
    assert pool.init(size=2, spot_pool_instance_types=TWO_TYPES).rc == 0
    wait_refill_done(pool)
    dead = pool.state()["instances"][0]["id"]
    pool.ec2.terminate_instances(InstanceIds=[dead])
    # Hold the pool's refill lock the way a running refill job holds it.
    job_lock = FileStore(str(pool.state_file), pool.pool_name).refill_lock()
    assert job_lock.acquire(blocking=False)
    try:
        before = pool.state_bytes()
        proxy.clear_records()
        run, skipped = reconcile(pool)
        assert run.rc == 0, run.stdout[-3000:]
        assert skipped["refill_running"] and not skipped["changed"] and skipped["passes"] == 0, skipped
        assert "the refill job is running; it does the same work" in skipped["msg"]
        assert skipped["dropped"] == [] and skipped["launched"] == []

        run, waited = reconcile(pool, spot_pool_wait=True, spot_pool_wait_timeout=1)
        assert run.rc != 0 and "refill job" in waited["msg"] and "wait_timeout=1" in waited["msg"], waited
        assert waited["refill_running"] is True

        run, checked = reconcile(pool, check=True)
        assert run.rc == 0 and checked["refill_running"] and checked["plan"]["drop"] == [dead], checked
        assert writes(proxy) == {} and pool.state_bytes() == before, "nothing done while the job holds the lock"
    finally:
        job_lock.release()

    run, result = reconcile(pool, spot_pool_wait=True, spot_pool_wait_timeout=60)
    assert run.rc == 0, run.stdout[-3000:]
    assert result["dropped"] == [dead] and result["whole"] and not result["refill_running"], result
    assert_consistent(pool)
