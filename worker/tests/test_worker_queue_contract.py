"""The queue interface's contract, one kit over both backends: SQLite on a file and SQS + DynamoDB on the moto
server, each with an injected clock. What only one backend does (SQLite's FIFO order and WAL, SQS's messages,
dead-letter queue and start-up check) is in test_worker_queue.py and test_worker_sqs_queue.py.

Where a lease must run out, `Backend.lease_runs_out` does what the backend's own mechanism would: SQLite's
reclaim after the lease (and its backoff), SQS's visibility timeout (moto keeps it on the wall clock, so the
message is made visible at once)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from clocks import FakeClock

from spot_drain_worker.claimrule import RUN, Seen, decide_claim
from spot_drain_worker.jobqueue import JobQueue
from spot_drain_worker.queues import STATUSES, JobQueueBase

pytestmark = pytest.mark.timeout(60)

LEASE = 10
BACKOFF = 2.0


@dataclasses.dataclass
class Backend:
    name: str
    queue: JobQueueBase
    clock: FakeClock
    aws: object = None

    def lease_runs_out(self, job) -> None:
        """The holder of `job` stopped: its lease ends, and the job is due again."""
        self.clock.now += LEASE + 1
        if self.aws is None:
            self.queue.reclaim()
            self.clock.now += BACKOFF * 2 ** max(job.attempts - 1, 0)
        else:
            self.message_comes_back(job)

    def message_comes_back(self, job) -> None:
        """SQS only: the message of `job` is received again (a visibility that ended, a duplicate)."""
        if self.aws is not None:
            self.aws.sqs.change_message_visibility(QueueUrl=self.aws.queue_url, ReceiptHandle=job.handle.receipt,
                                                   VisibilityTimeout=0)

    def duplicate(self, job_id: str) -> None:
        """SQS delivers at least once: a second message for the job (SQLite has no messages)."""
        if self.aws is not None:
            self.aws.sqs.send_message(QueueUrl=self.aws.queue_url, MessageBody=json.dumps({"job_id": job_id}))

    def due(self, job) -> None:
        """The backoff of `job`'s failed attempt ends (on SQS its message's visibility, on moto's wall clock)."""
        self.clock.now = max(self.clock.now, self.queue.get(job.id).run_after)
        self.message_comes_back(job)


@pytest.fixture(params=["sqlite", "sqs"])
def backend(request, tmp_path) -> Backend:
    clock = FakeClock()
    if request.param == "sqlite":
        return Backend("sqlite", JobQueue(str(tmp_path / "q.db"), max_attempts=3, retry_backoff_seconds=BACKOFF,
                                          clock=clock), clock)
    from sqs_support import config_for

    from spot_drain_worker.metrics import WorkerMetrics
    from spot_drain_worker.sqsqueue import SqsQueue
    aws = request.getfixturevalue("aws")
    request.getfixturevalue("monkeypatch").setenv("AWS_ENDPOINT_URL", aws.proxy.url)
    config = config_for(aws, retry_backoff_seconds=BACKOFF)
    SqsQueue.check(config)
    return Backend("sqs", SqsQueue.from_config(config, clock=clock, metrics=WorkerMetrics()), clock, aws)


def test_enqueue_claim_extend_complete(backend):
    queue, clock = backend.queue, backend.clock
    job, created = queue.enqueue({"n": 1})
    assert created and (queue.get(job.id).status, queue.get(job.id).attempts) == ("queued", 0)
    claimed = queue.claim("w1", LEASE)
    assert (claimed.id, claimed.status, claimed.attempts, claimed.payload) == (job.id, "processing", 1, {"n": 1})
    assert claimed.lease_expires_at == clock.now + LEASE and claimed.lease_token
    clock.now += LEASE - 2
    assert queue.extend(claimed, LEASE)
    assert queue.get(job.id).lease_expires_at == clock.now + LEASE
    assert queue.complete(claimed, {"ok": True})
    stored = queue.get(job.id)
    assert (stored.status, stored.result, stored.attempts) == ("done", {"ok": True}, 1)
    assert stored.public()["finished_at"] is not None and stored.public()["next_attempt_at"] is None
    assert queue.claim("w1", LEASE) is None
    assert queue.get("no-such-job") is None


def test_a_lost_lease_is_fenced_and_counts_as_an_attempt(backend):
    queue = backend.queue
    job_id = queue.enqueue({})[0].id
    first = queue.claim("w1", LEASE)
    backend.lease_runs_out(first)
    second = queue.claim("w2", LEASE)
    assert (second.id, second.attempts) == (job_id, 2)
    assert "lease expired during attempt 1 (worker w1" in second.last_error
    # The first worker comes back: nothing it does is recorded over the newer attempt.
    assert not queue.extend(first, LEASE)
    assert not queue.complete(first, "stale")
    assert queue.fail(first, "stale") is None
    assert not queue.release(first, "stale")
    assert queue.complete(second, "fresh")
    assert (queue.get(job_id).status, queue.get(job_id).result) == ("done", "fresh")


def test_a_job_that_keeps_killing_its_worker_ends_dead(backend):
    queue = backend.queue
    job_id = queue.enqueue({})[0].id
    for attempt in (1, 2, 3):
        job = queue.claim("crashy", LEASE)
        assert job.attempts == attempt
        backend.lease_runs_out(job)
    assert queue.claim("w", LEASE) is None
    stored = queue.get(job_id)
    assert stored.status == "dead" and "lease expired during attempt 3" in stored.last_error


