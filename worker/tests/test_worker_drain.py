"""DrainSignal, DrainController and JobRunner together, in-process, with a real queue file."""

from __future__ import annotations

import threading
import time

import pytest

from spot_drain_worker.drain import DRAINED, DrainController, DrainSignal
from spot_drain_worker.jobqueue import JobQueue
from spot_drain_worker.metrics import WorkerMetrics
from spot_drain_worker.runner import JobRunner

pytestmark = pytest.mark.timeout(30)


class Handler:
    """Runs until released by the test (or until the context is interrupted)."""

    def __init__(self):
        self.started = threading.Event()
        self.finish = threading.Event()
        self.calls = 0

    def __call__(self, payload, context):
        self.calls += 1
        self.started.set()
        while not self.finish.wait(0.01):
            if context.interrupted.is_set():
                raise RuntimeError("interrupted")
        return "finished"


@pytest.fixture
def parts(tmp_path):
    queue = JobQueue(str(tmp_path / "q.db"), max_attempts=3, retry_backoff_seconds=0.01)
    handler = Handler()
    runner = JobRunner(queue, handler, lease_seconds=0.6, metrics=WorkerMetrics(), idle_poll_seconds=0.05)
    signal = DrainSignal()
    drained = []
    done = threading.Event()

    def on_drained(snapshot):
        drained.append((time.monotonic(), snapshot))
        done.set()

    controller = DrainController(signal, runner, on_drained)
    runner.start()
    controller.start()
    yield queue, handler, runner, signal, drained, done
    handler.finish.set()
    runner.stop_claiming()
    controller.close()
    runner.join(5)


def test_idle_worker_drains_at_once(parts):
    queue, handler, runner, signal, drained, done = parts
    asked = time.monotonic()
    signal.request_drain("test", time.time() + 60)
    assert done.wait(2)
    assert drained[0][0] - asked < 0.5 and drained[0][1].outcome == "idle"


def test_job_in_flight_finishes_and_heartbeat_keeps_its_lease(parts):
    queue, handler, runner, signal, drained, done = parts
    job_id = queue.enqueue({})[0].id
    assert handler.started.wait(2)
    signal.request_drain("test", time.time() + 60)
    time.sleep(1.5)  # more than two lease lengths: only the heartbeat keeps the job ours
    assert not done.is_set()
    assert queue.get(job_id).status == "processing"
    queue.enqueue({"after": "drain"})  # (the HTTP layer refuses these; the runner must not claim it)
    handler.finish.set()
    assert done.wait(2)
    assert queue.get(job_id).status == "done" and handler.calls == 1
    assert queue.counts()["queued"] == 1


def test_deadline_releases_the_job_in_flight(parts):
    queue, handler, runner, signal, drained, done = parts
    job_id = queue.enqueue({})[0].id
    assert handler.started.wait(2)
    asked = time.monotonic()
    signal.request_drain("test", time.time() + 0.3)
    assert done.wait(2)
    assert 0.25 < drained[0][0] - asked < 1.0
    assert drained[0][1].state == DRAINED and job_id in drained[0][1].outcome
    stored = queue.get(job_id)
    assert (stored.status, stored.attempts) == ("queued", 0)
    time.sleep(0.2)  # the handler saw the interruption; its failure must not be recorded
    assert queue.get(job_id).status == "queued"


def test_an_earlier_notice_moves_the_deadline_forward_never_back(parts):
    queue, handler, runner, signal, drained, done = parts
    queue.enqueue({})
    assert handler.started.wait(2)
    signal.request_drain("SIGTERM", time.time() + 30)
    assert not signal.request_drain("later notice", time.time() + 60)
    assert signal.request_drain("notice", time.time() + 0.2)
    assert done.wait(2)
