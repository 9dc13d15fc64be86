"""Refill decisions: what one reconcile pass does, and the job's single-instance and hand-over rules."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

import boto3
import pytest
from botocore.config import Config

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import jobcontrol
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.connection import BOTOCORE_CONFIG
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import PoolStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import isoformat
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import new_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import utcnow
from tests.support.moto import REGION

LAUNCH = {"image_id": "ami-12c6146b", "instance_types": ["t3.micro"], "availability_zones": ["us-east-1a"],
          "fallback": True, "region": REGION}


@pytest.fixture
def client(aws_env):
    return boto3.client("ec2", region_name=REGION, endpoint_url=aws_env["AWS_URL"], config=Config(**BOTOCORE_CONFIG))


@pytest.fixture
def store(tmp_path):
    store = PoolStore(str(tmp_path / "state" / "p.json"), "p")
    with store.transaction() as tx:
        tx.state = new_state("p", 2, dict(LAUNCH))
    return store


def pool_ids(client):
    return sorted(i["InstanceId"] for r in client.describe_instances(
        Filters=[{"Name": "tag:ec2spot:pool", "Values": ["p"]},
                 {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
        for i in r["Instances"])


def test_first_pass_launches_what_is_missing_with_null_ips_then_fills_them(store, client):
    first = refill.reconcile(store, client)
    assert len(first.launched) == 2 and not first.whole
    assert [e["ip"] for e in store.read()["instances"]] == [None, None]
    second = refill.reconcile(store, client)
    assert second.launched == [] and second.whole
    state = store.read()
    assert all(e["ip"] for e in state["instances"])
    assert sorted(e["id"] for e in state["instances"]) == pool_ids(client)
    assert state["refill"]["verified_at"]


def test_dead_instances_are_dropped_and_replaced(store, client):
    refill.reconcile(store, client)
    victim = store.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[victim])
    result = refill.reconcile(store, client)
    assert result.dropped == [victim] and len(result.launched) == 1
    assert victim not in [e["id"] for e in store.read()["instances"]]


def test_an_instance_ec2_does_not_list_yet_is_kept_for_a_grace_period(store, client):
    young = {"id": "i-0000000000000young", "ip": None, "type": "spot",
             "launched_at": isoformat(utcnow())}
    old = dict(young, id="i-00000000000000old",
               launched_at=isoformat(utcnow() - datetime.timedelta(seconds=refill.ABSENT_GRACE_SECONDS + 5)))
    with store.transaction() as tx:
        tx.state["instances"] = [young, old]
    result = refill.reconcile(store, client, launch=False)
    assert result.dropped == [old["id"]]
    assert [e["id"] for e in store.read()["instances"]] == [young["id"]]


def test_leases_taken_during_a_pass_are_not_undone(store, client):
    refill.reconcile(store, client)
    refill.reconcile(store, client)
    taken = store.read()["instances"][0]
    with store.transaction() as tx:  # what `get` does between two passes
        tx.state["instances"].remove(taken)
        tx.state["leases"].append(taken)
    result = refill.reconcile(store, client)
    state = store.read()
    assert len(result.launched) == 1
    assert taken["id"] not in [e["id"] for e in state["instances"]] and state["leases"][0]["id"] == taken["id"]


def test_a_pool_terminated_during_the_launch_leaks_nothing(store, client, monkeypatch):
    real = refill.Launcher.launch_instances

    def launch_then_pool_vanishes(self, count):
        launched = real(self, count)
        os.unlink(store.path)
        return launched

    monkeypatch.setattr(refill.Launcher, "launch_instances", launch_then_pool_vanishes)
    with pytest.raises(refill.PoolGone):
        refill.reconcile(store, client)
    assert pool_ids(client) == []


def test_the_job_runs_until_whole_and_a_second_job_is_a_no_op(store, client):
    events = []
    held = jobcontrol.refill_lock(store)
    assert held.acquire(blocking=False)
    assert refill.RefillJob(store, client, lambda e, **f: events.append(e)).run() == 0
    assert events == ["already_running"]
    held.release()
    events.clear()
    assert refill.RefillJob(store, client, lambda e, **f: events.append(e)).run() == 0
    assert events[0] == "started" and events[-1] == "finished"
    state = store.read()
    assert len(state["instances"]) == 2 and all(e["ip"] for e in state["instances"])
    assert state["refill"]["pid"] is None and state["refill"]["last_error"] is None


def test_a_get_between_the_last_pass_and_the_exit_is_not_missed(store, client, monkeypatch):
    """The job sees the pool whole; a get takes an instance and sees the job's lock still held, so it starts no
    job. The job must notice after releasing its lock (the hand-over) and carry on."""
    job = refill.RefillJob(store, client, lambda e, **f: None)
    real_handed_over = job._handed_over  # pylint: disable=protected-access
    calls = []

    def get_sneaks_in():
        if not calls:
            with store.transaction() as tx:
                taken = tx.state["instances"].pop(0)
                tx.state["leases"].append(taken)
        calls.append(1)
        return real_handed_over()

    monkeypatch.setattr(job, "_handed_over", get_sneaks_in)
    assert job.run() == 0
    assert len(calls) == 2
    state = store.read()
    assert len(state["instances"]) == 2 and len(state["leases"]) == 1


def test_an_error_that_retrying_cannot_fix_is_recorded_and_ends_the_job(store, fault_proxy):
    fault_proxy.fail("RunInstances", "UnauthorizedOperation")
    client = boto3.client("ec2", region_name=REGION, endpoint_url=fault_proxy.url, aws_access_key_id="t",
                          aws_secret_access_key="t", config=Config(**BOTOCORE_CONFIG))
    assert refill.RefillJob(store, client, lambda e, **f: None).run() == 1
    assert "UnauthorizedOperation" in store.read()["refill"]["last_error"]


def _log_events(store):
    try:
        return [json.loads(line)["event"] for line in open(jobcontrol.log_path(store))]
    except FileNotFoundError:
        return []


def test_the_detached_job_runs_on_its_own_and_logs_json(store, aws_env):
    env = dict(os.environ, **aws_env)
    env["EC2SPOT_ENDPOINT_URL"] = aws_env["AWS_URL"]
    started, pid = jobcontrol.start_refill(store, env)
    assert started and pid
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not {"finished", "failed", "gave_up"} & set(_log_events(store)):
        time.sleep(0.2)
    events = _log_events(store)
    assert events[0] == "started" and events[-1] == "finished", events
    assert len(store.read()["instances"]) == 2
    assert not jobcontrol.refill_lock(store).is_held_elsewhere()


def test_stop_refill_stops_a_running_job_and_holds_its_lock(store, aws_env):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", jobcontrol.REFILL_MODULE,
                                store.path], start_new_session=True)
    try:
        with store.transaction() as tx:
            tx.state["refill"]["pid"] = sleeper.pid
        holder = subprocess.Popen([sys.executable, "-c", (
            "import fcntl, os, signal, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); os.waitpid(int(sys.argv[2]), 0) if False else time.sleep(60)\n"),
            jobcontrol.refill_lock(store).path, str(sleeper.pid)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        # The lock holder is not the recorded pid, so stop_refill signals the recorded job, waits, then gives up
        # cleanly instead of killing an unrelated process.
        with pytest.raises(Exception, match="did not stop"):
            jobcontrol.stop_refill(store, timeout=0.5)
        holder.kill()
        holder.wait()
        lock = jobcontrol.stop_refill(store, timeout=5)
        assert jobcontrol.refill_lock(store).is_held_elsewhere()
        lock.release()
    finally:
        sleeper.kill()
        sleeper.wait()
