"""Refill decisions: what one reconcile pass does, and the job's single-instance and hand-over rules."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import ec2
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import jobcontrol
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import refill_plan
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import Cooldowns
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import Offering
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import ensure_template
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import offerings
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.pool import new_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.timefmt import isoformat
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.timefmt import utcnow
from tests.support.moto import POOL_LAUNCH
from tests.support.pool_entries import pool_entry

LAUNCH = POOL_LAUNCH
POOL_ID = "0123456789abcdef"


def pool_state(client, name, size, launch, pool_id=POOL_ID):
    """A new pool's state, as init writes it: its id, and the template made for it."""
    state = new_state(name, size, dict(launch, template=ensure_template(client, name, pool_id, launch)))
    state["pool_id"] = pool_id
    return state


@pytest.fixture
def store(tmp_path, client):
    store = FileStore(str(tmp_path / "state" / "p.json"), "p")
    with store.transaction() as tx:
        tx.state = pool_state(client, "p", 2, LAUNCH)
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
    assert result.dropped == [victim] and result.interrupted == [victim] and len(result.launched) == 1
    state = store.read()
    assert victim not in [e["id"] for e in state["instances"]]
    # Nobody in the pool ended that idle Spot instance: an interruption. Its offering (the only Spot one) cools
    # down, so the replacement is an On-Demand fallback, to be replaced by Spot after the cool-down.
    assert [(c["code"], c["location"]) for c in state["cooldowns"]] == [("SpotInterruption", "us-east-1a")]
    assert [e["type"] for e in state["instances"] if e["id"] in result.launched] == ["fallback"]


def test_an_instance_ec2_does_not_list_yet_is_kept_for_a_grace_period(store, client):
    young = pool_entry("i-0000000000000young", ready=False, launched_at=isoformat(utcnow()))
    old = dict(young, id="i-00000000000000old",
               launched_at=isoformat(utcnow() - datetime.timedelta(seconds=refill_plan.ABSENT_GRACE_SECONDS + 5)))
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

    def launch_then_pool_vanishes(self, count, extra_spot=0):
        launched = real(self, count, extra_spot)
        os.unlink(store.path)
        return launched

    monkeypatch.setattr(refill.Launcher, "launch_instances", launch_then_pool_vanishes)
    with pytest.raises(refill.PoolGone):
        refill.reconcile(store, client)
    assert pool_ids(client) == []


def test_the_job_runs_until_whole_and_a_second_job_is_a_no_op(store, client):
    events = []
    held = store.refill_lock()
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


def test_an_error_that_retrying_cannot_fix_is_recorded_and_ends_the_job(tmp_path, fault_proxy, proxy_client):
    client = proxy_client
    store = FileStore(str(tmp_path / "p.json"), "p")
    with store.transaction() as tx:
        tx.state = pool_state(client, "p", 1, LAUNCH)
    fault_proxy.fail("CreateFleet", "UnauthorizedOperation")
    assert refill.RefillJob(store, client, lambda e, **f: None).run() == 1
    state = store.read()
    assert "UnauthorizedOperation" in state["refill"]["last_error"]
    assert state["pending_launches"] == []  # the refused request is not replayed
    assert fault_proxy.count("CreateFleet") == 1  # not retried: retrying cannot fix it


def _log_events(store):
    try:
        return [json.loads(line)["event"] for line in open(store.refill_log_path())]
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
    assert not store.refill_lock().is_held_elsewhere()


def _wait_for_event(store, event, timeout=60):
    deadline = time.monotonic() + timeout
    while event not in _log_events(store):
        assert time.monotonic() < deadline, "no %r in the refill log: %s" % (event, _log_events(store))
        time.sleep(0.1)


