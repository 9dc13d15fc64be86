"""Real worker processes (gunicorn + gthread) on one SQS queue and one DynamoDB table (the moto server on
127.0.0.1, reached through the fault proxy), each with its own fake IMDS.

moto implements what these tests lean on (moto 5.2.5; see test_worker_sqs_queue.py::
test_what_moto_does_that_these_tests_rely_on): long polling, ChangeMessageVisibility, the redrive policy
moving a message on receive. Its visibility is wall-clock time, so leases here are a few seconds, and its
long poll notices a visibility change (a hand-back) only once a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fake_imds import FakeImds
from worker_process import child_pythonpath, run_lines

pytestmark = pytest.mark.timeout(180)

SQS_TIMINGS = {"JOB_HANDLER": "handlers_for_tests:record_where_and_sleep", "LEASE_SECONDS": "2",
               "JOB_PROCESSING_SECONDS": "0.3", "RETRY_BACKOFF_SECONDS": "0.05"}


def post_job(worker, payload=None):
    response = worker.request("POST", "/jobs", {} if payload is None else payload)
    assert response.status == 202, response
    return response.json()["id"]


def starts(run_log, job_id=None):
    """(job, attempt, worker, epoch) of every start line."""
    return [(line[1], int(line[2]), line[3], float(line[4])) for line in run_lines(run_log)
            if line[0] == "start" and (job_id is None or line[1] == job_id)]


def ends(run_log):
    return [(line[1], line[2]) for line in run_lines(run_log) if line[0] == "end"]


def in_flight_on(run_log, name, since):
    """Jobs whose latest start is on worker `name`, after `since`, with no end (there) after it."""
    ended = {job for job, where in ends(run_log) if where == name}
    return [job for job, _attempt, where, at in starts(run_log) if where == name and at >= since and job not in ended]


def metric(worker, name):
    return worker.request("GET", "/metrics", headers={"Accept": "application/json"}).json().get(name)


def done_lines(workers, job_id):
    return sum(worker.log_path.read_text().count(f"job {job_id} done in") for worker in workers)


def test_three_workers_share_one_queue_and_survive_kill9(start_sqs_worker, aws, run_log):
    workers = [start_sqs_worker(WORKER_NAME=f"w{i}", **SQS_TIMINGS) for i in range(3)]
    # Every fifth job outlasts a heartbeat (every lease / 3).
    job_ids = [post_job(workers[i % 3], {"n": i, "seconds": 1.5 if i % 5 == 0 else 0.3}) for i in range(30)]

    killed = []
    victim = workers[0]
    since = 0.0
    for _round in range(2):
        # Work the victim can still take, whatever the others finished while it restarted (seconds under load).
        job_ids += [post_job(victim, {"n": len(job_ids), "seconds": 1.5}) for _extra in range(4)]
        # kill -9 the victim while it runs a job (its lease is then only the message's visibility)
        job = victim.wait_for(lambda: in_flight_on(run_log, "w0", since), 30, interval=0.01, what="a job on w0")[0]
        victim.kill9()
        killed.append(job)
        # Down until another worker runs the job again (after the visibility timeout), then back.
        victim.wait_for(lambda: len(starts(run_log, job)) == 2, 30, what=f"job {job} to run again")
        since = time.time()
        victim.start()

    for job_id in job_ids:
        workers[1].wait_job_status(job_id, "done", timeout=60)
    answers = [[worker.job(job_id) for worker in workers] for job_id in job_ids]
    # GET /jobs/<id> is the table's record: every worker gives the same answer.
    assert all(a == b == c for a, b, c in answers)
    assert all(answer[0]["status"] == "done" for answer in answers)
    for job_id in killed:
        runs = starts(run_log, job_id)
        # The killed attempt counts (as a lease lost with SQLite); the job ran again elsewhere.
        assert [(attempt, where != "w0") for _job, attempt, where, _t in runs] == [(1, False), (2, True)], runs
        assert workers[1].job(job_id)["attempts"] == 2
    # Every job was recorded done by exactly one attempt, in one worker's log.
    assert [done_lines(workers, job_id) for job_id in job_ids] == [1] * len(job_ids)
    assert sum(metric(w, "spot_drain_queue_received_total") for w in workers[1:]) >= 20
    assert sum(metric(w, "spot_drain_queue_heartbeats_total") for w in workers) > 0
    assert set(metric(workers[2], "spot_drain_queue_messages")) == {"kind=visible", "kind=in_flight", "kind=delayed"}
    assert aws.dlq_job_ids(wait=0) == []


def test_spot_notice_hands_the_job_back_to_another_worker(start_sqs_worker, aws, run_log, fake_imds):
    # A lease of 60 s: the job can only reach the other worker this soon because it was handed back.
    timings = dict(SQS_TIMINGS, LEASE_SECONDS="60", GRACE_PERIOD_SECONDS="4")
    noticed = start_sqs_worker(WORKER_NAME="a", **timings)
    long_job = post_job(noticed, {"seconds": 120})
    noticed.wait_for(lambda: starts(run_log, long_job), 15, what="the long job on a")
    with FakeImds() as other_imds:
        other = start_sqs_worker(WORKER_NAME="b", IMDS_URL=other_imds.url, **timings)
        received = metric(noticed, "spot_drain_queue_received_total")

        asked = time.monotonic()
        fake_imds.notice("terminate")
        ready = noticed.wait_for(lambda: (r := noticed.request("GET", "/ready")).status == 503 and r, 5,
                                 interval=0.005, what="/ready 503")
        to_503 = time.monotonic() - asked
        deadline = time.time() + ready.json()["drain"]["seconds_until_deadline"]
        # While a drains, new jobs go to b only: a receives nothing more.
        short = [post_job(other, {"seconds": 0.1}) for _job in range(3)]
        for job_id in short:
            other.wait_job_status(job_id, "done", timeout=20)
        assert metric(noticed, "spot_drain_queue_received_total") == received
        assert noticed.job(long_job)["status"] == "processing"

        assert noticed.wait_exit(30) == 0
        assert metric(other, "spot_drain_queue_received_total") >= 4
        second = other.wait_for(lambda: [s for s in starts(run_log, long_job) if s[2] == "b"], 30,
                                what="the long job on b")[0]
        to_rerun = second[3] - deadline
        print(f"\nnotice -> /ready 503: {to_503 * 1000:.1f} ms; drain deadline -> job running on b: "
              f"{to_rerun:.2f} s (lease 60 s)")
        assert to_rerun < 60  # sooner than the lease: handed back, not timed out
        # The interrupted attempt was given back: b runs attempt 1, and the record shows one attempt.
        assert [(attempt, where) for _job, attempt, where, _t in starts(run_log, long_job)] == [(1, "a"), (1, "b")]
        record = other.job(long_job)
        assert (record["status"], record["attempts"]) == ("processing", 1)
        assert "released at the drain deadline" in record["last_error"]


def test_throttled_visibility_changes_never_let_a_second_worker_run_the_job(start_sqs_worker, aws, run_log):
    """Issue 17, item 2: a heartbeat whose ChangeMessageVisibility fails (throttled past botocore's retries)
    was taken as a lost lease although the fenced record write had just succeeded; the runner stopped
    heartbeating, the record's lease ran out and the other worker ran the job at the same time."""
    timings = dict(SQS_TIMINGS, LEASE_SECONDS="3")
    workers = [start_sqs_worker(WORKER_NAME=f"w{i}", **timings) for i in range(2)]
    job_id = post_job(workers[0], {"seconds": 12})
    workers[0].wait_for(lambda: starts(run_log, job_id), 15, what="the job to start")
    # Once the job's first heartbeat has changed the visibility, the next six changes are throttled.
    aws.proxy.wait_for("ChangeMessageVisibility", done=True, timeout=10)
    aws.proxy.fail("ChangeMessageVisibility", "RequestThrottled", times=6)
    aws.proxy.wait_for("ChangeMessageVisibility", outcome="injected", count=6, timeout=30)

    workers[1].wait_job_status(job_id, "done", timeout=40)
    runs = starts(run_log, job_id)
    assert len(runs) == 1, runs  # one worker ran it, once: never two at the same time
    assert workers[1].job(job_id)["attempts"] == 1
    assert done_lines(workers, job_id) == 1
    assert not any("lost its lease" in worker.log_path.read_text() for worker in workers)


def test_poison_job_ends_dead_in_the_dlq_and_requeue_runs_it_again(start_sqs_worker, aws, run_log):
    workers = [start_sqs_worker(WORKER_NAME=f"w{i}", **dict(SQS_TIMINGS, JOB_HANDLER="handlers_for_tests:always_fail"))
               for i in range(2)]
    job_id = post_job(workers[0], {"poison": True})
    dead = workers[1].wait_job_status(job_id, "dead", timeout=30)
    assert dead["attempts"] == 3 and "poison payload" in dead["last_error"]
    assert [line[2] for line in run_lines(run_log) if line[1] == job_id] == ["1", "2", "3"]
    assert aws.dlq_job_ids() == [job_id]

    requeued = workers[1].request("POST", f"/jobs/{job_id}/requeue")
    assert requeued.status == 200 and requeued.json()["attempts"] == 0
    workers[0].wait_for(lambda: len([line for line in run_lines(run_log) if line[1] == job_id]) == 6, 30,
                        what="three more attempts")
    assert workers[0].wait_job_status(job_id, "dead", timeout=30)["attempts"] == 3
    assert workers[0].request("POST", "/jobs/nope/requeue").status == 404


def test_a_job_whose_record_would_not_fit_one_item_is_413_never_503(start_sqs_worker, aws):
    """Issue 17, item 6: a body within MAX_PAYLOAD_BYTES whose stored record exceeds one DynamoDB item got
    ValidationException from PutItem, answered as "503, retry", every time."""
    worker = start_sqs_worker(MAX_PAYLOAD_BYTES="393216", **SQS_TIMINGS)
    # 1e5 is stored as 100000.0: a 380 kB body becomes an 855 kB payload.
    body = b'{"n": [' + b",".join([b"1e5"] * 95000) + b"]}"
    assert len(body) < 393216
    refused = worker.request("POST", "/jobs", body, {"Content-Type": "application/json"})
    assert refused.status == 413, refused
    assert "Retry-After" not in refused.headers
    assert "one DynamoDB item (400 KB)" in refused.json()["error"], refused
    assert aws.dynamodb.scan(TableName=aws.table)["Items"] == []
    assert aws.proxy.count(["PutItem", "TransactWriteItems", "SendMessage"]) == 0
    assert metric(worker, "spot_drain_jobs_rejected_total") == {"reason=too_large": 1.0}
    # As large as the setting allows, in characters that JSON would escape: stored as UTF-8, it fits.
    fits = json.dumps({"s": "\u00e9" * 190000}, ensure_ascii=False).encode()
    assert len(fits) < 393216
    accepted = worker.request("POST", "/jobs", fits, {"Content-Type": "application/json"})
    assert accepted.status == 202, accepted
    job_id = accepted.json()["id"]
    done = worker.wait_job_status(job_id, "done", timeout=30)
    assert done["payload"] == {"s": "\u00e9" * 190000}


def run_worker(env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env, PYTHONPATH=child_pythonpath())
    return subprocess.run([sys.executable, "-m", "spot_drain_worker"], env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def test_bad_sqs_configuration_stops_the_start_with_exit_2(worker_env, aws):
    base = dict(worker_env, **aws.worker_env())
    other_shape = aws.table + "-shape"
    aws.dynamodb.create_table(TableName=other_shape, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "jobId", "AttributeType": "N"}],
                              KeySchema=[{"AttributeName": "jobId", "KeyType": "HASH"}])
    cases = {
        "queue missing": ({"QUEUE_URL": aws.queue_url + "-gone"}, None,
                          f"QUEUE_URL {aws.queue_url}-gone: no such queue"),
        "table of another shape": ({"JOBS_TABLE": other_shape}, None,
                                   f"JOBS_TABLE {other_shape}: the table has the key (jobId HASH N)"),
        "no region": ({"AWS_REGION": "", "AWS_DEFAULT_REGION": ""}, None,
                      "AWS_REGION (or AWS_DEFAULT_REGION) must be set with QUEUE_URL"),
        "no table": ({"JOBS_TABLE": ""}, None, "JOBS_TABLE must be set with QUEUE_URL"),
        "table not created": ({"JOBS_TABLE_CREATE": "false"}, None,
                              f"JOBS_TABLE {aws.table}: no such table, and JOBS_TABLE_CREATE=false"),
        "AccessDenied": ({}, ("GetQueueAttributes", "AccessDenied"),
                         f"QUEUE_URL {aws.queue_url}: access denied (AccessDenied"),
        "AccessDenied on the table": ({}, ("DescribeTable", "AccessDeniedException"),
                                      f"JOBS_TABLE {aws.table}: access denied (AccessDeniedException"),
        "unreachable": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, None, f"QUEUE_URL {aws.queue_url}: "),
        # Issue 17, item 6: a job's record is one DynamoDB item; a larger body could never be stored.
        "payload larger than one item": ({"MAX_PAYLOAD_BYTES": "512000"}, None,
                                         "MAX_PAYLOAD_BYTES must be at most 393216 with QUEUE_URL (a job's record "
                                         "is one DynamoDB item (400 KB)"),
    }
    for name, (changes, fault, message) in cases.items():
        aws.proxy.clear_rules()
        if fault:
            aws.proxy.fail(fault[0], fault[1], status=403 if fault[1] == "AccessDenied" else None)
        result = run_worker(dict(base, **changes))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert lines == [lines[0]] and lines[0].startswith("spot-drain-worker: configuration error: "), (name, lines)
        assert message in lines[0], (name, lines[0])
    # None of it created the table the worker would otherwise create.
    tables = aws.dynamodb.list_tables()["TableNames"]
    assert aws.table not in tables


@pytest.mark.parametrize("max_receive_count", [1, 2])
def test_a_redrive_policy_that_would_starve_every_job_stops_the_start(worker_env, aws, max_receive_count):
    """Issue 17, item 5: with maxReceiveCount 1 or 2 every receive renewed the message (a fresh copy, sent
    before the old one is deleted), no job ever started and the worker spun on SendMessage."""
    from sqs_support import AwsFixture

    tight = AwsFixture(aws.moto, aws.proxy, max_receive_count=max_receive_count)
    result = run_worker(dict(worker_env, **tight.worker_env()), timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines == [lines[0]], lines
    assert lines[0].startswith(f"spot-drain-worker: configuration error: QUEUE_URL {tight.queue_url}: its "
                               f"redrive policy's maxReceiveCount is {max_receive_count}; the worker needs at "
                               f"least 3"), lines[0]
    assert aws.proxy.count(["SendMessage", "ReceiveMessage"]) == 0
