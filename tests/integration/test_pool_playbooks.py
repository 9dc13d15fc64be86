"""The pool's life cycle through the real playbooks (`ansible-playbook` processes) against the moto server.

What is checked is what a user would see and what is really there: the playbook output, the instances in EC2
(their tags, state and lifecycle) and the pool file on disk. The detached refill job runs for real too.
"""

from __future__ import annotations

import json
import os
import re
import stat

from tests.integration.conftest import (AMI, LAUNCH_ACTIONS, POOL_ID_TAG, POOL_TAG, TYPE_TAG, debug_msgs, tags_of,
                                        task_result, wait_until)


def test_whole_cycle_init_get_release_terminate(pool, tmp_path):
    # init: three Spot instances, tagged at launch, recorded in a private pool file.
    run = pool.init(size=3)
    assert run.rc == 0, run.stdout[-3000:]
    init = task_result(run, "spot_pool_init")
    assert init["changed"] is True
    assert init["counts"] == {"target": 3, "ready": 3, "pending": 0, "leased": 0, "spot": 3, "fallback": 0}
    assert len(init["launched"]) == 3
    pool.assert_private_files()
    state = pool.state()
    assert state["pool_name"] == "default" and state["target_size"] == 3 and state["leases"] == []
    assert sorted(entry["id"] for entry in state["instances"]) == sorted(init["launched"])
    live = {inst["InstanceId"]: inst for inst in pool.tagged_instances()}
    assert sorted(live) == sorted(init["launched"])
    for inst in live.values():
        assert inst["State"]["Name"] == "running"
        assert inst.get("InstanceLifecycle") == "spot"
        assert tags_of(inst)[POOL_TAG] == "default" and tags_of(inst)[TYPE_TAG] == "spot"
    ip_of = {inst["InstanceId"]: inst["PublicIpAddress"] for inst in live.values()}
    assert all(entry["ip"] == ip_of[entry["id"]] for entry in state["instances"])

    # get: the default (human-readable) output carries the lines a CI step greps for, and the file it writes.
    output_file = tmp_path / "instance.env"
    run = pool.playbook("get_instance.yml", json_output=False, spot_pool_output_file=str(output_file))
    assert run.rc == 0, run.stdout
    ip = re.search(r"SPOT_POOL_IP=([0-9.]+)", run.stdout).group(1)
    instance_id = re.search(r"SPOT_POOL_INSTANCE_ID=(i-[0-9a-f]+)", run.stdout).group(1)
    assert ip_of[instance_id] == ip, "the printed IP is the leased pool instance's address in EC2"
    lease_id = re.search(r"SPOT_POOL_LEASE_ID=([0-9a-f]{32})", run.stdout).group(1)
    lines = dict(line.split("=", 1) for line in output_file.read_text().splitlines())
    assert stat.S_IMODE(output_file.stat().st_mode) == 0o600
    assert lines["SPOT_POOL_IP"] == ip and lines["SPOT_POOL_INSTANCE_ID"] == instance_id
    assert lines["SPOT_POOL_LEASE_ID"] == lease_id
    assert lines["SPOT_POOL_TYPE"] == "spot"
    state = pool.state()
    assert [(lease["id"], lease["lease_id"]) for lease in state["leases"]] == [(instance_id, lease_id)]
    assert instance_id not in [entry["id"] for entry in state["instances"]]

    # release (the instance and lease the get printed): the Spot instance is terminated and the lease is gone.
    run = pool.playbook("release_instance.yml", spot_pool_instance_id=instance_id, spot_pool_lease_id=lease_id)
    assert run.rc == 0, run.stdout[-3000:]
    release = task_result(run, "spot_pool_release")
    assert release["instance_id"] == instance_id and release["type"] == "spot"
    assert debug_msgs(run) == [f"{instance_id}: terminate"]
    assert pool.instance(instance_id)["State"]["Name"] in ("shutting-down", "terminated")
    assert pool.state()["leases"] == []
    pool.assert_private_files()

    # release again (a retried CI step): that lease is gone, so nothing to do.
    run = pool.playbook("release_instance.yml", spot_pool_instance_id=instance_id, spot_pool_lease_id=lease_id)
    assert run.rc == 0, run.stdout[-3000:]
    again = task_result(run, "spot_pool_release")
    assert again["changed"] is False and again["instance_id"] is None
    assert debug_msgs(run) == [f"no lease: none (nothing released from pool 'default': lease {lease_id} is not "
                               f"held any more (instance {instance_id} is not touched))"]

    # An instance with the pool's tags that the file does not know (say, from a refill job killed mid-launch).
    pool_tags = [{"Key": POOL_TAG, "Value": "default"}, {"Key": POOL_ID_TAG, "Value": pool.pool_id},
                 {"Key": TYPE_TAG, "Value": "spot"}]
    orphan = pool.ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                    TagSpecifications=[{"ResourceType": "instance", "Tags": pool_tags}],
                                    )["Instances"][0]["InstanceId"]

    # terminate: nothing of the pool keeps running, the file is gone, and so is the refill job that get started.
    run = pool.playbook("terminate_all.yml")
    assert run.rc == 0, run.stdout[-3000:]
    terminate = task_result(run, "spot_pool_terminate")
    assert terminate["changed"] is True and terminate["stopped"] == []
    assert pool.tagged_instances() == [], "every instance with the pool tag is terminated"
    assert set(terminate["terminated"]) >= set(ip_of) - {instance_id} | {orphan}
    assert terminate["orphans"] == [orphan]
    assert not pool.state_file.exists()
    assert pool.refill_pids() == []

    # terminate again: nothing left to end.
    run = pool.playbook("terminate_all.yml")
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_terminate")["changed"] is False


