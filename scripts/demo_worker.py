"""Demo of the graceful-drain worker on loopback: start it, post a job, simulate a Spot interruption,
watch /ready turn 503 while the job finishes, and see the worker exit by itself.

Nothing leaves 127.0.0.1: the IMDS watcher is off (the interruption comes from the simulate
endpoint) and IMDS_URL points at a closed loopback port all the same.
"""

from __future__ import annotations

import http.client
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "worker" / "tests"))  # the process helper shared with the tests

from worker_process import WorkerProcess, free_port  # noqa: E402

JOB_SECONDS = 2.0


def step(message: str) -> None:
    print(f"[demo_worker] {message}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="demo-worker-") as tmpdir:
        tmp = Path(tmpdir)
        env = {
            "DATABASE_URL": f"sqlite:///{tmp / 'jobs.db'}",
            "SPOT_WATCHER_ENABLED": "false",
            "IMDS_URL": f"http://127.0.0.1:{free_port()}",
            "ALLOW_SIMULATE_INTERRUPTION": "true",
            "CONTROL_TOKEN": "",
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "JOB_PROCESSING_SECONDS": str(JOB_SECONDS),
            "GRACE_PERIOD_SECONDS": "30",
        }
        worker = WorkerProcess(env, tmp / "worker.log")
        try:
            step(f"starting spot-drain-worker on 127.0.0.1:{env['PORT']} (gunicorn, one gthread worker)")
            worker.start()
            health = worker.request("GET", "/health")
            ready = worker.request("GET", "/ready")
            step(f"GET /health -> {health.status}, GET /ready -> {ready.status}")

            posted = worker.request("POST", "/jobs", {"task": "render", "frames": 24},
                                    {"Idempotency-Key": "demo-job-1"})
            job_id = posted.json()["id"]
            step(f"POST /jobs -> {posted.status}, job {job_id} ({JOB_SECONDS:g} s of simulated work)")
            worker.wait_job_status(job_id, "processing", timeout=10)
            step(f"GET /jobs/{job_id} -> processing")

            notice = worker.request("POST", "/simulate/interruption", {"action": "terminate"})
            drain = notice.json()["drain"]
            step(f"POST /simulate/interruption -> {notice.status}: {drain['reason']}, "
                 f"deadline in {drain['seconds_until_deadline']:.0f} s")
            noticed = time.monotonic()

            ready = worker.request("GET", "/ready")
            step(f"GET /ready -> {ready.status} (draining); GET /health -> "
                 f"{worker.request('GET', '/health').status}")
            refused = worker.request("POST", "/jobs", {"task": "late"})
            step(f"POST /jobs -> {refused.status}, Retry-After: {refused.headers.get('Retry-After')} "
                 f"({refused.json()['error']})")

            # The worker exits as soon as the job is done, so the last answer may be a refused
            # connection: the row in the database is the record that counts.
            seen = "processing"
            while worker.running() and seen != "done":
                try:
                    seen = worker.job(job_id)["status"]
                except (OSError, http.client.HTTPException):
                    break
                time.sleep(0.05)
            if seen == "done":
                step(f"GET /jobs/{job_id} -> done")
            code = worker.wait_exit(JOB_SECONDS + 15)
            step(f"worker exited with code {code}, {time.monotonic() - noticed:.1f} s after the notice "
                 f"(the job's remaining time, not the 30 s grace)")
            with sqlite3.connect(tmp / "jobs.db") as conn:
                status, attempts = conn.execute("SELECT status, attempts FROM jobs WHERE id = ?",
                                                (job_id,)).fetchone()
                stored = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            step(f"jobs table: job {job_id} is {status} after {attempts} attempt(s); {stored} job(s) stored "
                 f"(the refused one never was)")
            if ready.status != 503 or refused.status != 503 or code != 0 or status != "done" or stored != 1:
                step("FAILED: the drain did not behave as shown above")
                return 1
            step("ok")
            return 0
        except Exception:
            step("worker log:\n" + worker.log_tail())
            raise
        finally:
            worker.stop()


if __name__ == "__main__":
    sys.exit(main())
