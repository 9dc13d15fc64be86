"""What only the SQLite backend promises: WAL, FIFO order, atomic claims across connections. What both
backends promise is in test_worker_queue_contract.py."""

from __future__ import annotations

import threading

import pytest
from clocks import FakeClock

from spot_drain_worker.jobqueue import JobQueue


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def queue(tmp_path, clock):
    return JobQueue(str(tmp_path / "q.db"), max_attempts=3, retry_backoff_seconds=2.0, clock=clock)


def test_wal_mode_and_schema(queue):
    assert queue._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert queue._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_claim_sets_lease_and_attempt_in_fifo_order(queue, clock):
    first = queue.enqueue({"n": 1})[0]
    queue.enqueue({"n": 2})
    job = queue.claim("w1", lease_seconds=30)
    assert (job.id, job.status, job.attempts) == (first.id, "processing", 1)
    assert job.lease_expires_at == clock.now + 30 and job.lease_token
    assert queue.claim("w1", 30).payload == {"n": 2}
    assert queue.claim("w1", 30) is None


def test_concurrent_claims_never_share_a_job(tmp_path):
    path = str(tmp_path / "q.db")
    JobQueue(path, max_attempts=3, retry_backoff_seconds=0)
    producer = JobQueue(path, max_attempts=3, retry_backoff_seconds=0)
    ids = {producer.enqueue({"i": i})[0].id for i in range(200)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        # A queue object per thread, as separate processes would have.
        q = JobQueue(path, max_attempts=3, retry_backoff_seconds=0)
        while (job := q.claim(name, 30)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(claimed) == 200 and set(claimed) == ids