def test_stop_refill_stops_the_real_job_with_sigterm_and_the_job_records_it(proxied):
    store, _client, proxy = proxied
    # No capacity anywhere: the real job keeps retrying (a passing error) until it is told to stop.
    proxy.fail_offering("InsufficientInstanceCapacity")
    env = dict(os.environ, **proxy.env())
    env["EC2SPOT_ENDPOINT_URL"] = proxy.url
    started, pid = jobcontrol.start_refill(store, env)
    assert started
    try:
        _wait_for_event(store, "launch_failed")
        assert store.read()["refill"]["pid"] == pid
        lock = jobcontrol.stop_refill(store, timeout=30)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    try:
        # It ended by itself on SIGTERM (exit 0), not by the SIGKILL that stop_refill sends to a job that does not.
        assert os.waitpid(pid, 0)[1] == 0
        assert _log_events(store)[-1] == "stopped"
        refill_record = store.read()["refill"]
        assert refill_record["pid"] is None and refill_record["finished_at"]
        assert lock.fd is not None  # held by us now: nothing launches until it is released
    finally:
        lock.release()


def test_stop_refill_never_kills_a_lock_holder_that_is_not_the_recorded_job(store):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); time.sleep(60)\n"),
        store.refill_lock().path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with store.transaction() as tx:
            tx.state["refill"]["pid"] = holder.pid
        # The recorded pid is not a refill process of this pool: it is not signalled, and stop_refill gives up
        # cleanly instead.
        with pytest.raises(Exception, match="did not stop"):
            jobcontrol.stop_refill(store, timeout=0.5)
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    lock = jobcontrol.stop_refill(store, timeout=5)
    assert lock.fd is not None
    lock.release()


# -- the pool heals itself ------------------------------------------------------------------------------------
@pytest.fixture
def proxied(tmp_path, fault_proxy, proxy_client):
    """A pool of 2 whose EC2 is the fault proxy (honest instant fleets and ClientToken idempotency)."""
    client = proxy_client
    store = FileStore(str(tmp_path / "p.json"), "p")
    launch = dict(LAUNCH, availability_zones=["us-east-1a", "us-east-1b"], cooldown_seconds=1, orphan_grace_seconds=0)
    with store.transaction() as tx:
        tx.state = pool_state(client, "p", 2, launch)
    return store, client, fault_proxy


def settle(store, client, passes=5):
    for _pass in range(passes):
        result = refill.reconcile(store, client)
        if result.whole:
            return result
    return result


def test_a_fleet_answer_lost_in_a_crash_is_replayed_not_launched_again(proxied):
    store, client, proxy = proxied
    launcher = refill.Launcher(client, "p", store.read()["launch"])
    request = launcher.fleet_request("spot", 2, offerings(store.read()["launch"], "spot"))
    refill._record_pending(store)(request["ClientToken"], request)  # pylint: disable=protected-access
    launched_then = [i for item in client.create_fleet(**request)["Instances"] for i in item["InstanceIds"]]
    # ... and the process died here, before writing the answer. The next pass:
    result = refill.reconcile(store, client)
    assert sorted(result.replayed) == sorted(launched_then) and result.launched == []
    state = store.read()
    assert sorted(e["id"] for e in state["instances"]) == sorted(launched_then)
    assert state["pending_launches"] == []
    assert sorted(pool_ids(client)) == sorted(launched_then)  # nothing launched twice


def test_an_expired_lease_is_ended_by_the_next_pass(proxied):
    store, client, _proxy = proxied
    settle(store, client)
    with store.transaction() as tx:
        lease = tx.state["instances"].pop(0)
        tx.state["leases"].append(dict(lease, leased_at="2026-01-01T00:00:00Z", expires_at="2026-01-01T01:00:00Z"))
        kept = tx.state["instances"][0]
        tx.state["instances"].pop(0)
        tx.state["leases"].append(dict(kept, leased_at="2026-01-01T00:00:00Z"))
    result = refill.reconcile(store, client)
    assert result.expired == [lease["id"]]
    assert states(client, [lease["id"]]) == {lease["id"]: "terminated"}
    state = store.read()
    assert [item["id"] for item in state["leases"]] == [kept["id"]]
    tags = ec2.tag_dict(client.describe_instances(InstanceIds=[kept["id"]])["Reservations"][0]["Instances"][0]["Tags"])
    assert ec2.LEASED_TAG in tags  # a rebuild from tags will know it is leased


