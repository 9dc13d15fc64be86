"""The default job handler. Point JOB_HANDLER=module:function at your own function with the same
signature: `handler(payload: dict, context: JobContext) -> result` (the result must be
JSON-serialisable; raising marks the attempt failed and it is retried with backoff)."""

from __future__ import annotations

from typing import Any

from .runner import JobContext, JobInterrupted


def simulate_work(payload: dict, context: JobContext) -> Any:
    """Stand-in for real work: takes JOB_PROCESSING_SECONDS, stops early if the drain deadline
    gives the job back (it then runs again after the restart)."""
    seconds = context.settings.job_processing_seconds
    if not context.sleep(seconds):
        raise JobInterrupted(f"interrupted after less than {seconds}s")
    return {"simulated_seconds": seconds, "attempt": context.attempt}
