"""Benchmark of the spot-drain-worker on loopback.

Prints:
  1. accepted jobs/s for POST /jobs (the real server: gunicorn + gthread, SQLite WAL, synchronous=FULL),
  2. claim throughput of the SQLite queue (claim + complete per second, one and several claimers),
  3. latency from SIGTERM, from a simulated notice and from an IMDS notice to the first /ready 503.
Targets: >= 500 jobs/s accepted, <= 100 ms to 503.

Every loop is bounded; every server runs on 127.0.0.1 and is stopped before the script ends.
Usage: python bench/worker.py [--jobs 3000] [--clients 8] [--rounds 5]
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

from fake_imds import FakeImds  # noqa: E402
from worker_process import WorkerProcess, free_port  # noqa: E402

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


def bench_admission(tmp: Path, imds_url: str, jobs: int, clients: int) -> float:
    worker = WorkerProcess(base_env(tmp, imds_url), tmp / "admission.log").start()
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
        response.read()
        if response.status == 503:
            conn.close()
            return time.perf_counter() - started
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--claim-jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmpdir, FakeImds() as imds:
        tmp = Path(tmpdir)
        rate = bench_admission(tmp, imds.url, args.jobs, args.clients)
        print(f"POST /jobs accepted: {rate:8.0f} jobs/s  ({args.jobs} jobs, {args.clients} keep-alive "
              f"clients; target >= 500)  {'OK' if rate >= 500 else 'BELOW TARGET'}")
        for claimers in (1, 4):
            claims = bench_claims(tmp, args.claim_jobs, claimers)
            print(f"claim+complete:      {claims:8.0f} jobs/s  ({args.claim_jobs} jobs, {claimers} claimer"
                  f"{'s' if claimers > 1 else ''}, one SQLite connection each)")
        for name, samples in bench_drain_latency(tmp, imds, args.rounds).items():
            ms = [s * 1000 for s in samples]
            worst = max(ms)
            print(f"{name + ' -> /ready 503:':44s} median {statistics.median(ms):6.1f} ms, "
                  f"max {worst:6.1f} ms over {len(ms)} runs (target <= 100)  "
                  f"{'OK' if worst <= 100 else 'ABOVE TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