def test_failures_back_off_then_dead_then_requeue(backend):
    queue, clock = backend.queue, backend.clock
    job_id = queue.enqueue({})[0].id
    delays = []
    for attempt in (1, 2, 3):
        job = queue.claim("w", LEASE)
        assert job is not None and job.attempts == attempt
        status = queue.fail(job, f"boom {attempt}")
        if attempt < 3:
            assert status == "failed"
            stored = queue.get(job_id)
            delays.append(stored.run_after - clock.now)
            assert stored.public()["next_attempt_at"] is not None
            assert queue.claim("w", LEASE) is None  # not before the backoff
            backend.due(job)
        else:
            assert status == "dead"
    assert delays == [BACKOFF, 2 * BACKOFF]
    dead = queue.get(job_id)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 3, "boom 3")
    assert queue.claim("w", LEASE) is None  # dead is never retried by itself
    assert queue.requeue(job_id).status == "queued"
    again = queue.claim("w", LEASE)
    assert (again.id, again.attempts) == (job_id, 1)
    assert queue.requeue(job_id) is None  # processing: not requeueable
    assert queue.requeue("no-such-job") is None


def test_release_gives_the_attempt_back(backend):
    queue = backend.queue
    job_id = queue.enqueue({})[0].id
    job = queue.claim("w1", 300)
    assert queue.release(job, "drain deadline")
    stored = queue.get(job_id)
    assert (stored.status, stored.attempts, stored.last_error) == ("queued", 0, "drain deadline")
    assert not queue.complete(job)  # the released lease is gone
    again = queue.claim("w2", LEASE)  # at once: no lease to sit out
    assert (again.id, again.attempts) == (job_id, 1)


def test_idempotency_key_returns_the_same_job(backend):
    queue = backend.queue
    job, created = queue.enqueue({"a": 1}, "key-1")
    again, created_again = queue.enqueue({"a": 1}, "key-1")
    assert created and not created_again and again.id == job.id
    assert queue.enqueue({"a": 1}, "key-2")[0].id != job.id


def test_counts_are_by_status_where_the_backend_keeps_them(backend):
    queue = backend.queue
    queue.enqueue({})
    queue.enqueue({})
    counts = queue.counts()
    assert set(counts) <= set(STATUSES)
    if counts:  # SQS would need a scan: it reports the line's depth instead
        assert counts["queued"] == 2
    else:
        assert queue.depth()["visible"] == 2


# ---- the claim rule: both backends take the decision claimrule.decide_claim takes on what the claim saw ----

def _queued(backend):
    return backend.queue.enqueue({})[0].id


def _failed_in_backoff(backend):
    job_id = _queued(backend)
    job = backend.queue.claim("w1", LEASE)
    backend.queue.fail(job, "boom")
    backend.message_comes_back(job)  # an SQS message that comes back early is put back until the backoff ends
    return job_id


def _failed_and_due(backend):
    job_id = _queued(backend)
    job = backend.queue.claim("w1", LEASE)
    backend.queue.fail(job, "boom")
    backend.due(job)
    return job_id


def _held(backend):
    job_id = _queued(backend)
    backend.message_comes_back(backend.queue.claim("w1", LEASE))  # an SQS copy comes back while the lease runs
    return job_id


def _lease_lost(backend):
    job_id = _queued(backend)
    backend.lease_runs_out(backend.queue.claim("w1", LEASE))
    return job_id


def _lease_lost_at_the_last_attempt(backend):
    job_id = _queued(backend)
    for _attempt in range(2):
        job = backend.queue.claim("w1", LEASE)
        backend.queue.fail(job, "boom")
        backend.due(job)
    backend.lease_runs_out(backend.queue.claim("w1", LEASE))
    return job_id


def _done(backend):
    job_id = _queued(backend)
    backend.queue.complete(backend.queue.claim("w1", LEASE), "once")
    backend.duplicate(job_id)
    return job_id


def _dead(backend):
    job_id = _lease_lost_at_the_last_attempt(backend)
    backend.queue.claim("w1", LEASE)
    backend.duplicate(job_id)
    return job_id


# (the state, the attempt a claim runs or None, the status after the claim)
RULE_CASES = [
    (_queued, 1, "processing"),
    (_failed_in_backoff, None, "failed"),
    (_failed_and_due, 2, "processing"),
    (_held, None, "processing"),
    (_lease_lost, 2, "processing"),
    (_lease_lost_at_the_last_attempt, None, "dead"),
    (_done, None, "done"),
    (_dead, None, "dead"),
]


@pytest.mark.parametrize("make_state, attempt, status_after", RULE_CASES, ids=[c[0].__name__[1:] for c in RULE_CASES])
def test_both_backends_take_the_claim_rules_decision(backend, make_state, attempt, status_after):
    queue, clock = backend.queue, backend.clock
    job_id = make_state(backend)
    seen = queue.get(job_id)
    decision = decide_claim(Seen(seen.status, seen.attempts, seen.run_after, seen.lease_expires_at),
                            now=clock.now, max_attempts=3)
    claimed = queue.claim("w2", LEASE)
    assert (claimed.attempts if claimed else None) == attempt
    assert (decision.attempt if decision.action == RUN else None) == attempt
    assert queue.get(job_id).status == status_after