def test_get_while_refill_runs_and_pool_back_at_target(faulty_pool):
    pool = faulty_pool
    assert pool.init(size=3).rc == 0
    # Every launch is held for 8 s, far longer than a get playbook takes even on a loaded machine: the refill job
    # that the first get starts is then certainly still at work when the second get runs. A get must neither wait
    # for that job nor start a second one. (Capacity errors would hold it as well, but they cool the offering
    # down for minutes.)
    pool.proxy.clear_records()
    pool.proxy.slow(LAUNCH_ACTIONS, 8.0)

    first = task_result(pool.playbook("get_instance.yml"), "spot_pool_get")
    assert first["refill"]["started"] is True and first["refill"]["pid"]
    pool.proxy.wait_for(LAUNCH_ACTIONS, count=1, timeout=30)  # the job holds its lock and waits for EC2
    run = pool.playbook("get_instance.yml")
    assert run.rc == 0, run.stdout[-3000:]
    second = task_result(run, "spot_pool_get")
    assert second["refill"]["started"] is False, "one refill job per pool: the running one carries on"
    assert pool.refill_pids() == [first["refill"]["pid"]], "the job the first get started is still at work"
    assert not pool.proxy.records(LAUNCH_ACTIONS)[0].done, "the second get did not wait for the launch"

    assert first["instance_id"] != second["instance_id"] and first["ip"] != second["ip"]
    for lease in (first, second):
        inst = pool.instance(lease["instance_id"])
        assert inst["State"]["Name"] == "running" and inst["PublicIpAddress"] == lease["ip"]
        assert tags_of(inst)[POOL_TAG] == "default"

    # The detached job alone brings the pool back to its target: nothing else runs while we watch the file.
    try:
        wait_until(lambda: sum(1 for e in pool.state()["instances"] if e["ip"]) == 3 and not pool.refill_pids(),
                   timeout=60, what="pool file back at 3 ready and the refill job gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrefill log:\n{pool.refill_log.read_text()}\nstate: {pool.state()}") from None
    info = pool.info()
    assert info["refill"]["running"] is False
    assert info["counts"] == {"target": 3, "ready": 3, "pending": 0, "leased": 2, "spot": 3, "fallback": 0}
    assert info["refill"]["last_error"] is None
    assert {entry["id"] for entry in info["leases"]} == {first["instance_id"], second["instance_id"]}
    idle = {entry["id"] for entry in info["pool"]}
    assert len(idle) == 3 and not idle & {first["instance_id"], second["instance_id"]}
    running = {inst["InstanceId"] for inst in pool.tagged_instances(states=("running",))}
    assert running == idle | {first["instance_id"], second["instance_id"]}, "3 idle + 2 leased, nothing else"

    records = [json.loads(line) for line in pool.refill_log.read_text().splitlines()]
    events = [record["event"] for record in records]
    assert events[0] == "started" and events[-1] == "finished", events
    assert all(record["pid"] == first["refill"]["pid"] for record in records), "one job did all of it"
    refilled = [i for record in records if record["event"] == "reconciled" for i in record["launched"]]
    assert len(refilled) == 2 and set(refilled) <= idle, "the job launched one replacement per lease"


def test_terminate_while_the_refill_is_launching_leaves_nothing(faulty_pool):
    pool = faulty_pool
    assert pool.init(size=2).rc == 0
    # The refill job's launch is held for 10 s; terminate comes while it waits for EC2's answer. The hold must
    # outlast the start of the terminate playbook on a loaded machine (4 s did not, with the suite on 3 xdist
    # processes on 2 cores: the job finished first), and end well within the 20 s stop_refill gives a job.
    pool.proxy.slow(LAUNCH_ACTIONS, 10.0)
    pool.proxy.clear_records()
    got = task_result(pool.playbook("get_instance.yml"), "spot_pool_get")
    assert got["refill"]["started"] is True
    pool.proxy.wait_for(LAUNCH_ACTIONS, count=1, timeout=30)
    # terminate removes the log with the pool: a second name for the same file keeps what the job writes to it.
    log = pool.state_dir.parent / "refill.log.kept"
    os.link(pool.refill_log, log)

    run = pool.playbook("terminate_all.yml")
    assert run.rc == 0, run.stdout[-3000:]
    launched_by_job = [i for record in pool.proxy.records(LAUNCH_ACTIONS) for i in record.instance_ids]
    assert launched_by_job, "the held launch went through (as on AWS, an answer in flight is not cancelled)"
    assert pool.tagged_instances() == [], "the instance the job was launching did not outlive the pool"
    assert pool.instance(got["instance_id"])["State"]["Name"] == "terminated", "leases end with the pool"
    assert not pool.state_file.exists()
    assert pool.refill_pids() == []
    assert not pool.refill_log.exists()
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events[-1] in ("stopped", "pool_gone") and "finished" not in events, \
        f"terminate stopped a job at work (not one that had already finished): {events}"
