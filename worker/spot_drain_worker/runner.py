"""The job runner: one thread that claims a job, runs the handler, heartbeats the lease, records the
outcome. It also reclaims expired leases on every round (where the backend keeps leases itself), so a
job left behind by a dead worker comes back while this one keeps running, not only at the next start.
It talks to the queue only through the interface in queues.py."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import socket
import threading
import time
import traceback
from typing import Any, Callable

from .metrics import WorkerMetrics
from .queues import Job, JobQueueBase

log = logging.getLogger("spot_drain_worker.runner")

# After an error from the queue (throttled past the client's own retries, unreachable) the runner
# waits before it asks again: jittered, so a fleet that failed together does not retry together.
ERROR_BACKOFF_BASE_SECONDS = 0.5
ERROR_BACKOFF_CAP_SECONDS = 20.0


def error_backoff(consecutive_errors: int, rand: Callable[[], float] = random.random,
                  base: float = ERROR_BACKOFF_BASE_SECONDS, cap: float = ERROR_BACKOFF_CAP_SECONDS) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(n-1))] for the n-th error in a row (0 for none)."""
    if consecutive_errors <= 0:
        return 0.0
    return rand() * min(cap, base * 2 ** min(consecutive_errors - 1, 30))


@dataclasses.dataclass
class JobContext:
    """Handed to the job handler next to the payload."""

    job_id: str
    attempt: int
    settings: Any
    interrupted: threading.Event = dataclasses.field(default_factory=threading.Event)

    def sleep(self, seconds: float) -> bool:
        """Sleep unless interrupted (the worker gave the job back at the drain deadline).
        Returns False when interrupted, so a handler can stop early."""
        return not self.interrupted.wait(seconds)


