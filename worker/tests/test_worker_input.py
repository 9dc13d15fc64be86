"""Bad input: each is a clear 4xx (or a start-up error naming the variable) and nothing is stored."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from worker_process import child_pythonpath

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-control-token-0123"


def stored_jobs(worker) -> int:
    path = worker.env["DATABASE_URL"][len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def test_bad_requests_are_refused_and_store_nothing(start_worker):
    worker = start_worker(MAX_PAYLOAD_BYTES=1024)
    cases = {
        "malformed JSON": (b'{"a": ', {}, 400, "malformed JSON"),
        "array": (b"[1, 2]", {}, 400, "JSON object, not list"),
        "string": (b'"job"', {}, 400, "JSON object, not str"),
        "empty body": (b"", {}, 400, "must be a JSON object"),
        "not UTF-8": (b'{"a": "\xff"}', {}, 400, "malformed JSON"),
        "NaN": (b'{"a": NaN}', {}, 400, "NaN is not valid JSON"),
        "oversize": (b'{"a": "' + b"x" * 2000 + b'"}', {}, 413, "MAX_PAYLOAD_BYTES"),
        "empty key": (b"{}", {"Idempotency-Key": ""}, 400, "Idempotency-Key"),
        "long key": (b"{}", {"Idempotency-Key": "k" * 300}, 400, "Idempotency-Key"),
    }
    for name, (body, headers, status, message) in cases.items():
        response = worker.request("POST", "/jobs", body, dict(headers, **{"Content-Type": "application/json"}))
        assert response.status == status, name
        assert message in response.json()["error"], (name, response)
    assert stored_jobs(worker) == 0

    missing = worker.request("GET", "/jobs/does-not-exist")
    assert missing.status == 404 and "does-not-exist" in missing.json()["error"]
    assert worker.request("DELETE", "/jobs/x").status == 405
    assert worker.request("POST", "/simulate/interruption", {"action": "explode"}).status == 400
    assert worker.request("POST", "/simulate/interruption", {"time": "tomorrow"}).status == 400
    assert worker.request("GET", "/ready").status == 200  # none of it started a drain
    assert stored_jobs(worker) == 0


def test_production_mode_closes_control_endpoints(start_worker):
    worker = start_worker(CONTROL_TOKEN=TOKEN, ALLOW_SIMULATE_INTERRUPTION="false")
    assert worker.request("POST", "/shutdown").status == 403
    assert worker.request("POST", "/simulate/interruption").status == 403

    missing = worker.request("POST", "/drain")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert worker.request("POST", "/drain", headers={"Authorization": "Bearer wrong-token-000000000"}).status == 403
    assert worker.request("POST", "/jobs/x/requeue").status == 401
    assert worker.request("GET", "/ready").status == 200  # nothing above drained the worker

    accepted = worker.request("POST", "/drain", headers={"Authorization": f"Bearer {TOKEN}"})
    assert accepted.status == 202
    assert worker.wait_exit(5) == 0


def test_production_without_token_has_no_drain_endpoint(start_worker):
    worker = start_worker(ALLOW_SIMULATE_INTERRUPTION="false")
    refused = worker.request("POST", "/drain", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status == 403 and "CONTROL_TOKEN" in refused.json()["error"]
    assert worker.request("POST", "/shutdown").status == 403
    assert worker.request("GET", "/ready").status == 200


def test_shutdown_in_development_mode_gives_the_job_back(start_worker, run_log):
    worker = start_worker(JOB_PROCESSING_SECONDS=30)
    job_id = worker.request("POST", "/jobs", {}).json()["id"]
    worker.wait_for(lambda: run_log.exists() and job_id in run_log.read_text(), 5, what="job start")
    assert worker.request("POST", "/shutdown").status == 202
    assert worker.wait_exit(5) == 0
    path = worker.env["DATABASE_URL"][len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT status, attempts FROM jobs").fetchall() == [("queued", 0)]


@pytest.mark.parametrize("variable,value", [
    ("PORT", "eighty"),
    ("PORT", "70000"),
    ("GRACE_PERIOD_SECONDS", "-5"),
    ("POLL_INTERVAL_SECONDS", "0"),
    ("LEASE_SECONDS", "abc"),
    ("MAX_ATTEMPTS", "0"),
    ("SPOT_WATCHER_ENABLED", "maybe"),
    ("ALLOW_SIMULATE_INTERRUPTION", "sure"),
    ("IMDS_URL", "169.254.169.254"),
    ("DATABASE_URL", "postgresql://db/jobs"),
    ("DATABASE_URL", "sqlite:////no/such/dir/jobs.db"),
    ("JOB_HANDLER", "no_such_module:run"),
    ("JOB_HANDLER", "handlers_for_tests"),
    ("CONTROL_TOKEN", "short"),
])
def test_bad_environment_stops_the_worker_naming_the_variable(worker_env, tmp_path, variable, value):
    env = dict(os.environ)
    env.update(worker_env)
    env.update({variable: value, "PYTHONPATH": child_pythonpath()})
    result = subprocess.run([sys.executable, "-m", "spot_drain_worker"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr and "configuration error" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "jobs.db").exists()  # stopped before the database was touched


def test_database_url_as_a_plain_path_runs_jobs_in_that_file(start_worker, tmp_path):
    # Issue 17, item 4: the form the README documents and the seed described ("path to SQLite file")
    # stopped the worker at start with an UnboundLocalError.
    path = tmp_path / "plain" / "queue.db"
    path.parent.mkdir()
    worker = start_worker(DATABASE_URL=str(path))
    job_id = worker.request("POST", "/jobs", {"n": 1}).json()["id"]
    assert worker.wait_job_status(job_id, "done")["attempts"] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id, status FROM jobs").fetchall() == [(job_id, "done")]
    assert not (tmp_path / "jobs.db").exists()  # not the default file, nor the fixture's


def test_console_script_and_module_share_the_entry_point():
    for command in (["spot-drain-worker", "--help"], [sys.executable, "-m", "spot_drain_worker", "--help"]):
        if command[0] == "spot-drain-worker":
            command[0] = os.path.join(os.path.dirname(sys.executable), "spot-drain-worker")
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0 and "environment variables" in result.stdout


# ---- the worker's share of the bad-input cases ------------------------------------------------------
# Each case is refused with a message that names the problem, and nothing changes: the queue's rows
# (and the database files, for start-up errors) are the same before and after.

JOBS_TOKEN = "jobs-token-0123456789abcdef"
OTHER_CONTROL_TOKEN = "control-token-0123456789abc"


def queue_rows(worker) -> list[tuple]:
    path = worker.env["DATABASE_URL"][len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, status, attempts, payload FROM jobs ORDER BY rowid").fetchall()


def nested(depth: int) -> bytes:
    """A JSON object whose value is `depth` - 1 nested arrays: `depth` levels in all."""
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.fixture(scope="module")
def guarded_worker(tmp_path_factory):
    """One worker for all payload cases (development mode for the simulate endpoint, with a jobs
    token), holding one done job so that 'nothing changed' compares a non-empty queue."""
    from fake_imds import FakeImds
    from worker_process import WorkerProcess, free_port

    tmp = tmp_path_factory.mktemp("guarded")
    with FakeImds() as imds:
        worker = WorkerProcess({
            "DATABASE_URL": f"sqlite:///{tmp / 'jobs.db'}", "IMDS_URL": imds.url,
            "POLL_INTERVAL_SECONDS": "0.05", "ALLOW_SIMULATE_INTERRUPTION": "true", "CONTROL_TOKEN": "",
            "HOST": "127.0.0.1", "PORT": str(free_port()), "JOBS_TOKEN": JOBS_TOKEN,
            "JOB_PROCESSING_SECONDS": "0", "MAX_PAYLOAD_BYTES": "65536",
        }, tmp / "worker.log")
        try:
            worker.start()
            job_id = worker.request("POST", "/jobs", {"n": 1}).json()["id"]
            worker.wait_job_status(job_id, "done")
            worker.existing_job = job_id
            yield worker
        finally:
            worker.stop()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


JSON = {"Content-Type": "application/json"}

PAYLOAD_CASES = {
    # name: (method, path, body, headers, status, message)
    "text/plain, a browser's cross-origin simple request": (
        "POST", "/jobs", b'{"a": 1}', dict(bearer(JOBS_TOKEN), **{"Content-Type": "text/plain"}),
        415, "Content-Type must be application/json (got text/plain)"),
    "no Content-Type": (
        "POST", "/jobs", b'{"a": 1}', bearer(JOBS_TOKEN), 415, "Content-Type must be application/json"),
    "form-encoded": (
        "POST", "/jobs", b"a=1", dict(bearer(JOBS_TOKEN), **{"Content-Type": "application/x-www-form-urlencoded"}),
        415, "Content-Type must be application/json"),
    "no jobs token": (
        "POST", "/jobs", b'{"a": 1}', JSON, 401, "missing jobs token (Authorization: Bearer <JOBS_TOKEN>)"),
    "wrong jobs token": (
        "POST", "/jobs", b'{"a": 1}', dict(JSON, **bearer("x" * 26)), 401, "wrong jobs token"),
    "not a bearer token": (
        "POST", "/jobs", b'{"a": 1}', dict(JSON, Authorization=f"Basic {JOBS_TOKEN}"), 401, "missing jobs token"),
    "read a job without the token": (
        "GET", "/jobs/{job}", None, {}, 401, "missing jobs token"),
    "read a job with a wrong token": (
        "GET", "/jobs/{job}", None, bearer(JOBS_TOKEN[:-1] + "X"), 401, "wrong jobs token"),
    "requeue without the token": (
        "POST", "/jobs/{job}/requeue", None, {}, 401, "missing jobs token"),
    "JSON nested 950 deep": (
        "POST", "/jobs", nested(950), dict(JSON, **bearer(JOBS_TOKEN)), 400,
        "JSON nested deeper than 64 levels"),
    "JSON array nested 950 deep": (
        "POST", "/jobs", b"[" * 950 + b"]" * 950, dict(JSON, **bearer(JOBS_TOKEN)), 400,
        "JSON nested deeper than 64 levels"),
    "JSON nested 65 deep": (
        "POST", "/jobs", nested(65), dict(JSON, **bearer(JOBS_TOKEN)), 400, "JSON nested deeper than 64 levels"),
    "simulate with JSON nested 950 deep": (
        "POST", "/simulate/interruption", nested(950), JSON, 400, "JSON nested deeper than 64 levels"),
}


@pytest.mark.parametrize("case", PAYLOAD_CASES, ids=list(PAYLOAD_CASES))
def test_bad_payload_or_credentials_change_nothing(guarded_worker, case):
    method, path, body, headers, status, message = PAYLOAD_CASES[case]
    worker = guarded_worker
    before = queue_rows(worker)
    response = worker.request(method, path.format(job=worker.existing_job), body, headers, auth=False)
    assert response.status == status, response
    assert message in response.json()["error"], response
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert JOBS_TOKEN not in response.body.decode()
    assert queue_rows(worker) == before
    assert worker.request("GET", "/ready").status == 200  # no drain, no stopped admission


def test_depth_64_is_accepted(guarded_worker):
    worker = guarded_worker
    response = worker.request("POST", "/jobs", nested(64), dict(JSON, **bearer(JOBS_TOKEN)), auth=False)
    assert response.status == 202, response
    assert worker.wait_job_status(response.json()["id"], "done")["attempts"] == 1


def database_files(directory) -> dict:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())
            if path.name.startswith("jobs.db")}


@pytest.mark.parametrize("overrides,variable,words", [
    ({"IMDS_URL": "http://127.0.0.1:9/latest/meta-data/"}, "IMDS_URL", "path"),
    ({"IMDS_URL": "http://127.0.0.1:9/?token=1"}, "IMDS_URL", "query"),
    ({"JOBS_TOKEN": "short"}, "JOBS_TOKEN", "at least 16 characters"),
    ({"JOBS_TOKEN": OTHER_CONTROL_TOKEN, "CONTROL_TOKEN": OTHER_CONTROL_TOKEN, "ALLOW_SIMULATE_INTERRUPTION": "false"},
     "JOBS_TOKEN", "differ from CONTROL_TOKEN"),
    ({"HOST": "0.0.0.0", "ALLOW_SIMULATE_INTERRUPTION": "false"}, "JOBS_TOKEN", "HOST=0.0.0.0"),
    ({"ALLOW_SIMULATE_INTERRUPTION": "true", "CONTROL_TOKEN": OTHER_CONTROL_TOKEN},
     "ALLOW_SIMULATE_INTERRUPTION", "CONTROL_TOKEN"),
    ({"RETRY_BACKOFF_SECONDS": "600"}, "RETRY_BACKOFF_SECONDS", "at most 300"),
    ({"NOTICE_MARGIN_SECONDS": "120"}, "POLL_INTERVAL_SECONDS + NOTICE_MARGIN_SECONDS", "below 120"),
    ({"DATABASE_URL": "sqlite:///{tmp}/jobs.db?mode=ro"}, "DATABASE_URL", "query"),
    ({"HOST": "[::1]"}, "HOST", "without brackets"),
])
def test_bad_setting_stops_the_worker_with_one_line_and_touches_nothing(
        worker_env, tmp_path, overrides, variable, words):
    from spot_drain_worker.jobqueue import JobQueue

    queue = JobQueue(str(tmp_path / "jobs.db"), max_attempts=3, retry_backoff_seconds=1)
    queue.enqueue({"kept": True})
    queue.close()
    before = database_files(tmp_path)
    env = dict(os.environ)
    env.update(worker_env)
    env.update({k: v.format(tmp=tmp_path) for k, v in overrides.items()})
    env["PYTHONPATH"] = child_pythonpath()
    result = subprocess.run([sys.executable, "-m", "spot_drain_worker"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"spot-drain-worker: configuration error: {variable}"), lines[0]
    assert words in lines[0], lines[0]
    for name, value in overrides.items():
        if name.endswith("_TOKEN"):
            assert value not in lines[0]  # a token is never echoed, not even a wrong one
    assert database_files(tmp_path) == before
