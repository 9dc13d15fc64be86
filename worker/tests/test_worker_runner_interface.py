"""The runner through the queue interface only, with a stand-in backend whose claim blocks (as an SQS
long poll does): the drain must not wait for the claim, and a job that arrives after it is handed back."""

from __future__ import annotations

import threading

import pytest

from spot_drain_worker.metrics import WorkerMetrics
from spot_drain_worker.queues import Job, JobQueueBase
from spot_drain_worker.runner import JobRunner

pytestmark = pytest.mark.timeout(30)


class BlockingQueue(JobQueueBase):
    errors = (OSError,)
    claim_waits = True

    def __init__(self):
        super().__init__()
        self.in_claim = threading.Event()
        self.deliver = threading.Event()
        self.released: list[tuple[str, str]] = []

    def claim(self, owner, lease_seconds):
        self.in_claim.set()
        self.deliver.wait(10)
        return Job(id="j1", payload={}, status="processing", attempts=1, last_error=None, result=None,
                   idempotency_key=None, lease_token="1", lease_expires_at=None, created_at=0.0,
                   updated_at=0.0, started_at=0.0, finished_at=None, run_after=0.0)

    def release(self, job, reason):
        self.released.append((job.id, reason))
        return True

    def enqueue(self, payload, idempotency_key=None):
        raise NotImplementedError

    def get(self, job_id):
        return None

    def extend(self, job, lease_seconds):
        return True

    def complete(self, job, result=None):
        raise AssertionError("must not run")

    def fail(self, job, error):
        raise AssertionError("must not run")

    def requeue(self, job_id):
        return None

    def counts(self):
        return {}


def test_a_job_received_after_the_drain_began_is_handed_back_unrun():
    queue = BlockingQueue()
    ran = []
    runner = JobRunner(queue, lambda payload, context: ran.append(payload), lease_seconds=10,
                       metrics=WorkerMetrics())
    runner.start()
    assert queue.in_claim.wait(5)
    stopper = threading.Thread(target=runner.stop_claiming)
    stopper.start()
    stopper.join(2)
    assert not stopper.is_alive()  # stop_claiming did not wait for the claim in flight
    assert not runner.wait_idle(0.05)  # the claim is still out
    queue.deliver.set()
    assert runner.wait_idle(5)
    assert ran == [] and [job for job, _reason in queue.released] == ["j1"]
    assert "draining" in queue.released[0][1]