def test_orphans_are_marked_then_terminated_and_leases_never_touched(proxied):
    store, client, _proxy = proxied
    settle(store, client)
    with store.transaction() as tx:
        tx.state["leases"].append(dict(tx.state["instances"].pop(0), leased_at="2026-01-01T00:00:00Z"))
    leased = store.read()["leases"][0]["id"]
    orphan = client.run_instances(ImageId=LAUNCH["image_id"], MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "ec2spot:pool", "Value": "p"},
                                              {"Key": "ec2spot:pool-id", "Value": POOL_ID}]}])["Instances"][0]["InstanceId"]
    first = refill.reconcile(store, client)
    assert first.orphans_marked == [orphan] and first.orphans_terminated == []
    second = refill.reconcile(store, client)
    assert second.orphans_terminated == [orphan]
    assert states(client, [orphan, leased]) == {orphan: "terminated", leased: "running"}


def test_fallbacks_are_replaced_by_spot_once_spot_is_back(proxied, monkeypatch):
    store, client, proxy = proxied
    rule = proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    # A cool-down no loaded machine outlasts between two passes (1 s, this pool's, once did: the pass asked Spot).
    with store.transaction() as tx:
        tx.state["launch"]["cooldown_seconds"] = 60
    settle(store, client)
    fallbacks = [e["id"] for e in store.read()["instances"]]
    assert [e["type"] for e in store.read()["instances"]] == ["fallback", "fallback"]
    # While Spot is cooling down, no Spot fleet is asked for (no retry storm).
    since = time.time()
    refill.reconcile(store, client)
    assert proxy.offering_requests(market="spot", since=since) == []
    proxy.remove_rule(rule)
    # The cool-down is over (the pass's clock, not a sleep).
    real_utcnow = refill.utcnow
    monkeypatch.setattr(refill, "utcnow", lambda: real_utcnow() + datetime.timedelta(seconds=61))
    result = settle(store, client)
    state = store.read()
    assert [e["type"] for e in state["instances"]] == ["spot", "spot"] and result.whole
    assert states(client, fallbacks) == {fallbacks[0]: "stopped", fallbacks[1]: "stopped"}


def states(client, ids):
    return {i["InstanceId"]: i["State"]["Name"] for r in client.describe_instances(InstanceIds=ids)["Reservations"]
            for i in r["Instances"]}


def test_an_interruption_in_a_pool_without_zones_cools_down_the_offering_it_asks_for(tmp_path, client):
    launch = dict(LAUNCH, availability_zones=[], instance_types=["t3.micro", "t3.small"])
    store = FileStore(str(tmp_path / "z.json"), "z")
    with store.transaction() as tx:
        tx.state = pool_state(client, "z", 1, launch)
    settle(store, client)
    victim = store.read()["instances"][0]
    client.terminate_instances(InstanceIds=[victim["id"]])
    result = refill.reconcile(store, client)
    assert result.interrupted == [victim["id"]]
    cooldown = store.read()["cooldowns"][0]
    # The pool asks for each type anywhere (no zone): the cool-down must name that offering to block it.
    assert (cooldown["instance_type"], cooldown["location"]) == (victim["instance_type"], None)
    assert Cooldowns(store.read()["cooldowns"]).blocks(Offering("spot", victim["instance_type"]))


def test_a_fleet_refused_for_every_offering_by_authorisation_stops_the_job(proxied):
    store, client, proxy = proxied
    proxy.fail_offering("UnauthorizedOperation")
    events = []
    assert refill.RefillJob(store, client, lambda e, **f: events.append(e)).run() == 1
    assert events[-1] == "failed" and "UnauthorizedOperation" in store.read()["refill"]["last_error"]
    assert proxy.count("CreateFleet") == 1  # not asked again every few seconds for 15 minutes


