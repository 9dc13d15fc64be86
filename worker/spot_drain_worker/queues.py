"""The queue interface the HTTP layer, the runner and the drain controller use, and the job record they
share. Two backends implement it: `jobqueue.JobQueue` (SQLite on the instance, the default) and
`sqsqueue.SqsQueue` (an SQS queue for the line, a DynamoDB table for the record, shared by a fleet).
`factory.make_queue` picks one from the configuration; nothing else names a backend, and this module names
neither (no import circle: the backends import this module, never the other way round).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import threading
from typing import Any

STATUSES = ("queued", "processing", "done", "failed", "dead")
BACKOFF_CAP_SECONDS = 300.0
# The SQS backend keeps a job's record in one DynamoDB item: at most 400 KB, attribute names and values
# together. The payload may take all of it but what the rest of the record needs (ids, status, times,
# owner, an idempotency key, a last_error of up to 2000 characters): 16 KiB.
DYNAMODB_ITEM_BYTES = 400 * 1024
SQS_MAX_PAYLOAD_BYTES = DYNAMODB_ITEM_BYTES - 16 * 1024


def backoff_seconds(base: float, attempts: int) -> float:
    """Delay before the retry that follows attempt `attempts` (1-based): base * 2^(n-1), capped.
    Both backends use it, so a failing job is retried on the same schedule whichever holds it."""
    return min(base * (2 ** max(attempts - 1, 0)), BACKOFF_CAP_SECONDS)


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Job:
    id: str
    payload: Any
    status: str
    attempts: int
    last_error: str | None
    result: Any
    idempotency_key: str | None
    lease_token: str | None
    lease_expires_at: float | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    run_after: float
    # What the backend needs to act on this claim later (SQS: the receipt handle and the fencing
    # number); never shown.
    handle: Any = dataclasses.field(default=None, repr=False, compare=False)

    def public(self) -> dict:
        """What GET /jobs/<id> shows (the lease token stays private to the worker)."""
        return {
            "id": self.id, "status": self.status, "attempts": self.attempts,
            "last_error": self.last_error, "result": self.result, "payload": self.payload,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
            "next_attempt_at": iso(self.run_after) if self.status in ("queued", "failed") else None,
        }


@dataclasses.dataclass(frozen=True)
class ReclaimResult:
    requeued: list
    dead: list


class JobQueueBase(abc.ABC):
    """enqueue / claim / extend / complete / fail / release (hand back) / get / requeue / counts.

    `claim` may block for a while (SQS long polling) and then return None; `claim_waits` says so, and
    the runner then does not add an idle wait of its own. Every method that ends an attempt is fenced:
    it returns False/None when this worker no longer holds the job, and changes nothing then.
    """

    # The exceptions that mean "the queue is unavailable right now" (HTTP 503, the runner retries).
    errors: tuple = ()
    claim_waits = False

    def __init__(self):
        # Set on enqueue/requeue/release so a runner in this process wakes at once instead of
        # waiting for its next poll; stop_claiming sets it too.
        self.work_available = threading.Event()

    @abc.abstractmethod
    def enqueue(self, payload: Any, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Store a job; returns (job, created). A known idempotency key returns the stored job."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def claim(self, owner: str, lease_seconds: float) -> Job | None:
        """Take a runnable job and lease it to `owner`; None when nothing is runnable."""

    @abc.abstractmethod
    def extend(self, job: Job, lease_seconds: float) -> bool:
        """Heartbeat: push the lease forward; False means the lease was lost."""

    @abc.abstractmethod
    def complete(self, job: Job, result: Any = None) -> bool:
        """Mark done; False (and no change) when this worker no longer holds the lease."""

    @abc.abstractmethod
    def fail(self, job: Job, error: str) -> str | None:
        """Record a failed attempt: 'failed' (retried after backoff) or 'dead'; None if fenced off."""

    @abc.abstractmethod
    def release(self, job: Job, reason: str) -> bool:
        """Hand the job back without counting the attempt (the worker is going away)."""

    def reclaim(self) -> ReclaimResult:
        """Return jobs whose lease ran out to the queue. Only a backend that keeps leases itself needs
        it (SQS does it with the visibility timeout)."""
        return ReclaimResult(requeued=[], dead=[])

    @abc.abstractmethod
    def requeue(self, job_id: str) -> Job | None:
        """Put a dead (or failed) job back with a fresh attempt count; None if not dead/failed."""

    @abc.abstractmethod
    def counts(self) -> dict:
        """Jobs by status, for /metrics (a backend where that costs a scan returns {})."""

    def depth(self) -> dict | None:
        """The line's approximate size ({"visible": n, "in_flight": n, "delayed": n}) where the backend
        keeps one apart from the records; None otherwise."""
        return None

    def close(self) -> None:
        """Release this thread's resources."""
