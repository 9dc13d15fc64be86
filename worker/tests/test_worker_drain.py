"""DrainSignal, DrainController and JobRunner together, in-process, with a real queue file.

Time is a FakeClock the tests move (the queue's leases, the signal's deadlines, the controller's view of
them); the tests wait on events (the handler started, a heartbeat was made, the controller looked at the
deadline, the drain ended), never on a sleep."""

from __future__ import annotations

import threading
import time

import pytest
from clocks import FakeClock

from spot_drain_worker.drain import DRAINED, DrainController, DrainSignal
from spot_drain_worker.jobqueue import JobQueue
from spot_drain_worker.metrics import WorkerMetrics
from spot_drain_worker.runner import JobRunner

pytestmark = pytest.mark.timeout(30)

# The lease on the fake clock; the runner beats every third of it in real time (50 ms).
LEASE = 0.15


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


class Watched:
    """The runner as the controller sees it, counting the controller's looks at the deadline (each is a
    wait_idle that may end with the deadline unmet)."""

    def __init__(self, runner: JobRunner):
        self.runner = runner
        self.looks = threading.Semaphore(0)

    def stop_claiming(self) -> None:
        self.runner.stop_claiming()

    def wait_idle(self, timeout: float) -> bool:
        idle = self.runner.wait_idle(timeout)
        self.looks.release()
        return idle

    def release_in_flight(self, reason: str) -> str | None:
        return self.runner.release_in_flight(reason)

    def seen_twice(self) -> bool:
        """The controller looked twice more (after whatever it had seen before)."""
        while self.looks.acquire(blocking=False):
            pass
        return self.looks.acquire(timeout=2) and self.looks.acquire(timeout=2)


@pytest.fixture
def parts(tmp_path):
    clock = FakeClock(time.time())
    queue = JobQueue(str(tmp_path / "q.db"), max_attempts=3, retry_backoff_seconds=0.01, clock=clock)
    handler = Handler()
    runner = JobRunner(queue, handler, lease_seconds=LEASE, metrics=WorkerMetrics(), idle_poll_seconds=0.05)
    signal = DrainSignal(clock)
    drained = []
    done = threading.Event()

    def on_drained(snapshot):
        drained.append((time.monotonic(), snapshot))
        done.set()

    watched = Watched(runner)
    controller = DrainController(signal, watched, on_drained, clock=clock)
    runner.start()
    controller.start()
    yield clock, queue, handler, runner, watched, signal, drained, done
    handler.finish.set()
    runner.stop_claiming()
    controller.close()
    runner.join(5)


def test_idle_worker_drains_at_once(parts):
    clock, queue, handler, runner, watched, signal, drained, done = parts
    asked = time.monotonic()
    signal.request_drain("test", clock.now + 60)
    assert done.wait(2)
    assert drained[0][0] - asked < 0.5 and drained[0][1].outcome == "idle"


def test_job_in_flight_finishes_and_heartbeat_keeps_its_lease(parts):
    clock, queue, handler, runner, watched, signal, drained, done = parts
    beats = threading.Semaphore(0)
    extend = queue.extend

    def counted(job, lease_seconds):
        held = extend(job, lease_seconds)
        beats.release()
        return held

    queue.extend = counted
    job_id = queue.enqueue({})[0].id
    assert handler.started.wait(2)
    signal.request_drain("test", clock.now + 60)
    for _third in range(6):  # two lease lengths: only the heartbeat keeps the job ours
        while beats.acquire(blocking=False):
            pass
        clock.advance(LEASE / 3)
        assert beats.acquire(timeout=2)  # a beat after the clock moved
    assert queue.reclaim().requeued == [] and not done.is_set()
    assert queue.get(job_id).status == "processing"
    queue.enqueue({"after": "drain"})  # (the HTTP layer refuses these; the runner must not claim it)
    handler.finish.set()
    assert done.wait(2)
    assert queue.get(job_id).status == "done" and handler.calls == 1
    assert queue.counts()["queued"] == 1


def test_deadline_releases_the_job_in_flight(parts):
    clock, queue, handler, runner, watched, signal, drained, done = parts
    job_id = queue.enqueue({})[0].id
    assert handler.started.wait(2)
    signal.request_drain("test", clock.now + 30)
    assert watched.seen_twice() and not done.is_set()  # the deadline is not reached: the job runs on
    clock.advance(30)
    assert done.wait(2)
    assert drained[0][1].state == DRAINED and job_id in drained[0][1].outcome
    stored = queue.get(job_id)
    assert (stored.status, stored.attempts) == ("queued", 0)
    assert runner.wait_idle(5)  # the handler saw the interruption; its failure must not be recorded
    assert queue.get(job_id).status == "queued"


def test_an_earlier_notice_moves_the_deadline_forward_never_back(parts):
    clock, queue, handler, runner, watched, signal, drained, done = parts
    queue.enqueue({})
    assert handler.started.wait(2)
    signal.request_drain("SIGTERM", clock.now + 30)
    assert not signal.request_drain("later notice", clock.now + 60)
    deadline = clock.now + 2
    assert signal.request_drain("notice", deadline)
    assert watched.seen_twice() and not done.is_set()
    clock.advance(2)
    assert done.wait(2)
    assert drained[0][1].deadline == deadline