# -- a stopped refill is seen, and started again ---------------------------------------------------------------------
def test_an_unexpected_error_in_the_job_is_recorded_with_its_pid_cleared(store, client, monkeypatch):
    """Item 16: an unexpected exception in a pass (here the KeyError that a pending launch without `request` once
    raised) used to kill the job with a traceback only its log showed, leaving last_error empty and a stale pid.
    Such a file is now refused at read, naming the field (test_state.py); any other crash is recorded."""
    def crash(*args, **kwargs):
        raise KeyError("request")

    monkeypatch.setattr(refill, "reconcile", crash)
    events = []
    assert refill.RefillJob(store, client, lambda event, **fields: events.append((event, fields))).run() == 1
    recorded = store.read()["refill"]
    assert recorded["pid"] is None and recorded["finished_at"]
    assert recorded["last_error"].startswith("the refill job crashed: KeyError: 'request'")
    assert (recorded["last_error_code"], recorded["last_error_permanent"]) == ("KeyError", True)
    assert events[-1][0] == "crashed" and "Traceback" in events[-1][1]["traceback"]
    status = jobcontrol.refill_status(store, store.read())
    assert status["will_restart"] is False and "read the refill log" in status["fix"]
    assert not store.refill_lock().is_held_elsewhere()


def test_a_job_that_cannot_make_its_client_records_why(store, monkeypatch):
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import connection

    def no_client(*args, **kwargs):
        raise TypeError("bad config")

    monkeypatch.setattr(connection, "client_from_environment", no_client)
    monkeypatch.setattr(refill, "_json_logger", lambda path: lambda event, **fields: None)
    assert refill.main(["--state-file", store.path, "--pool-name", "p"]) == 1
    recorded = store.read()["refill"]
    assert recorded["last_error"] == "the refill job could not start: bad config" and recorded["pid"] is None


def test_info_says_whether_the_job_recovers_by_itself_and_names_the_fix(store):
    def status(**refill_fields):
        with store.transaction() as tx:
            tx.state["refill"] = dict(refill_fields)
        return jobcontrol.refill_status(store, store.read())

    assert (status()["will_restart"], status()["fix"]) == (True, None)
    passing = status(last_error="gave up", last_error_code="GaveUp", last_error_permanent=False)
    assert (passing["will_restart"], passing["fix"]) == (True, None)
    auth = status(last_error="x", last_error_code="AuthFailure", last_error_permanent=True)
    assert auth["will_restart"] is False and auth["fix"].startswith("give the credentials")
    assert "then run ec2spot.pool.spot_pool_init" in auth["fix"]
    template = status(last_error="x", last_error_code="InvalidLaunchTemplateId.NotFound", last_error_permanent=True)
    assert "re-creates the launch template" in template["fix"]
    assert "correct the launch options" in jobcontrol.refill_fix("InvalidAMIID.Malformed", "log")
    # Killed before it could record anything: the pid is not reported as if it ran, and the log is named.
    killed = status(pid=999999, started_at="2026-11-22T10:00:00Z")
    assert killed["pid"] is None and "ended without recording why" in killed["last_error"]
    assert killed["will_restart"] is True


def test_an_error_stops_the_job_as_permanent_or_passing(proxied):
    store, client, proxy = proxied
    proxy.fail("DescribeInstances", "AuthFailure")
    assert refill.RefillJob(store, client, lambda e, **f: None).run() == 1
    recorded = store.read()["refill"]
    assert (recorded["last_error_code"], recorded["last_error_permanent"], recorded["pid"]) == ("AuthFailure", True, None)
    proxy.clear_rules()
    proxy.fail("DescribeInstances", "Unavailable")
    assert refill.RefillJob(store, client, lambda e, **f: None, max_seconds=0).run() == 1
    recorded = store.read()["refill"]
    assert (recorded["last_error_code"], recorded["last_error_permanent"]) == ("Unavailable", False)
