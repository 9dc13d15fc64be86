"""Job handlers the server tests load with JOB_HANDLER=handlers_for_tests:<name>. Each appends
`start <job> <attempt>` / `end <job>` lines to $RUN_LOG, so a test can count real executions."""

from __future__ import annotations

import os

from spot_drain_worker.runner import JobInterrupted


def _record(line: str) -> None:
    # One small O_APPEND write per line: whole lines even when the process is killed right after.
    fd = os.open(os.environ["RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def record_and_sleep(payload, context):
    _record(f"start {context.job_id} {context.attempt}")
    seconds = payload.get("seconds", context.settings.job_processing_seconds)
    if not context.sleep(seconds):
        raise JobInterrupted("drain deadline")
    _record(f"end {context.job_id}")
    return {"slept": seconds}


def always_fail(payload, context):
    _record(f"start {context.job_id} {context.attempt}")
    raise RuntimeError(f"poison payload {payload!r}")


def crash_worker_process(payload, context):
    """A job that takes its worker process down with it (segfault, OOM kill, os._exit)."""
    _record(f"start {context.job_id} {context.attempt}")
    os._exit(17)


def record_where_and_sleep(payload, context):
    """Like record_and_sleep, with the worker's $WORKER_NAME and the time: `start <job> <attempt> <worker>
    <epoch>` / `end <job> <worker> <epoch>` (for tests with several workers on one queue)."""
    import time
    where = os.environ.get("WORKER_NAME", "?")
    _record(f"start {context.job_id} {context.attempt} {where} {time.time():.3f}")
    seconds = payload.get("seconds", context.settings.job_processing_seconds)
    if not context.sleep(seconds):
        raise JobInterrupted("drain deadline")
    _record(f"end {context.job_id} {where} {time.time():.3f}")
    return {"slept": seconds, "by": where}
