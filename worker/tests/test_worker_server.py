"""The real server process (gunicorn + gthread worker) on 127.0.0.1 with the fake IMDS."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from fake_imds import INSTANCE_ACTION, REBALANCE
from spot_drain_worker.jobqueue import JobQueue
from worker_process import run_lines

pytestmark = pytest.mark.timeout(60)


def post_job(worker, payload=None, **headers):
    return worker.request("POST", "/jobs", {} if payload is None else payload, headers)


def table(worker) -> list[tuple]:
    path = worker.env["DATABASE_URL"][len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, status, attempts FROM jobs ORDER BY rowid").fetchall()


def starts_of(run_log, job_id):
    return [line for line in run_lines(run_log) if line[0] == "start" and line[1] == job_id]


def ends_of(run_log, job_id):
    return [line for line in run_lines(run_log) if line[0] == "end" and line[1] == job_id]


def test_admission_runs_job_and_reports_it(start_worker, run_log):
    worker = start_worker()
    assert worker.request("GET", "/ready").status == 200

    response = post_job(worker, {"n": 1}, **{"Idempotency-Key": "build-42"})
    assert response.status == 202
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"

    replay = post_job(worker, {"n": 1}, **{"Idempotency-Key": "build-42"})
    assert (replay.status, replay.json()["id"]) == (200, job_id)
    assert post_job(worker, {"n": 2}, **{"Idempotency-Key": "build-42"}).status == 409

    done = worker.wait_job_status(job_id, "done")
    assert done["attempts"] == 1 and done["result"] == {"slept": 0.2}
    assert len(starts_of(run_log, job_id)) == 1
    assert table(worker) == [(job_id, "done", 1)]

    text = worker.request("GET", "/metrics")
    assert text.headers["Content-Type"].startswith("text/plain")
    assert b'spot_drain_jobs{state="done"} 1.0' in text.body
    assert b"spot_drain_job_duration_seconds_bucket" in text.body
    as_json = worker.request("GET", "/metrics", headers={"Accept": "application/json"}).json()
    assert as_json["spot_drain_jobs"]["state=done"] == 1
    assert as_json["spot_drain_jobs_accepted_total"] == 1


def test_interruption_notice_drains_then_exits(start_worker, fake_imds, run_log):
    worker = start_worker(JOB_PROCESSING_SECONDS=1.5)
    job_id = post_job(worker).json()["id"]
    worker.wait_for(lambda: starts_of(run_log, job_id), 5, what="job start")
    assert fake_imds.count_gets(INSTANCE_ACTION, 404) > 0  # polled, nothing there yet
    assert worker.request("GET", "/ready").status == 200

    fake_imds.notice("terminate", at=time.time() + 120)
    worker.wait_for(lambda: worker.request("GET", "/ready").status == 503, 2, what="/ready 503")
    refused = post_job(worker, {"late": True})
    assert refused.status == 503 and int(refused.headers["Retry-After"]) > 0
    assert worker.request("GET", "/health").status == 200
    assert worker.request("GET", f"/jobs/{job_id}").json()["status"] == "processing"

    assert worker.wait_exit(10) == 0
    assert table(worker) == [(job_id, "done", 1)]  # the job in flight finished; the late one was never stored
    assert fake_imds.token_puts and all(ttl > 0 for ttl in fake_imds.token_puts)


def test_sigterm_drains_like_a_notice(start_worker, run_log):
    worker = start_worker(JOB_PROCESSING_SECONDS=1.5, SPOT_WATCHER_ENABLED="false")
    job_id = post_job(worker).json()["id"]
    worker.wait_for(lambda: starts_of(run_log, job_id), 5, what="job start")

    worker.signal(signal.SIGTERM)
    worker.wait_for(lambda: worker.request("GET", "/ready").status == 503, 2, what="/ready 503")
    assert worker.request("GET", "/health").status == 200
    assert post_job(worker).status == 503
    # The control endpoints keep working during the drain.
    assert worker.request("POST", "/drain").status == 202
    assert worker.request("GET", "/metrics").status == 200

    assert worker.wait_exit(10) == 0
    assert table(worker) == [(job_id, "done", 1)]
    assert len(ends_of(run_log, job_id)) == 1


def test_imds_script_404_then_rebalance_then_notice(start_worker, fake_imds, run_log):
    worker = start_worker(JOB_PROCESSING_SECONDS=0.3)
    first = post_job(worker).json()["id"]
    second = post_job(worker).json()["id"]

    fake_imds.recommend_rebalance()
    worker.wait_for(lambda: worker.request("GET", "/ready").status == 503, 2, what="/ready 503")
    assert post_job(worker).status == 503
    # Admission only: the queued work still runs and the worker stays up.
    worker.wait_job_status(first, "done")
    worker.wait_job_status(second, "done")
    # Idle and still watching: ten more IMDS polls (the worker's own cadence, not a wall-clock wait), and up.
    polls = fake_imds.count_gets(INSTANCE_ACTION)
    worker.wait_for(lambda: fake_imds.count_gets(INSTANCE_ACTION) >= polls + 10, 5, what="ten more IMDS polls")
    assert worker.running()
    assert worker.request("GET", "/health").json()["drain"]["state"] == "admission_stopped"

    fake_imds.notice("stop")
    assert worker.wait_exit(5) == 0
    assert [row[1] for row in table(worker)] == ["done", "done"]


def test_deadline_comes_from_the_notice_time(start_worker, fake_imds, run_log):
    # Grace 20 s, but the instance goes away 3 s from now (margin 1 s): the job must be given back
    # after about 2 s, not 20.
    worker = start_worker(JOB_PROCESSING_SECONDS=30)
    job_id = post_job(worker).json()["id"]
    worker.wait_for(lambda: starts_of(run_log, job_id), 5, what="job start")

    # IMDS gives whole seconds: the deadline is that time minus the 1 s margin, 2 to 3 s from now.
    notice_at = math.floor(time.time()) + 4
    expected = notice_at - 1 - time.time()
    noticed = time.monotonic()
    fake_imds.notice("terminate", at=notice_at)
    assert worker.wait_exit(10) == 0
    elapsed = time.monotonic() - noticed
    assert expected - 0.2 < elapsed < expected + 2.0, (elapsed, expected)

    # Released, not done and not failed: the interrupted attempt is given back.
    assert table(worker) == [(job_id, "queued", 0)]
    assert ends_of(run_log, job_id) == []

    fake_imds.instance_action = None
    restarted = start_worker(JOB_PROCESSING_SECONDS=0.1)
    done = restarted.wait_job_status(job_id, "done")
    assert done["attempts"] == 1
    assert len(starts_of(run_log, job_id)) == 2 and len(ends_of(run_log, job_id)) == 1


@pytest.mark.parametrize("how", ["sigterm", "notice"])
def test_idle_drain_exits_at_once(start_worker, fake_imds, how):
    worker = start_worker(GRACE_PERIOD_SECONDS=60)
    started = time.monotonic()
    if how == "sigterm":
        worker.signal(signal.SIGTERM)
    else:
        fake_imds.notice()
    assert worker.wait_exit(5) == 0
    assert time.monotonic() - started < 2.5  # nowhere near the 60 s grace


def test_kill9_while_job_runs_then_restart_runs_it_again_once(start_worker, run_log):
    worker = start_worker(JOB_PROCESSING_SECONDS=1.0)
    job_id = post_job(worker).json()["id"]
    worker.wait_for(lambda: starts_of(run_log, job_id), 5, what="job start")
    worker.kill9()
    assert table(worker) == [(job_id, "processing", 1)]

    restarted = start_worker(JOB_PROCESSING_SECONDS=0.2)
    done = restarted.wait_job_status(job_id, "done", timeout=10)
    assert done["attempts"] == 2
    assert [line[2] for line in starts_of(run_log, job_id)] == ["1", "2"]
    assert len(ends_of(run_log, job_id)) == 1
    assert table(restarted) == [(job_id, "done", 2)]
    metrics = restarted.request("GET", "/metrics", headers={"Accept": "application/json"}).json()
    assert metrics["spot_drain_lease_expiries_total"] == 1


def test_random_kills_lose_no_accepted_job(start_worker, run_log):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    accepted: list[str] = []
    worker = start_worker(JOB_PROCESSING_SECONDS=0.05, MAX_ATTEMPTS=10)
    for kill in range(4):
        for _post in range(8):
            try:
                response = post_job(worker, {"kill_round": kill})
            except OSError:
                break
            if response.status == 202:
                accepted.append(response.json()["id"])
        time.sleep(rng.uniform(0.0, 0.4))
        worker.kill9()
        worker = start_worker(JOB_PROCESSING_SECONDS=0.05, MAX_ATTEMPTS=10)
    worker.wait_for(lambda: all(row[1] == "done" for row in table(worker)), 30,
                    what=f"every job done (seed {seed})")
    rows = table(worker)
    assert sorted(row[0] for row in rows) == sorted(accepted), f"seed {seed}"
    assert len(accepted) == 32
    for job_id in accepted:
        assert ends_of(run_log, job_id), f"job {job_id} never finished (seed {seed})"


def test_poison_job_ends_dead_and_can_be_requeued(start_worker, run_log):
    # No backoff: a failed job is runnable again at once, so a dead one that were still runnable would be claimed
    # (the oldest runnable first) before any job posted after it.
    worker = start_worker(JOB_HANDLER="handlers_for_tests:always_fail", RETRY_BACKOFF_SECONDS=0)
    job_id = post_job(worker, {"poison": True}).json()["id"]
    dead = worker.wait_job_status(job_id, "dead", timeout=10)
    assert dead["attempts"] == 3 and "poison payload" in dead["last_error"]
    later = post_job(worker, {"poison": "later"}).json()["id"]
    worker.wait_job_status(later, "dead", timeout=10)
    assert len(starts_of(run_log, job_id)) == 3  # no fourth attempt, while the later job had all three of its own

    requeued = worker.request("POST", f"/jobs/{job_id}/requeue")
    assert requeued.status == 200 and requeued.json()["attempts"] == 0
    worker.wait_job_status(job_id, "dead", timeout=10)
    assert worker.request("POST", "/jobs/nope/requeue").status == 404


def test_job_that_crashes_its_worker_process_ends_dead(start_worker, run_log):
    # Each attempt kills the gunicorn worker process; the master starts a new one, which reclaims
    # the expired lease. The attempt counts, so the job cannot crash-loop forever.
    worker = start_worker(JOB_HANDLER="handlers_for_tests:crash_worker_process")
    job_id = post_job(worker).json()["id"]
    dead = worker.wait_job_status(job_id, "dead", timeout=20)
    assert dead["attempts"] == 3 and "lease expired" in dead["last_error"]
    assert len(starts_of(run_log, job_id)) == 3


def test_running_worker_reclaims_a_lease_left_by_another_worker(worker_env, start_worker, run_log):
    # Not only at start: a lease that runs out while this worker is up comes back to the queue.
    other = JobQueue(worker_env["DATABASE_URL"][len("sqlite:///"):], max_attempts=3,
                     retry_backoff_seconds=0.05)
    job_id = other.enqueue({"from": "a worker that died"})[0].id
    assert other.claim("other-host:1", lease_seconds=4.0).id == job_id
    worker = start_worker()
    assert worker.job(job_id)["status"] == "processing"  # still leased after this worker started
    done = worker.wait_job_status(job_id, "done", timeout=10)
    assert done["attempts"] == 2
    assert len(starts_of(run_log, job_id)) == 1  # only this worker ran it; "other" never did
    metrics = worker.request("GET", "/metrics", headers={"Accept": "application/json"}).json()
    assert metrics["spot_drain_lease_expiries_total"] == 1


def test_seed_style_imds_url_sees_the_notice(start_worker, fake_imds):
    # The seed documents IMDS_URL as the instance-action URL itself; a worker configured that way
    # must poll the right path and drain on a notice (it used to poll .../instance-action/latest/...).
    worker = start_worker(IMDS_URL=fake_imds.url + INSTANCE_ACTION)
    worker.wait_for(lambda: fake_imds.count_gets(INSTANCE_ACTION, 404) > 0, 5, what="a poll of instance-action")
    fake_imds.notice("terminate")
    assert worker.wait_exit(10) == 0
    assert all(path in (INSTANCE_ACTION, REBALANCE) for path, _status in fake_imds.gets)


JOBS_TOKEN = "jobs-token-0123456789abcdef"
CONTROL_TOKEN = "control-token-0123456789abc"


def test_jobs_token_guards_every_job_endpoint_and_is_never_shown(start_worker):
    worker = start_worker(JOBS_TOKEN=JOBS_TOKEN, CONTROL_TOKEN=CONTROL_TOKEN, ALLOW_SIMULATE_INTERRUPTION="false",
                          JOB_HANDLER="handlers_for_tests:always_fail", MAX_ATTEMPTS=1)
    good = {"Authorization": f"Bearer {JOBS_TOKEN}"}
    wrong = {"Authorization": "Bearer wrong-token-0000000000"}
    control = {"Authorization": f"Bearer {CONTROL_TOKEN}"}

    assert worker.request("POST", "/jobs", {"n": 1}, auth=False).status == 401
    assert worker.request("POST", "/jobs", {"n": 1}, wrong, auth=False).status == 401
    assert worker.request("POST", "/jobs", {"n": 1}, control, auth=False).status == 401
    assert table(worker) == []
    created = worker.request("POST", "/jobs", {"n": 1}, good, auth=False)
    assert created.status == 202
    job_id = created.json()["id"]
    worker.wait_job_status(job_id, "dead")

    for headers in ({}, wrong):
        assert worker.request("GET", f"/jobs/{job_id}", headers=headers, auth=False).status == 401
        assert worker.request("POST", f"/jobs/{job_id}/requeue", headers=headers, auth=False).status == 401
    assert table(worker) == [(job_id, "dead", 1)]
    assert worker.request("GET", f"/jobs/{job_id}", headers=good, auth=False).json()["status"] == "dead"
    # Requeue is a job operation: the jobs token may do it (the control token still may, too).
    assert worker.request("POST", f"/jobs/{job_id}/requeue", headers=good, auth=False).status == 200
    worker.wait_job_status(job_id, "dead")
    assert worker.request("POST", f"/jobs/{job_id}/requeue", headers=control, auth=False).status == 200
    worker.wait_job_status(job_id, "dead")
    # The jobs token opens no control endpoint.
    assert worker.request("POST", "/drain", headers=good, auth=False).status == 403
    assert worker.request("GET", "/ready").status == 200

    # Neither token appears in the log or in any process's command line.
    log_text = worker.log_path.read_text()
    assert JOBS_TOKEN not in log_text and CONTROL_TOKEN not in log_text
    for pid in [worker.proc.pid] + children_of(worker.proc.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert JOBS_TOKEN not in cmdline and CONTROL_TOKEN not in cmdline


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_database_files_are_private_whatever_the_umask(start_worker, tmp_path):
    # Outside the role's unit (UMask=0077) the usual umask is 022: the queue must still be 0600.
    previous = os.umask(0o022)
    try:
        worker = start_worker()
    finally:
        os.umask(previous)
    job_id = post_job(worker).json()["id"]
    worker.wait_job_status(job_id, "done")
    files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()
             if path.name.startswith("jobs.db")}
    assert set(files) == {"jobs.db", "jobs.db-wal", "jobs.db-shm"}
    assert files == dict.fromkeys(files, 0o600)
