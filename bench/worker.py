"""Benchmark of the spot-drain-worker on loopback.

Prints:
  1. accepted jobs/s for POST /jobs (the real server: gunicorn + gthread, SQLite WAL, synchronous=FULL),
  2. claim throughput of the SQLite queue (claim + complete per second, one and several claimers),
  3. latency from SIGTERM, from a simulated notice and from an IMDS notice to the first /ready 503,
  4. the SQS backend (QUEUE_URL + JOBS_TABLE) on an embedded moto server on 127.0.0.1: accepted jobs/s, jobs
     done/s with 1 and 3 workers, IMDS notice -> /ready 503, and interruption -> the job running again on
     another worker; each next to its SQLite baseline from the same run where one exists. moto's latency is
     not SQS's or DynamoDB's (a Python server on the same CPUs as the workers): these rows say how the
     backend behaves and what it costs relative to SQLite here, not how fast it is on AWS.
Targets: >= 500 jobs/s accepted, <= 100 ms to 503 (SQLite). Performance is reported, never asserted; the exit
status is not 0 only when a run fails or a correctness check does (a job lost or done twice).

Every loop is bounded; every server runs on 127.0.0.1 and is stopped before the script ends.
Usage: python bench/worker.py [--jobs 3000] [--clients 8] [--rounds 5] [--sqs-jobs 300] [--skip-sqs]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "worker" / "tests"))  # the fake IMDS and process helper of the tests
sys.path.insert(1, str(REPO))  # the collection's moto server (tests/support/moto.py)

from fake_imds import FakeImds  # noqa: E402
from worker_process import WorkerProcess, free_port, run_lines  # noqa: E402

from spot_drain_worker.jobqueue import JobQueue  # noqa: E402


def base_env(tmp: Path, imds_url: str, **overrides) -> dict:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp / 'jobs.db'}",
        "SPOT_WATCHER_ENABLED": "false",
        "IMDS_URL": imds_url,
        "POLL_INTERVAL_SECONDS": "0.05",
        "GRACE_PERIOD_SECONDS": "30",
        "JOB_PROCESSING_SECONDS": "3600",  # the runner holds one job; the rest stays queued
        "ALLOW_SIMULATE_INTERRUPTION": "true",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "CONTROL_TOKEN": "",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def bench_admission(tmp: Path, imds_url: str, jobs: int, clients: int, **overrides) -> float:
    worker = WorkerProcess(base_env(tmp, imds_url, **overrides), tmp / "admission.log").start()
    try:
        per_client = jobs // clients
        errors: list[str] = []
        barrier = threading.Barrier(clients + 1)

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
            body = json.dumps({"task": "bench", "size": 1})
            barrier.wait()
            for _request in range(per_client):
                conn.request("POST", "/jobs", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 202:
                    errors.append(str(response.status))
            conn.close()

        threads = [threading.Thread(target=client) for _client in range(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        started = time.perf_counter()
        for t in threads:
            t.join(120)
        elapsed = time.perf_counter() - started
        if errors:
            raise RuntimeError(f"{len(errors)} requests were not accepted: {errors[:5]}")
        return per_client * clients / elapsed
    finally:
        worker.stop()


def bench_claims(tmp: Path, jobs: int, claimers: int) -> float:
    path = str(tmp / f"claims-{claimers}.db")
    producer = JobQueue(path, max_attempts=3, retry_backoff_seconds=0)
    for i in range(jobs):
        producer.enqueue({"i": i})
    done = [0] * claimers

    def claim_loop(index: int) -> None:
        queue = JobQueue(path, max_attempts=3, retry_backoff_seconds=0)
        while (job := queue.claim(f"bench-{index}", 60)) is not None:
            queue.complete(job, None)
            done[index] += 1

    threads = [threading.Thread(target=claim_loop, args=(i,)) for i in range(claimers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - started
    assert sum(done) == jobs, (sum(done), jobs)
    return jobs / elapsed


def time_to_503(worker: WorkerProcess, trigger, timeout: float = 5.0) -> float:
    return time_to_503_answer(worker, trigger, timeout)[0]


def time_to_503_answer(worker: WorkerProcess, trigger, timeout: float = 5.0) -> tuple[float, dict]:
    """Poll /ready on a kept-alive connection; seconds from trigger() to the first 503."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5)
    conn.request("GET", "/ready")
    first = conn.getresponse()
    first.read()
    assert first.status == 200, first.status
    started = time.perf_counter()
    trigger()
    while time.perf_counter() - started < timeout:
        conn.request("GET", "/ready")
        response = conn.getresponse()
        body = response.read()
        if response.status == 503:
            elapsed = time.perf_counter() - started
            conn.close()
            return elapsed, json.loads(body)
    conn.close()
    raise RuntimeError("/ready never turned 503")


