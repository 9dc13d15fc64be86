"""JobQueue on a real SQLite file: atomic claim, leases, fencing, retries, dead jobs."""

from __future__ import annotations

import threading

import pytest

from spot_drain_worker.jobqueue import JobQueue


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


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


def test_heartbeat_extends_and_completion_is_fenced_on_the_lease(queue, clock):
    queue.enqueue({})
    job = queue.claim("w1", 10)
    clock.now += 8
    assert queue.extend(job, 10)
    clock.now += 8  # 16 s after the claim: alive only thanks to the heartbeat
    assert queue.reclaim().requeued == []

    clock.now += 11  # heartbeat missed: the lease runs out and the job is reclaimed
    assert queue.reclaim().requeued == [job.id]
    assert not queue.extend(job, 10)
    clock.now += 10  # past the retry backoff
    second = queue.claim("w2", 10)
    assert second.id == job.id and second.attempts == 2
    # The first worker comes back: it can neither complete nor fail the job any more.
    assert queue.complete(job, "stale") is False
    assert queue.fail(job, "stale") is None
    assert queue.complete(second, {"ok": True})
    stored = queue.get(job.id)
    assert (stored.status, stored.result, stored.attempts) == ("done", {"ok": True}, 2)


def test_failures_retry_with_backoff_then_dead_and_requeue(queue, clock):
    job_id = queue.enqueue({})[0].id
    delays = []
    for attempt in range(1, 4):
        job = queue.claim("w", 10)
        assert job is not None and job.attempts == attempt
        status = queue.fail(job, f"boom {attempt}")
        stored = queue.get(job_id)
        if attempt < 3:
            assert status == "failed"
            delays.append(stored.run_after - clock.now)
            assert queue.claim("w", 10) is None  # not before the backoff
            clock.now = stored.run_after
        else:
            assert status == "dead"
    assert delays == [2.0, 4.0]
    dead = queue.get(job_id)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 3, "boom 3")
    assert queue.claim("w", 10) is None  # dead is never retried by itself

    assert queue.requeue(job_id).status == "queued"
    assert queue.claim("w", 10).attempts == 1
    assert queue.requeue(job_id) is None  # processing: not requeueable


def test_expired_leases_count_as_attempts_until_dead(queue, clock):
    job_id = queue.enqueue({})[0].id
    for _attempt in range(3):
        clock.now += 1000
        assert queue.claim("crashy", 5) is not None
        clock.now += 6
        queue.reclaim()
    stored = queue.get(job_id)
    assert stored.status == "dead" and "lease expired during attempt 3" in stored.last_error


def test_release_gives_the_attempt_back(queue):
    queue.enqueue({})
    job = queue.claim("w", 10)
    assert queue.release(job, "drain deadline")
    stored = queue.get(job.id)
    assert (stored.status, stored.attempts, stored.last_error) == ("queued", 0, "drain deadline")
    assert not queue.complete(job)  # the released lease is gone
    assert queue.claim("w", 10).attempts == 1


def test_idempotency_key_returns_the_same_job(queue):
    job, created = queue.enqueue({"a": 1}, "key-1")
    again, created_again = queue.enqueue({"a": 1}, "key-1")
    assert created and not created_again and again.id == job.id
    assert queue.enqueue({"a": 1}, "key-2")[0].id != job.id
    assert queue.counts()["queued"] == 2
