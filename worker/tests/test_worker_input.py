"""Bad input: each is a clear 4xx (or a start-up error naming the variable) and nothing is stored."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from worker_process import TESTS_DIR

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
    worker = start_worker(CONTROL_TOKEN=TOKEN, ALLOW_SIMULATE_INTERRUPTION="true")
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
    env.update({variable: value, "PYTHONPATH": str(TESTS_DIR)})
    result = subprocess.run([sys.executable, "-m", "spot_drain_worker"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr and "configuration error" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "jobs.db").exists()  # stopped before the database was touched


def test_console_script_and_module_share_the_entry_point():
    for command in (["spot-drain-worker", "--help"], [sys.executable, "-m", "spot_drain_worker", "--help"]):
        if command[0] == "spot-drain-worker":
            command[0] = os.path.join(os.path.dirname(sys.executable), "spot-drain-worker")
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0 and "environment variables" in result.stdout
