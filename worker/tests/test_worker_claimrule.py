"""The claim rule on plain values: what a claim does with the record it saw. test_worker_queue_contract.py shows
both backends act on the same table."""

from __future__ import annotations

import pytest

from spot_drain_worker.claimrule import (BURY, DROP, EXPIRE, HELD, NOT_YET, RENEW, RUN, ClaimDecision, Seen,
                                         after_failure, decide_claim)

NOW = 1000.0

CASES = [
    # (what the claim saw, receive count, maxReceiveCount) -> decision
    (Seen("queued", 0, run_after=NOW), 1, None, ClaimDecision(RUN, attempt=1)),
    (Seen("queued", 2, run_after=NOW - 5), 1, 10, ClaimDecision(RUN, attempt=3)),
    (Seen("failed", 1, run_after=NOW + 2), 1, None, ClaimDecision(NOT_YET, retry_at=NOW + 2)),
    (Seen("failed", 1, run_after=NOW), 1, None, ClaimDecision(RUN, attempt=2)),
    (Seen("queued", 1, run_after=NOW + 4), 1, None, ClaimDecision(NOT_YET, retry_at=NOW + 4)),
    (Seen("processing", 1, run_after=NOW - 9, lease_expires_at=NOW + 7, owner="w1"), 1, None,
     ClaimDecision(HELD, retry_at=NOW + 7)),
    (Seen("processing", 1, run_after=NOW - 9, lease_expires_at=NOW - 1, owner="w1"), 2, None,
     ClaimDecision(RUN, attempt=2, error="lease expired during attempt 1 (worker w1 stopped or hung)")),
    (Seen("processing", 3, run_after=NOW - 9, lease_expires_at=NOW - 1), 2, None,
     ClaimDecision(EXPIRE, error="lease expired during attempt 3 (worker ? stopped or hung)")),
    (Seen("done", 1, run_after=NOW - 9), 2, None, ClaimDecision(DROP)),
    (Seen("dead", 3, run_after=NOW - 9), 2, None, ClaimDecision(BURY)),
    # SQS counts every receive: one short of the redrive policy's count the message is renewed, not run.
    (Seen("queued", 0, run_after=NOW), 9, 10, ClaimDecision(RENEW)),
    (Seen("queued", 0, run_after=NOW), 8, 10, ClaimDecision(RUN, attempt=1)),
    (Seen("queued", 0, run_after=NOW), 9, 0, ClaimDecision(RUN, attempt=1)),
    # A done or held job is never renewed (nor run), whatever its receive count.
    (Seen("done", 1, run_after=NOW - 9), 9, 10, ClaimDecision(DROP)),
    (Seen("processing", 1, run_after=NOW - 9, lease_expires_at=NOW + 1), 9, 10, ClaimDecision(HELD, retry_at=NOW + 1)),
]


@pytest.mark.parametrize("seen, receive_count, max_receive_count, expected", CASES)
def test_decide_claim(seen, receive_count, max_receive_count, expected):
    assert decide_claim(seen, now=NOW, max_attempts=3, receive_count=receive_count,
                        max_receive_count=max_receive_count) == expected


def test_slack_runs_a_job_whose_backoff_ends_within_it():
    seen = Seen("failed", 1, run_after=NOW + 0.4)
    assert decide_claim(seen, now=NOW, max_attempts=3).action == NOT_YET
    assert decide_claim(seen, now=NOW, max_attempts=3, slack=0.5) == ClaimDecision(RUN, attempt=2)


def test_after_failure_backs_off_then_is_dead():
    assert [(o.status, o.delay) for o in (after_failure(n, max_attempts=3, backoff_base=2.0) for n in (1, 2, 3))] == [
        ("failed", 2.0), ("failed", 4.0), ("dead", 8.0)]
    assert after_failure(20, max_attempts=30, backoff_base=2.0).delay == 300.0  # capped
