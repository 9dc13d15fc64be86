"""The claim rule, once, on plain values: given a job's record as a claim sees it (and, for SQS, how often its
message was received), what the claim does. Both backends take their decisions here: SQLite selects its
candidate with SQL built from the same constants and lets `decide_claim` decide; SQS asks it for every message
it receives. The outcome of a failed attempt (`after_failure`) is decided here too.
"""

from __future__ import annotations

import dataclasses

from .queues import backoff_seconds

RUN = "run"  # take it: record attempt `attempt` and lease it to the claimer
DROP = "drop"  # done already (a duplicate message): drop it unrun
BURY = "bury"  # recorded dead, yet its message is still in line: finish burying it
HELD = "held"  # another worker's lease is running: leave it alone until `retry_at`
NOT_YET = "not_yet"  # its backoff runs until `retry_at`
RENEW = "renew"  # one more receive and SQS would dead-letter it: replace its message by a fresh copy
EXPIRE = "expire"  # its holder's lease ran out during the last allowed attempt: dead, unrun

# The statuses a claim may start (when due); a `processing` record whose lease ran out is taken over.
CLAIMABLE = ("queued", "failed")


@dataclasses.dataclass(frozen=True)
class Seen:
    """A job's record as the claim read it."""

    status: str
    attempts: int
    run_after: float
    lease_expires_at: float | None = None
    owner: str | None = None


@dataclasses.dataclass(frozen=True)
class ClaimDecision:
    action: str
    attempt: int = 0  # RUN: the attempt number to record
    retry_at: float | None = None  # HELD, NOT_YET: when the job may be looked at again
    error: str | None = None  # RUN or EXPIRE after a lost lease: the last_error to record


def lease_lost_error(attempts: int, owner: str | None) -> str:
    return f"lease expired during attempt {attempts} (worker {owner or '?'} stopped or hung)"


def decide_claim(seen: Seen, *, now: float, max_attempts: int, receive_count: int = 1,
                 max_receive_count: int | None = None, slack: float = 0.0) -> ClaimDecision:
    """What a claim does with the job it found. `max_receive_count` is the SQS redrive policy's (None: no
    policy, and SQLite has none); `slack` tolerates clocks of workers that differ by that much."""
    if seen.status == "done":
        return ClaimDecision(DROP)
    if seen.status == "dead":
        return ClaimDecision(BURY)
    if seen.status == "processing" and (seen.lease_expires_at or 0) > now:
        return ClaimDecision(HELD, retry_at=seen.lease_expires_at)
    if seen.status in CLAIMABLE and seen.run_after > now + slack:
        return ClaimDecision(NOT_YET, retry_at=seen.run_after)
    if max_receive_count and receive_count >= max_receive_count - 1:
        return ClaimDecision(RENEW)
    if seen.status == "processing":
        # The holder was killed or hung: its attempt counts, so a job that keeps killing workers ends dead.
        lost = lease_lost_error(seen.attempts, seen.owner)
        if seen.attempts >= max_attempts:
            return ClaimDecision(EXPIRE, error=lost)
        return ClaimDecision(RUN, attempt=seen.attempts + 1, error=lost)
    return ClaimDecision(RUN, attempt=seen.attempts + 1)


@dataclasses.dataclass(frozen=True)
class FailureOutcome:
    status: str  # "failed" (retried after `delay`) or "dead"
    delay: float


def after_failure(attempts: int, *, max_attempts: int, backoff_base: float) -> FailureOutcome:
    """A failed attempt `attempts`: retried after the backoff, or dead once MAX_ATTEMPTS are used."""
    status = "dead" if attempts >= max_attempts else "failed"
    return FailureOutcome(status, backoff_seconds(backoff_base, attempts))
