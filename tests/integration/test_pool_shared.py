"""A pool shared by several controllers through one DynamoDB table (issue 11, "What must be shown"), through
ansible-playbook against moto behind the fault proxy. Each controller is a separate process tree with its own HOME,
XDG_STATE_HOME and state directory (and, where the machine allows, its own PID and UTS namespaces): they share
nothing but the AWS side. The harness is tests/integration/controllers.py; its teardown (the `shared_pool`
fixture) terminates the pool and proves that no process of any controller outlived the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.conftest import AMI, POOL_ID_TAG, POOL_TAG, TYPE_TAG, task_result, wait_until
from tests.integration.controllers import at_once, namespaces_available

POOL = "shared"
NO_READY = re.compile(rf"pool '{POOL}' has 0 ready of 10")


def got(run) -> dict:
    result = task_result(run, "spot_pool_get")
    assert run.rc == 0, result.get("msg")
    return result


# -- the harness itself -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not namespaces_available(), reason="needs PID/UTS namespaces (root, util-linux unshare)")
def test_controllers_are_separate_machines(shared_pool):
    """Each controller sees only its own processes and has its own host name and HOME; the teardown finds and
    kills a process a controller left behind, and says so."""
    a, b = shared_pool.start(2, store="file")
    probe = ("import os, socket, json; print(json.dumps([socket.gethostname(), os.getpid(), "
             "sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.environ['HOME']]))")
    seen = {}
    for controller in (a, b):
        out = subprocess.run(controller.wrapper + [sys.executable, "-c", probe], env=controller.env,
                             capture_output=True, text=True, check=True).stdout
        seen[controller.name] = json.loads(out)
    assert seen["a"][0] == "ctl-a" and seen["b"][0] == "ctl-b"
    for name, (_host, pid, pids, _home) in seen.items():
        assert pids == sorted({1, pid}), f"{name} sees only its own processes (its init is pid 1): {pids}"
    assert seen["a"][3] == str(a.home) and seen["b"][3] == str(b.home)

    # A process a controller left behind (a refill job that never stopped) is found by the controller's marker,
    # reported by the teardown and killed with the controller's namespace.
    stray = subprocess.Popen(b.wrapper + [sys.executable, "-c", "import time; time.sleep(120)"], env=b.env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(b.processes, timeout=10, interval=0.05, what="the stray process seen as b's")
        assert not a.processes(), "and not as a's"
        problems = shared_pool.end(grace=0.5)
        assert len(problems) == 1 and "processes of <controller b (file)> outlived the test" in problems[0], problems
    finally:
        stray.kill()
        stray.wait(timeout=10)
    assert not b.processes() and not a.processes()


# -- 16 concurrent gets on a pool of 10 -------------------------------------------------------------------------
def sixteen_gets(shared_pool, controllers) -> tuple[list[dict], list[str]]:
    """16 get_instance.yml runs released at the same moment, 16 / len(controllers) from each controller, with no
    launch possible meanwhile (every offering has no capacity: the refill jobs the gets start cannot add a ready
    instance during the race). Returns (the successful results, the failures' messages)."""
    shared_pool.proxy.fail_offering("InsufficientInstanceCapacity")
    runs = at_once([controller.get for controller in controllers for _turn in range(16 // len(controllers))])
    results = [task_result(run, "spot_pool_get") for run in runs]
    return ([r for run, r in zip(runs, results) if run.rc == 0],
            [r.get("msg", "") for run, r in zip(runs, results) if run.rc != 0])


def assert_ten_distinct_and_six_clear_failures(ok, failures):
    ids = [r["instance_id"] for r in ok]
    assert len(ids) == 10 and len(set(ids)) == 10, f"duplicates or a wrong count: {sorted(ids)}"
    assert len({r["lease_id"] for r in ok}) == 10
    assert len(failures) == 6 and all(NO_READY.search(msg) for msg in failures), failures
    return ids


def test_sixteen_gets_from_four_controllers_hand_out_ten_distinct_instances(shared_pool):
    controllers = shared_pool.start(4)
    run = controllers[0].init(size=10)
    assert run.rc == 0, task_result(run, "spot_pool_init").get("msg")
    assert len(shared_pool.require_state()["instances"]) == 10

    ok, failures = sixteen_gets(shared_pool, controllers)
    ids = assert_ten_distinct_and_six_clear_failures(ok, failures)
    state = shared_pool.require_state()
    assert sorted(lease["id"] for lease in state["leases"]) == sorted(ids), "the table holds exactly these leases"
    assert state["instances"] == []


def test_sixteen_gets_on_one_controller_with_the_file_store(shared_pool):
    [controller] = shared_pool.start(1, store="file")
    run = controller.init(size=10)
    assert run.rc == 0, task_result(run, "spot_pool_init").get("msg")

    ok, failures = sixteen_gets(shared_pool, [controller])
    ids = assert_ten_distinct_and_six_clear_failures(ok, failures)
    state = controller.file_state()
    assert sorted(lease["id"] for lease in state["leases"]) == sorted(ids) and state["instances"] == []
    assert shared_pool.state() is None, "the file store wrote nothing to DynamoDB"


# -- one controller's lease, another's release, a third's terminate ---------------------------------------------
def test_a_lease_is_released_from_another_controller_and_a_third_terminates_the_pool(shared_pool):
    a, b, c = shared_pool.start(3)
    assert a.init(size=2).rc == 0
    lease = got(a.get())

    run = b.playbook("release_instance.yml", spot_pool_instance_id=lease["instance_id"])
    released = task_result(run, "spot_pool_release")
    assert run.rc == 0 and released["changed"] and released["instance_id"] == lease["instance_id"], released
    assert shared_pool.instance_state(lease["instance_id"]) in ("shutting-down", "terminated")
    assert lease["instance_id"] not in {held["id"] for held in shared_pool.require_state()["leases"]}

    wait_refill_done(a)  # the pool is whole again (a running job on another machine: the next test)
    run = c.playbook("terminate_all.yml", spot_pool_fallback_action="terminate")
    assert run.rc == 0, task_result(run, "spot_pool_terminate").get("msg")
    assert shared_pool.tagged_instances() == [], "0 instances with the pool tag are left"
    assert shared_pool.items() == [], "no item of the pool is left in the table"


def test_a_terminate_stops_another_controllers_refill_job(shared_pool):
    a, c = shared_pool.start(2)
    if not a.isolated:  # in one PID namespace c could signal a's job by its pid: not so across machines
        pytest.skip("needs the controllers in PID namespaces of their own (root, util-linux unshare)")
    assert a.init(size=2).rc == 0
    # No capacity anywhere: a's refill job keeps trying (with backoff) for as long as nobody stops it.
    shared_pool.proxy.fail_offering("InsufficientInstanceCapacity")
    assert got(a.get())["refill"]["started"]
    wait_until(a.refill_jobs, timeout=60, what="a's refill job running")

    run = c.playbook("terminate_all.yml", spot_pool_fallback_action="terminate")
    assert run.rc == 0, task_result(run, "spot_pool_terminate").get("msg")
    assert shared_pool.tagged_instances() == [] and shared_pool.items() == []
    wait_until(lambda: not a.refill_jobs(), timeout=30, what="a's refill job ended with the pool")
    # Stopped by c's request through the table (not by a signal, not by running out of time), as on SIGTERM.
    log = (a.state_dir / f"dynamodb-{shared_pool.table}-{POOL}.refill.log").read_text()
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "stop_requested" in events and events[-1] == "stopped", events


# -- a refill job killed mid-launch, taken over by another controller --------------------------------------------
# The refill job's DescribeInstances by the pool's tag (its observe step); get's own check names instance ids.
JOB_DESCRIBE = {"Filter.1.Name": "tag:ec2spot:pool"}
# How long the proxy holds the request a job is killed in: the test must act within it, on a busy machine too.
HOLD = 6.0


def assert_consistent(shared_pool, whole: bool = True) -> dict:
    """The table and EC2 agree: no id twice; every live instance with the pool's tag is an entry or a lease (nothing
    launched went untracked); no fleet request left pending; never more entries than the target; with `whole`,
    every slot ready. Every fleet that launched had a ClientToken of its own."""
    state = shared_pool.require_state()
    entries = [entry["id"] for entry in state["instances"]]
    leases = [held["id"] for held in state["leases"]]
    assert len(set(entries + leases)) == len(entries) + len(leases), f"an id twice: {entries} {leases}"
    live = {inst["InstanceId"] for inst in shared_pool.tagged_instances()}
    assert live == set(entries) | set(leases), (f"EC2 and the table disagree: only in EC2 "
                                                f"{sorted(live - set(entries) - set(leases))}, only in the table "
                                                f"{sorted(set(entries) | set(leases) - live)}")
    assert state.get("pending_launches", []) == [], state.get("pending_launches")
    assert len(entries) <= state["target_size"], f"the pool exceeds its target: {entries}"
    if whole:
        assert len(entries) == state["target_size"] and all(e.get("ip") for e in state["instances"]), state
    tokens = [r.params.get("ClientToken") for r in shared_pool.proxy.records("CreateFleet", outcome="fleet")]
    assert None not in tokens and len(tokens) == len(set(tokens)), f"a fleet without a token of its own: {tokens}"
    return state


def lease_and_hold(controller, proxy, action: str, **hold) -> tuple[float, int]:
    """Hold the next `action` request for HOLD seconds, lease an instance on `controller` (its get starts the
    refill job) and wait until the job's request is held. Returns when the get started and how many `action`
    requests came before."""
    params = hold.get("params")
    before = proxy.count(action, params=params)
    proxy.slow(action, HOLD, times=1, **hold)
    started = time.time()
    result = got(controller.get())
    assert result["refill"]["started"], result
    proxy.wait_for(action, params=params, count=before + 1, timeout=60)
    return started, before


def wait_refill_done(controller, timeout: float = 90.0) -> None:
    wait_until(lambda: not controller.refill_jobs(), timeout=timeout, what=f"the refill job of {controller} done")


def test_a_job_killed_before_create_fleet_is_taken_over_by_another_controllers_get(shared_pool):
    a, b = shared_pool.start(2)
    proxy = shared_pool.proxy
    assert a.init(size=2).rc == 0
    started = lease_and_hold(a, proxy, "DescribeInstances", params=JOB_DESCRIBE)[0]
    a.kill_refill_job()
    assert shared_pool.fleets(since=started) == [] and not shared_pool.require_state().get("pending_launches")

    # While the dead job's lease lasts, another controller's reconcile leaves the pool to it: one refill at a time.
    run, waited = b.reconcile()
    assert run.rc == 0 and waited["refill_running"] and waited["passes"] == 0 and not waited["changed"], waited
    dead = shared_pool.expire_refill_lease()

    # Once it has expired, b's get starts b's job, which takes the lease over and launches the two missing, once.
    second = got(b.get())
    assert second["refill"]["started"], second
    wait_refill_done(b)
    state = assert_consistent(shared_pool)
    assert len(state["leases"]) == 2
    assert len(shared_pool.fleets(since=started)) == 1 and len(shared_pool.launched(since=started)) == 2
    assert shared_pool.refill_lease()["fencing"] > dead["fencing"], "b's job took the lease over (a new fencing)"


@pytest.mark.parametrize("torn_down", ["job", "controller"])
def test_a_job_killed_with_the_fleet_answer_lost_is_replayed_by_another_controllers_reconcile(shared_pool, torn_down):
    """`job`: the refill job alone is SIGKILLed. `controller`: the whole controller goes (an ephemeral CI runner torn
    down mid-launch: every process of its machine dies at once)."""
    a, b = shared_pool.start(2)
    if torn_down == "controller" and not a.isolated:
        pytest.skip("tearing a controller down needs its own PID namespace (root, util-linux unshare)")
    proxy = shared_pool.proxy
    assert a.init(size=2).rc == 0
    started, before = lease_and_hold(a, proxy, "CreateFleet")
    if torn_down == "job":
        a.kill_refill_job()
    else:
        assert a.refill_jobs(), "a's refill job runs"
        a.stop()
        assert not a.processes(), "nothing of a's machine is left"
    [pending] = shared_pool.require_state()["pending_launches"]  # recorded in the table before the call
    [held] = proxy.wait_for("CreateFleet", count=before + 1, done=True, timeout=60)[before:]
    assert held.params["ClientToken"] == pending["token"]
    [launched] = held.instance_ids  # moto launched it although nobody heard the answer
    dead = shared_pool.expire_refill_lease()

    run, result = b.reconcile(spot_pool_wait=True)
    assert run.rc == 0, result.get("msg")
    assert result["replayed"] == [launched] and result["launched"] == [], result
    state = assert_consistent(shared_pool)
    assert launched in {entry["id"] for entry in state["instances"]}
    replays = [r for r in shared_pool.fleets() if r.params.get("ClientToken") == pending["token"]]
    assert [r.outcome for r in replays] == ["fleet", "replayed"] and replays[1].instance_ids == [launched]
    assert shared_pool.launched(since=started) == [launched], "nothing launched twice"
    assert shared_pool.refill_lease()["fencing"] > dead["fencing"]


def test_a_job_killed_after_the_write_is_taken_over_and_launches_only_what_is_missing(shared_pool):
    a, b = shared_pool.start(2)
    proxy = shared_pool.proxy
    assert a.init(size=2).rc == 0
    # Pass 1 launches and writes the new entry (no address yet); pass 2's DescribeInstances is held: kill there.
    fleets_before = proxy.count("CreateFleet")
    started = time.time()
    assert got(a.get())["refill"]["started"]
    [fleet] = proxy.wait_for("CreateFleet", count=fleets_before + 1, done=True, timeout=60)[fleets_before:]
    describes = proxy.count("DescribeInstances", params=JOB_DESCRIBE)
    proxy.slow("DescribeInstances", HOLD, times=1, params=JOB_DESCRIBE)
    proxy.wait_for("DescribeInstances", params=JOB_DESCRIBE, count=describes + 1, timeout=60)
    a.kill_refill_job()
    [written] = fleet.instance_ids
    state = shared_pool.require_state()
    assert [(e["id"], e["ip"]) for e in state["instances"] if e["id"] == written] == [(written, None)]
    assert state.get("pending_launches", []) == []
    dead = shared_pool.expire_refill_lease()

    # b's get: b's job fills the address in and launches only for the slot b leased.
    assert got(b.get())["refill"]["started"]
    wait_refill_done(b)
    state = assert_consistent(shared_pool)
    assert written in {e["id"] for e in state["instances"]} | {held["id"] for held in state["leases"]}
    assert len(shared_pool.launched(since=started)) == 2 and len(shared_pool.fleets(since=started)) == 2
    assert shared_pool.refill_lease()["fencing"] > dead["fencing"]


def test_a_paused_job_that_lost_its_lease_launches_and_writes_nothing(shared_pool):
    """a's refill job stops (SIGSTOP: a runner suspended, a long GC pause) while its observe step waits for EC2;
    its lease runs out and b's job takes over and makes the pool whole. When a's job runs on, its stale pass would
    launch: the launch's record is fenced by the lease, so it launches nothing, writes nothing, and stops."""
    a, b = shared_pool.start(2)
    proxy = shared_pool.proxy
    assert a.init(size=2).rc == 0
    started = lease_and_hold(a, proxy, "DescribeInstances", params=JOB_DESCRIBE)[0]
    [job] = a.refill_jobs()
    os.kill(job, signal.SIGSTOP)
    try:
        shared_pool.expire_refill_lease()
        assert got(b.get())["refill"]["started"]
        wait_refill_done(b)
        assert_consistent(shared_pool)
        taken_over = shared_pool.items_bytes()
        fleets = [r.seq for r in shared_pool.fleets(since=started)]
    finally:
        os.kill(job, signal.SIGCONT)
    wait_until(lambda: job not in a.processes(), timeout=30, what="a's job stopped")
    assert [r.seq for r in shared_pool.fleets(since=started)] == fleets, "a's job sent no CreateFleet"
    assert shared_pool.items_bytes() == taken_over, "a's job wrote nothing to the table"
    log = (a.state_dir / f"dynamodb-{shared_pool.table}-{POOL}.refill.log").read_text()
    assert '"event": "lease_lost"' in log, log[-2000:]


# -- two inits at once ---------------------------------------------------------------------------------------------
def test_two_controllers_init_at_once_with_different_sizes_and_never_both_launch(shared_pool):
    a, b = shared_pool.start(2)
    runs = at_once([lambda: a.init(size=2), lambda: b.init(size=3)])
    results = [task_result(run, "spot_pool_init") for run in runs]
    succeeded = [result for run, result in zip(runs, results) if run.rc == 0]
    failed = [result.get("msg", "") for run, result in zip(runs, results) if run.rc != 0]
    assert succeeded, results
    for message in failed:  # the loser says that another init or pool came first, naming the pool
        # Two wordings, by timing: "created by another spot_pool_init while this one ran ... run it again" (the loser
        # found the winner's pool item, or the winner's instances and then, read again, its pool item: see
        # test_a_concurrent_init_that_sees_the_winners_instances_first_says_so), or "already used ... by another
        # pool" (only in the moment between the winner's CreateLaunchTemplate and its write of the pool item: the
        # loser saw the template while the table had no pool yet).
        assert POOL in message and "another" in message, message
    for controller in (a, b):
        wait_refill_done(controller)
    state = assert_consistent(shared_pool)
    assert state["target_size"] in {result["counts"]["target"] for result in succeeded}, "one result stands"
    launched = shared_pool.launched()
    assert len(set(launched)) == len(launched)
    if failed:  # the loser launched nothing: every instance is the winner's
        [winner] = succeeded
        assert sorted(launched) == sorted(winner["launched"]) and len(launched) == state["target_size"], launched
    else:  # the later one re-read the pool and resized it: never both launched a whole pool
        assert len(launched) <= 3, f"both inits launched: {launched}"
    templates = shared_pool.ec2.describe_launch_templates(
        Filters=[{"Name": f"tag:{POOL_TAG}", "Values": [POOL]}])["LaunchTemplates"]
    assert len(templates) == 1, f"the loser's launch template is left: {templates}"


def test_a_concurrent_init_that_sees_the_winners_instances_first_says_so(shared_pool):
    """The other timing of two inits at once, made certain: b's check of EC2 (its first DescribeInstances by the
    pool's tag, after it found no pool in the table) is held until a's init has made the pool and launched."""
    a, b = shared_pool.start(2)
    proxy = shared_pool.proxy
    hold = 25.0
    proxy.slow("DescribeInstances", hold, times=1, params=JOB_DESCRIBE)
    second: dict = {}
    racer = threading.Thread(target=lambda: second.update(run=b.init(size=3)))
    racer.start()
    try:
        [held] = proxy.wait_for("DescribeInstances", params=JOB_DESCRIBE, timeout=60)
        first = a.init(size=2)
        assert first.rc == 0, task_result(first, "spot_pool_init").get("msg")
        assert time.time() < held.started + hold, "a's init took longer than b's hold: the premise did not hold"
    finally:
        racer.join()
    run = second["run"]
    result = task_result(run, "spot_pool_init")
    message = result.get("msg", "")
    # Not "already used ... by another pool": b read the table again, found a's pool there, and says so.
    assert run.rc != 0 and f"pool '{POOL}' was created by another spot_pool_init while this one ran" in message, message
    assert "run it again to give the pool size 3" in message, message
    state = shared_pool.require_state()
    assert state["target_size"] == 2 and result["pool_id"] == state["pool_id"] and result["counts"]["target"] == 2
    wait_refill_done(a)
    assert sorted(shared_pool.launched()) == sorted(task_result(first, "spot_pool_init")["launched"]), \
        "b launched nothing"
    templates = shared_pool.ec2.describe_launch_templates(
        Filters=[{"Name": f"tag:{POOL_TAG}", "Values": [POOL]}])["LaunchTemplates"]
    assert [t["LaunchTemplateName"] for t in templates] == [f"ec2spot-{POOL}-{state['pool_id']}"], templates


# -- DynamoDB throttling --------------------------------------------------------------------------------------------
def same_request(one, other) -> bool:
    """The same DynamoDB request (botocore makes a new idempotency token for each TransactWriteItems call)."""
    def body(record):
        return {key: value for key, value in (record.document or {}).items() if key != "ClientRequestToken"}
    return body(one) == body(other)


def test_throttled_dynamodb_requests_are_retried_and_init_and_get_succeed(shared_pool):
    [a] = shared_pool.start(1)
    proxy = shared_pool.proxy
    proxy.fail("Query", "ProvisionedThroughputExceededException", times=1)
    proxy.fail("TransactWriteItems", "ThrottlingException", times=1)
    run = a.init(size=2)
    assert run.rc == 0, task_result(run, "spot_pool_init").get("msg")
    for action, code in (("Query", "ProvisionedThroughputExceededException"),
                         ("TransactWriteItems", "ThrottlingException")):
        first, retry = proxy.records(action)[:2]
        assert (first.outcome, first.error_code) == ("injected", code), first
        assert retry.outcome == "forwarded" and retry.status == 200, retry
        assert same_request(retry, first), f"{action}: the same request again after {code}"

    proxy.clear_records()
    proxy.fail("Query", "ThrottlingException", times=1)
    proxy.fail("UpdateItem", "ProvisionedThroughputExceededException", times=1)
    result = got(a.get())
    for action in ("Query", "UpdateItem"):
        first, retry = proxy.records(action)[:2]
        assert first.outcome == "injected" and retry.status == 200 and same_request(retry, first), action
    assert f"inst#{result['instance_id']}" == proxy.records("UpdateItem")[1].document["Key"]["item"]["S"]


def test_a_failed_condition_is_a_lost_race_never_an_error_or_a_retry(shared_pool):
    """A ConditionalCheckFailedException on the hand-out's write means another controller took that instance:
    the get takes another one (of the same read), and never sends the failed write again."""
    [a] = shared_pool.start(1)
    proxy = shared_pool.proxy
    assert a.init(size=3).rc == 0
    proxy.clear_records()
    proxy.fail("UpdateItem", "ConditionalCheckFailedException", times=1)
    result = got(a.get())
    lost, *later = proxy.records("UpdateItem")
    assert lost.outcome == "injected" and lost.error_code == "ConditionalCheckFailedException"
    assert not [r for r in later if same_request(r, lost)], "the failed write is never sent again"
    [won] = [r for r in later if r.document["Key"]["item"]["S"] == f"inst#{result['instance_id']}"]
    assert won.status == 200 and "ConditionExpression" in won.document


# -- reconcile on DynamoDB --------------------------------------------------------------------------------------
ORPHAN_TAG = "ec2spot:orphan-since"
EC2_WRITES = ("CreateFleet", "RunInstances", "CreateTags", "DeleteTags", "TerminateInstances", "StopInstances",
              "StartInstances", "CreateLaunchTemplate", "CreateLaunchTemplateVersion", "DeleteLaunchTemplate")
DYNAMODB_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem", "CreateTable")


def expired_lease(shared_pool, controller) -> str:
    """A lease of 1 s whose CI job died before its release step; no refill job was started for it."""
    rc, lost = controller.module("spot_pool_get", lease_ttl=1, refill=False)
    assert rc == 0 and lost["expires_at"], lost
    item = f"inst#{lost['instance_id']}"
    wait_until(lambda: float(shared_pool.item(item)["expires"]["N"]) < time.time(), timeout=5, interval=0.1,
               what="the lease expired")
    return lost["instance_id"]


def stray_instance(shared_pool) -> str:
    """An instance with the pool's tags (name and id) that the pool does not know (a crashed launcher's)."""
    state = shared_pool.require_state()
    tags = [{"Key": POOL_TAG, "Value": POOL}, {"Key": POOL_ID_TAG, "Value": state["pool_id"]},
            {"Key": TYPE_TAG, "Value": "spot"}]
    return shared_pool.ec2.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                         TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                                         )["Instances"][0]["InstanceId"]


def test_reconcile_from_another_controller_ends_an_expired_lease(shared_pool):
    a, b = shared_pool.start(2)
    assert a.init(size=2).rc == 0
    lost = expired_lease(shared_pool, a)

    run, result = b.reconcile()
    assert run.rc == 0, result.get("msg")
    assert result["expired"] == [lost] and result["passes"] == 1 and not result["refill_running"], result
    assert shared_pool.instance_state(lost) == "terminated"
    assert lost not in {held["id"] for held in shared_pool.require_state()["leases"]}
    assert_consistent(shared_pool, whole=result["whole"])
    assert not b.refill_jobs(), "a scheduled pass leaves no process behind"


def test_reconcile_sweeps_an_orphan_over_two_passes_from_two_controllers(shared_pool):
    a, b, c = shared_pool.start(3)
    assert a.init(size=1, spot_pool_orphan_grace=0).rc == 0
    wait_refill_done(a)
    orphan = stray_instance(shared_pool)

    run, first = b.reconcile()
    assert run.rc == 0 and first["orphans_marked"] == [orphan] and first["orphans_terminated"] == [], first
    run, second = c.reconcile()
    assert run.rc == 0 and second["orphans_terminated"] == [orphan], second
    assert shared_pool.instance_state(orphan) == "terminated"
    assert_consistent(shared_pool)


def test_reconcile_in_check_mode_changes_nothing_in_the_table_or_ec2(shared_pool):
    a, b = shared_pool.start(2)
    assert a.init(size=2, spot_pool_orphan_grace=0).rc == 0
    lost = expired_lease(shared_pool, a)
    orphan = stray_instance(shared_pool)
    before = shared_pool.items_bytes()
    shared_pool.proxy.clear_records()

    run = b.playbook("reconcile_pool.yml", check=True)
    result = task_result(run, "spot_pool_reconcile")
    assert run.rc == 0, result.get("msg")
    assert lost in str(result["plan"]) and orphan in str(result["plan"]), result["plan"]
    assert shared_pool.items_bytes() == before, "the table's items are byte for byte as they were"
    writes = {action: shared_pool.proxy.count(action) for action in EC2_WRITES + DYNAMODB_WRITES}
    assert not any(writes.values()), writes
    assert shared_pool.instance_state(lost) == "running" and shared_pool.instance_state(orphan) == "running"