def bench_drain_latency(tmp: Path, imds: FakeImds, rounds: int) -> dict:
    results: dict[str, list[float]] = {"SIGTERM": [], "POST /simulate/interruption": [],
                                       "IMDS notice (poll 0.05 s)": []}
    for name in results:
        for round_number in range(rounds):
            imds.instance_action = None
            watcher = "true" if name.startswith("IMDS") else "false"
            env = base_env(tmp / f"latency-{len(results[name])}-{round_number}", imds.url,
                           SPOT_WATCHER_ENABLED=watcher, JOB_PROCESSING_SECONDS="0.5")
            Path(env["DATABASE_URL"][len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            worker = WorkerProcess(env, tmp / "latency.log").start()
            try:
                # A job in flight keeps the worker up while it drains, so the 503 can be seen.
                worker.request("POST", "/jobs", {})
                time.sleep(0.1)
                if name == "SIGTERM":
                    trigger = functools.partial(os.kill, worker.proc.pid, signal.SIGTERM)
                elif name.startswith("POST"):
                    trigger = functools.partial(worker.request, "POST", "/simulate/interruption", {})
                else:
                    trigger = imds.notice
                results[name].append(time_to_503(worker, trigger))
                worker.wait_exit(10)
            finally:
                worker.stop()
    return results


# ---- the SQS backend on an embedded moto server ----

class SqsBench:
    """The moto server (started and stopped here) and a fresh queue, dead-letter queue and table per use."""

    def __init__(self, tmp: Path):
        from tests.support.moto import FAKE_CREDENTIALS, MotoServer
        os.environ.update(FAKE_CREDENTIALS)  # moto's; boto3 in this process and the workers use them
        self.tmp = tmp
        self.moto = MotoServer(log_path=tmp / "moto.log")

    def __enter__(self) -> "SqsBench":
        self.moto.start()
        return self

    def __exit__(self, *exc) -> None:
        self.moto.stop()

    def fresh(self) -> "object":
        from sqs_support import AwsFixture
        return AwsFixture(self.moto, None)

    def env(self, aws, imds_url: str, run_log: Path, **overrides) -> dict:
        worker = aws.worker_env(through_proxy=False)
        return base_env(self.tmp, imds_url, **dict(worker, JOBS_TABLE_CREATE="true", RUN_LOG=str(run_log),
                                                   JOB_HANDLER="handlers_for_tests:record_where_and_sleep",
                                                   **overrides))


def run_jobs(tmp: Path, env_for, jobs: int, workers: int, enqueue) -> float:
    """Jobs done per second by `workers` real workers: `jobs` queued beforehand (enqueue), then the workers
    started; measured from the first job's start to the last job's end in the handlers' run log, so the
    workers' start-up is not counted. Checks that every job ran exactly once."""
    run_log = tmp / f"runs-{workers}-{time.monotonic_ns()}.log"
    job_ids = [enqueue() for _job in range(jobs)]
    started = [WorkerProcess(env_for(run_log, WORKER_NAME=f"w{i}", PORT=str(free_port())),
                             tmp / f"done-{workers}-{i}.log") for i in range(workers)]
    try:
        for worker in started:
            worker.start(timeout=60)
        deadline = time.monotonic() + 600
        while len([line for line in run_lines(run_log) if line[0] == "end"]) < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(run_lines(run_log))} run lines after 600 s")
            time.sleep(0.1)
        for job_id in job_ids:
            started[0].wait_job_status(job_id, "done", timeout=60)
    finally:
        for worker in started:
            worker.stop()
    lines = run_lines(run_log)
    starts = [line for line in lines if line[0] == "start"]
    ends = [line for line in lines if line[0] == "end"]
    if sorted(line[1] for line in ends) != sorted(job_ids):
        raise RuntimeError(f"jobs lost or run twice: {len(ends)} ends for {jobs} jobs")
    first = min(float(line[4]) for line in starts)
    last = max(float(line[3]) for line in ends)
    return jobs / (last - first)


def sqs_done_rates(tmp: Path, sqs: SqsBench, imds_url: str, jobs: int) -> dict:
    from spot_drain_worker.jobqueue import JobQueue
    from spot_drain_worker.sqsqueue import SqsQueue
    rates = {}
    # The baseline: one worker on its SQLite file, the same handler (sleeps 0 s), the same measurement.
    sqlite_path = tmp / "done-baseline.db"
    sqlite = JobQueue(str(sqlite_path), max_attempts=3, retry_backoff_seconds=0)
    rates["SQLite, 1 worker"] = run_jobs(
        tmp, lambda run_log, **o: base_env(tmp, imds_url, DATABASE_URL=f"sqlite:///{sqlite_path}", RUN_LOG=str(run_log),
                                           JOB_HANDLER="handlers_for_tests:record_where_and_sleep", **o),
        jobs, 1, lambda: sqlite.enqueue({"seconds": 0})[0].id)
    for workers in (1, 3):
        aws = sqs.fresh()
        queue = SqsQueue(queue_url=aws.queue_url, table=aws.table, sqs=aws.sqs, dynamodb=aws.dynamodb,
                         max_attempts=3, retry_backoff_seconds=0)
        aws.dynamodb.create_table(TableName=aws.table, BillingMode="PAY_PER_REQUEST",
                                  AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                                  KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        rates[f"SQS, {workers} worker{'s' if workers > 1 else ''}"] = run_jobs(
            tmp, lambda run_log, aws=aws, **o: sqs.env(aws, imds_url, run_log, **o),
            jobs, workers, lambda queue=queue: queue.enqueue({"seconds": 0})[0].id)
    return rates


def sqs_notice_latency(tmp: Path, sqs: SqsBench, imds: FakeImds, rounds: int) -> list[float]:
    samples = []
    for round_number in range(rounds):
        imds.instance_action = None
        aws = sqs.fresh()
        run_log = tmp / f"notice-runs-{round_number}.log"
        env = sqs.env(aws, imds.url, run_log, SPOT_WATCHER_ENABLED="true", LEASE_SECONDS="60",
                      JOB_PROCESSING_SECONDS="2", PORT=str(free_port()))
        worker = WorkerProcess(env, tmp / f"sqs-latency-{round_number}.log").start(timeout=60)
        try:
            # A job in flight keeps the worker up while it drains, so the 503 can be seen.
            worker.request("POST", "/jobs", {})
            worker.wait_for(lambda: run_lines(run_log), 30, what="the job to start")
            samples.append(time_to_503(worker, imds.notice))
            worker.wait_exit(30)
        finally:
            worker.stop()
    return samples


def sqs_interruption_handover(tmp: Path, sqs: SqsBench, imds: FakeImds, rounds: int) -> list[tuple[float, float]]:
    """(notice -> job running on the other worker, drain deadline -> job running there) per round: a job longer
    than the grace period on worker a, a Spot notice there; a hands the job back at its deadline and b, idle on
    the same queue, receives it. Lease 60 s: without the hand-back b would wait that long."""
    results = []
    for round_number in range(rounds):
        imds.instance_action = None
        aws = sqs.fresh()
        run_log = tmp / f"handover-{round_number}.log"
        timings = {"LEASE_SECONDS": "60", "GRACE_PERIOD_SECONDS": "2", "SPOT_WATCHER_ENABLED": "true"}
        a = WorkerProcess(sqs.env(aws, imds.url, run_log, WORKER_NAME="a", PORT=str(free_port()), **timings),
                          tmp / f"handover-a-{round_number}.log").start(timeout=60)
        b = None
        try:
            job_id = a.request("POST", "/jobs", {"seconds": 120}).json()["id"]
            a.wait_for(lambda: [line for line in run_lines(run_log) if line[0] == "start"], 30, what="the job on a")
            with FakeImds() as other_imds:
                b = WorkerProcess(sqs.env(aws, other_imds.url, run_log, WORKER_NAME="b", PORT=str(free_port()),
                                          **timings), tmp / f"handover-b-{round_number}.log").start(timeout=60)
                noticed = time.time()
                _latency, ready = time_to_503_answer(a, imds.notice)
                deadline = time.time() + ready["drain"]["seconds_until_deadline"]
                on_b = b.wait_for(lambda: [line for line in run_lines(run_log)
                                           if line[0] == "start" and line[1] == job_id and line[3] == "b"],
                                  60, what="the job on b")[0]
                at = float(on_b[4])
                results.append((at - noticed, at - deadline))
                a.wait_exit(30)
                b.stop()
        finally:
            a.stop()
            if b is not None:
                b.stop()
    return results


def bench_sqs(tmp: Path, imds: FakeImds, args, baseline: dict) -> None:
    with SqsBench(tmp) as sqs:
        aws = sqs.fresh()
        rate = bench_admission(tmp, imds.url, args.sqs_jobs, args.clients,
                               **sqs.env(aws, imds.url, tmp / "admission-runs.log"))
        print(f"SQS POST /jobs accepted: {rate:8.0f} jobs/s  ({args.sqs_jobs} jobs, {args.clients} keep-alive "
              f"clients; x SQLite {rate / baseline['accepted']:.2f})")
        rates = sqs_done_rates(tmp, sqs, imds.url, args.sqs_done_jobs)
        for name, value in rates.items():
            scaling = f", x SQS 1 worker {value / rates['SQS, 1 worker']:.2f}" if name == "SQS, 3 workers" else ""
            print(f"jobs done, {name + ':':18s} {value:8.1f} jobs/s  ({args.sqs_done_jobs} jobs of 0 s, first start"
                  f" to last end; x SQLite 1 worker {value / rates['SQLite, 1 worker']:.2f}{scaling})")
        ms = [s * 1000 for s in sqs_notice_latency(tmp, sqs, imds, args.rounds)]
        sqlite_ms = statistics.median(baseline["IMDS notice (poll 0.05 s)"]) * 1000
        print(f"SQS IMDS notice (poll 0.05 s) -> /ready 503: median {statistics.median(ms):6.1f} ms, max "
              f"{max(ms):6.1f} ms over {len(ms)} runs (x SQLite median {statistics.median(ms) / sqlite_ms:.2f})")
        handover = sqs_interruption_handover(tmp, sqs, imds, args.handover_rounds)
        from_notice = [h[0] for h in handover]
        from_deadline = [h[1] for h in handover]
        print(f"SQS interruption -> job running on another worker: notice -> running median "
              f"{statistics.median(from_notice):.2f} s (grace 2 s), drain deadline -> running median "
              f"{statistics.median(from_deadline):.2f} s, max {max(from_deadline):.2f} s over {len(handover)} runs "
              f"(lease 60 s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--claim-jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sqs-jobs", type=int, default=300, help="jobs posted to the SQS worker")
    parser.add_argument("--sqs-done-jobs", type=int, default=150, help="jobs run per jobs-done/s measurement")
    parser.add_argument("--handover-rounds", type=int, default=3)
    parser.add_argument("--skip-sqs", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmpdir, FakeImds() as imds:
        tmp = Path(tmpdir)
        baseline = {}
        rate = baseline["accepted"] = bench_admission(tmp, imds.url, args.jobs, args.clients)
        print(f"POST /jobs accepted: {rate:8.0f} jobs/s  ({args.jobs} jobs, {args.clients} keep-alive "
              f"clients; target >= 500)  {'OK' if rate >= 500 else 'BELOW TARGET'}")
        for claimers in (1, 4):
            claims = bench_claims(tmp, args.claim_jobs, claimers)
            print(f"claim+complete:      {claims:8.0f} jobs/s  ({args.claim_jobs} jobs, {claimers} claimer"
                  f"{'s' if claimers > 1 else ''}, one SQLite connection each)")
        for name, samples in bench_drain_latency(tmp, imds, args.rounds).items():
            baseline[name] = samples
            ms = [s * 1000 for s in samples]
            worst = max(ms)
            print(f"{name + ' -> /ready 503:':44s} median {statistics.median(ms):6.1f} ms, "
                  f"max {worst:6.1f} ms over {len(ms)} runs (target <= 100)  "
                  f"{'OK' if worst <= 100 else 'ABOVE TARGET'}")
        if not args.skip_sqs:
            bench_sqs(tmp, imds, args, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
