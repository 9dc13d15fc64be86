"""The job runner: one thread that claims a job, runs the handler, heartbeats the lease, records the
outcome. It also reclaims expired leases on every round, so a job left behind by a dead worker comes
back while this one keeps running, not only at the next start."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sqlite3
import threading
import time
import traceback
from typing import Any, Callable

from .jobqueue import Job, JobQueue
from .metrics import WorkerMetrics

log = logging.getLogger("spot_drain_worker.runner")


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
    def __init__(self, queue: JobQueue, handler: Callable[[Any, JobContext], Any], *,
                 lease_seconds: float, metrics: WorkerMetrics, settings: Any = None,
                 owner: str | None = None, idle_poll_seconds: float = 0.5):
        self.queue = queue
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
        self._last_reclaim = 0.0

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
        if self.queue.release(job, reason):
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
                    # Checked under the lock that stop_claiming takes: once the drain started, no
                    # job can be claimed any more.
                    if self._stopping:
                        break
                    try:
                        job = self.queue.claim(self.owner, self.lease_seconds)
                    except sqlite3.Error as exc:
                        log.error("claim failed: %s", exc)
                        job = None
                    if job is not None:
                        self._current = job
                        self._current_context = JobContext(job.id, job.attempts, self.settings)
                if job is None:
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

    def _maybe_reclaim(self) -> None:
        now = time.monotonic()
        if now - self._last_reclaim < self.reclaim_every_seconds:
            return
        self._last_reclaim = now
        try:
            result = self.queue.reclaim()
        except sqlite3.Error as exc:
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

        started = time.monotonic()
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
                    self.metrics.job_duration.labels("released").observe(time.monotonic() - started)
                    return
            if not lease_lost:
                try:
                    lease_lost = not self.queue.extend(job, self.lease_seconds)
                except sqlite3.Error as exc:
                    log.error("heartbeat for job %s failed: %s", job.id, exc)
                if lease_lost:
                    # Keep waiting: running a second job beside this one would only add load.
                    log.error("job %s lost its lease; its outcome will not be recorded", job.id)
        duration = time.monotonic() - started
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
