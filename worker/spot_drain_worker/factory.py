"""The one place that names the queue backends: the configuration picks SQS (QUEUE_URL) or the SQLite file.
The backends import the interface (queues.py), never this module nor each other."""

from __future__ import annotations

from .jobqueue import JobQueue
from .queues import JobQueueBase


def make_queue(config, *, clock, metrics=None) -> JobQueueBase:
    """The backend the configuration names: SQS with QUEUE_URL, else the SQLite file."""
    if getattr(config, "queue_url", None):
        from .sqsqueue import SqsQueue  # boto3 only when asked for
        return SqsQueue.from_config(config, clock=clock, metrics=metrics)
    return JobQueue(config.database_path, max_attempts=config.max_attempts,
                    retry_backoff_seconds=config.retry_backoff_seconds, clock=clock)


def check_queue(config) -> None:
    """At start, before any worker process: open the backend once. Raises ConfigError naming the
    queue or table that cannot be used (SQS), or the database's own error (SQLite)."""
    if getattr(config, "queue_url", None):
        from .sqsqueue import SqsQueue
        SqsQueue.check(config)
        return
    JobQueue(config.database_path, max_attempts=config.max_attempts,
             retry_backoff_seconds=config.retry_backoff_seconds).close()