class JobInterrupted(Exception):
    """Raised by a handler that stopped because its context was interrupted."""


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    def __init__(self, queue: JobQueueBase, handler: Callable[[Any, JobContext], Any], *,
                 lease_seconds: float, metrics: WorkerMetrics, settings: Any = None,
                 owner: str | None = None, idle_poll_seconds: float = 0.5,
                 monotonic: Callable[[], float] = time.monotonic):
        self.queue = queue
        # Measures durations and paces the reclaim; every wait is on an event or a thread, never a sleep.
        self.monotonic = monotonic
        self.handler = handler
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = lease_seconds / 3
        self.reclaim_every_seconds = min(1.0, lease_seconds / 2)
        self.metrics = metrics
        self.settings = settings
        self.owner = owner or default_owner()
        self.idle_poll_seconds = idle_poll_seconds
        self._cond = threading.Condition()
        self._stopping = False
        self._loop_done = False
        self._current: Job | None = None
        self._current_context: JobContext | None = None
        self._released: set[str] = set()
        self._thread: threading.Thread | None = None
        self._last_reclaim = -math.inf
        self._claim_errors = 0

    # ---- control (called from other threads) ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def stop_claiming(self) -> None:
        with self._cond:
            self._stopping = True
        self.queue.work_available.set()

    def wait_idle(self, timeout: float) -> bool:
        """True once the runner stopped claiming and no job is in flight."""
        with self._cond:
            return self._cond.wait_for(lambda: self._loop_done and self._current is None, timeout)

    def release_in_flight(self, reason: str) -> str | None:
        """Give the lease of the job in flight back to the queue; returns its id (None if idle)."""
        with self._cond:
            job, context = self._current, self._current_context
            if job is None:
                return None
            self._released.add(job.id)
        context.interrupted.set()
        try:
            released = self.queue.release(job, reason)
        except self.queue.errors as exc:
            # Not recorded: the lease runs out and the job runs again (counted as an attempt).
            log.error("handing back job %s failed: %s", job.id, exc)
            return None
        if released:
            log.warning("job %s released: %s", job.id, reason)
            return job.id
        return None

    def current_job_id(self) -> str | None:
        with self._cond:
            return None if self._current is None else self._current.id

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the runner thread ----

    def _loop(self) -> None:
        try:
            while True:
                self._maybe_reclaim()
                self.queue.work_available.clear()
                with self._cond:
                    if self._stopping:
                        break
                # Outside the lock: a claim may block (SQS long polling), and stop_claiming must not
                # wait for it. A job that arrives after the drain started is handed back below.
                try:
                    job = self.queue.claim(self.owner, self.lease_seconds)
                    self._claim_errors = 0
                except self.queue.errors as exc:
                    self._claim_errors += 1
                    log.error("claim failed (%d in a row): %s", self._claim_errors, exc)
                    self.queue.work_available.wait(error_backoff(self._claim_errors))
                    continue
                with self._cond:
                    late = job is not None and self._stopping
                    if job is not None and not late:
                        self._current = job
                        self._current_context = JobContext(job.id, job.attempts, self.settings)
                if late:
                    # Once the drain started no job may run here: give it back, uncounted.
                    self._hand_back_late(job)
                    break
                if job is None:
                    if not self.queue.claim_waits:
                        self.queue.work_available.wait(self.idle_poll_seconds)
                    continue
                try:
                    self._run(job, self._current_context)
                except Exception:  # noqa: BLE001 - the runner must outlive one job's bookkeeping
                    # E.g. the database stayed locked past busy_timeout while recording the outcome:
                    # nothing was recorded, the lease runs out and the job runs again.
                    log.exception("recording job %s failed; its lease will expire", job.id)
                finally:
                    with self._cond:
                        self._current = self._current_context = None
                        self._cond.notify_all()
        finally:
            with self._cond:
                self._loop_done = True
                self._cond.notify_all()

    def _hand_back_late(self, job: Job) -> None:
        try:
            if self.queue.release(job, "handed back unstarted: the worker began draining"):
                log.warning("job %s arrived after the drain started; handed back", job.id)
        except self.queue.errors as exc:
            log.error("handing back job %s failed (its lease will expire): %s", job.id, exc)

    def _maybe_reclaim(self) -> None:
        now = self.monotonic()
        if now - self._last_reclaim < self.reclaim_every_seconds:
            return
        self._last_reclaim = now
        try:
            result = self.queue.reclaim()
        except self.queue.errors as exc:
            log.error("reclaim failed: %s", exc)
            return
        expired = len(result.requeued) + len(result.dead)
        if expired:
            self.metrics.lease_expiries.inc(expired)
            log.warning("leases expired: requeued %s, dead %s", result.requeued, result.dead)

    def _run(self, job: Job, context: JobContext) -> None:
        self.metrics.job_attempts.inc()
        log.info("job %s attempt %d started", job.id, job.attempts)
        outcome: dict = {}

        def call_handler() -> None:
            try:
                outcome["result"] = self.handler(job.payload, context)
            except BaseException as exc:  # the handler's failure is the job's, never the runner's
                outcome["error"] = f"{type(exc).__name__}: {exc}"
                outcome["traceback"] = traceback.format_exc()

        started = self.monotonic()
        handler_thread = threading.Thread(target=call_handler, name=f"job-{job.id}", daemon=True)
        handler_thread.start()
        lease_lost = False
        while True:
            handler_thread.join(self.heartbeat_seconds)
            if not handler_thread.is_alive():
                break
            with self._cond:
                if job.id in self._released:
                    # The drain gave the job back; the process is about to exit. Nothing to record.
                    self._released.discard(job.id)
                    self.metrics.job_duration.labels("released").observe(self.monotonic() - started)
                    return
            if not lease_lost:
                try:
                    lease_lost = not self.queue.extend(job, self.lease_seconds)
                except self.queue.errors as exc:
                    log.error("heartbeat for job %s failed: %s", job.id, exc)
                if lease_lost:
                    # Keep waiting: running a second job beside this one would only add load.
                    log.error("job %s lost its lease; its outcome will not be recorded", job.id)
        duration = self.monotonic() - started
        with self._cond:
            released = job.id in self._released
            self._released.discard(job.id)
        if released:
            self.metrics.job_duration.labels("released").observe(duration)
            return
        if "error" in outcome:
            status = self.queue.fail(job, outcome["error"])
            log.warning("job %s attempt %d failed (%s): %s", job.id, job.attempts, status,
                        outcome["error"])
            self.metrics.job_duration.labels("failed").observe(duration)
        elif self.queue.complete(job, outcome.get("result")):
            log.info("job %s done in %.3fs", job.id, duration)
            self.metrics.job_duration.labels("done").observe(duration)
        else:
            log.error("job %s finished without its lease; not marked done (it runs again)", job.id)
            self.metrics.job_duration.labels("lease_lost").observe(duration)
