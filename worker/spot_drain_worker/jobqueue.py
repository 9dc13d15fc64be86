"""The persistent job queue: one SQLite table in WAL mode, leases instead of locks.

Every state change is one SQL statement below (a claim and a reclaim read their candidates first, in the
same write transaction, and let the claim rule in claimrule.py decide), and every statement that ends an
attempt is fenced on the lease token handed out by `claim`: a worker that lost its lease (it was reclaimed
after expiry, or released at the drain deadline) can no longer mark the job done or failed. That is what keeps an
interrupted job from being recorded as done and a job from being done twice.

Each thread gets its own connection (sqlite3 connections must not be shared between threads).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from typing import Any, Callable

from .claimrule import CLAIMABLE, EXPIRE, RUN, Seen, after_failure, decide_claim
from .queues import STATUSES, Job, JobQueueBase, ReclaimResult, backoff_seconds

log = logging.getLogger("spot_drain_worker.queue")

# SQLite's companion files; it creates them with the database file's mode.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    payload          TEXT NOT NULL,
    idempotency_key  TEXT UNIQUE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'done', 'failed', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    result           TEXT,
    run_after        REAL NOT NULL,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
);
CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs (status, run_after);
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (status, lease_expires_at);
"""

_SQL = {
    "enqueue": """
        INSERT INTO jobs (id, payload, idempotency_key, status, run_after, created_at, updated_at)
        VALUES (:id, :payload, :key, 'queued', :now, :now, :now)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING *""",
    "by_key": "SELECT * FROM jobs WHERE idempotency_key = :key",
    "get": "SELECT * FROM jobs WHERE id = :id",
    # The candidate: the oldest job the claim rule (claimrule.CLAIMABLE) may start and that is due. The select
    # and the update run under the write lock taken by BEGIN IMMEDIATE, so two workers never claim one row.
    "candidate": f"""
        SELECT * FROM jobs WHERE status IN ({", ".join(repr(status) for status in CLAIMABLE)})
                             AND run_after <= :now
         ORDER BY run_after, rowid LIMIT 1""",
    "claim": """
        UPDATE jobs
           SET status = 'processing', attempts = :attempt, last_error = COALESCE(:error, last_error),
               lease_owner = :owner, lease_token = :token, lease_expires_at = :now + :lease,
               started_at = :now, updated_at = :now
         WHERE id = :id AND status = :seen
        RETURNING *""",
    "extend": """
        UPDATE jobs SET lease_expires_at = :now + :lease, updated_at = :now
         WHERE id = :id AND lease_token = :token AND status = 'processing'""",
    "complete": """
        UPDATE jobs
           SET status = 'done', result = :result, last_error = NULL, lease_owner = NULL,
               lease_token = NULL, lease_expires_at = NULL, finished_at = :now, updated_at = :now
         WHERE id = :id AND lease_token = :token AND status = 'processing'""",
    "fail": """
        UPDATE jobs
           SET status = :status, last_error = :error, run_after = :now + :delay, lease_owner = NULL,
               lease_token = NULL, lease_expires_at = NULL, updated_at = :now,
               finished_at = CASE WHEN :status = 'dead' THEN :now ELSE NULL END
         WHERE id = :id AND lease_token = :token AND status = 'processing'""",
    # The worker stopped the attempt (drain deadline), not the job: the attempt is given back.
    "release": """
        UPDATE jobs
           SET status = 'queued', attempts = MAX(attempts - 1, 0), last_error = :reason,
               run_after = :now, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
               updated_at = :now
         WHERE id = :id AND lease_token = :token AND status = 'processing'""",
    # A lease that ran out means the worker died or hung: the claim rule decides (the attempt counts, so a
    # job that keeps killing its worker ends dead instead of looping forever).
    "expired": "SELECT * FROM jobs WHERE status = 'processing' AND lease_expires_at <= :now",
    "reclaim": """
        UPDATE jobs
           SET status = :status, last_error = :error, run_after = :run_after, finished_at = :finished,
               lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = :now
         WHERE id = :id AND status = 'processing' AND lease_token IS :token""",
    "requeue": """
        UPDATE jobs
           SET status = 'queued', attempts = 0, run_after = :now, finished_at = NULL,
               updated_at = :now
         WHERE id = :id AND status IN ('dead', 'failed')
        RETURNING *""",
    "counts": "SELECT status, COUNT(*) FROM jobs GROUP BY status",
}


def _first(cursor: sqlite3.Cursor) -> sqlite3.Row | None:
    """The first row, after running the statement to its end: an UPDATE ... RETURNING that is left
    half-read keeps its write transaction (and the database lock) open."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], payload=json.loads(row["payload"]), status=row["status"],
        attempts=row["attempts"], last_error=row["last_error"],
        result=None if row["result"] is None else json.loads(row["result"]),
        idempotency_key=row["idempotency_key"], lease_token=row["lease_token"],
        lease_expires_at=row["lease_expires_at"], created_at=row["created_at"],
        updated_at=row["updated_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], run_after=row["run_after"],
    )


def make_private(path: str) -> None:
    """Create the database file 0600 whatever the umask, before SQLite opens it, and take group and
    other access away from an existing one (and companions left by a crash) that this user owns.
    SQLite gives the -wal and -shm files it creates the database file's mode, so they are private too:
    the payloads may be confidential."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # the umask may have taken bits away (0277) or the mode is what we want
        os.close(fd)
    except FileExistsError:
        pass
    for name in (path,) + tuple(path + suffix for suffix in COMPANION_SUFFIXES):
        try:
            status = os.stat(name)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077 and status.st_uid == os.geteuid() and stat.S_ISREG(status.st_mode):
            os.chmod(name, mode & 0o700)
            log.warning("%s was readable by others (mode %04o): made it %04o", name, mode, mode & 0o700)


class JobQueue(JobQueueBase):
    """enqueue / claim / extend / complete / fail / release / reclaim / requeue over one SQLite file."""

    errors = (sqlite3.Error,)

    def __init__(self, path: str, *, max_attempts: int, retry_backoff_seconds: float,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self.path = path
        self.max_attempts = max_attempts
        self.retry_backoff_seconds = retry_backoff_seconds
        self.clock = clock
        self._local = threading.local()
        make_private(path)
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE) where they matter.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # FULL: a job is accepted only once its row is on disk, even if the instance loses power.
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def backoff(self, attempts: int) -> float:
        return backoff_seconds(self.retry_backoff_seconds, attempts)

    def enqueue(self, payload: Any, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Store a job; returns (job, created). A known idempotency key returns the stored job."""
        params = {"id": uuid.uuid4().hex, "payload": json.dumps(payload, separators=(",", ":")),
                  "key": idempotency_key, "now": self.clock()}
        conn = self._conn()
        row = _first(conn.execute(_SQL["enqueue"], params))
        if row is not None:
            self.work_available.set()
            return _job_from_row(row), True
        # The key exists (keys are never deleted), so this finds it.
        return _job_from_row(_first(conn.execute(_SQL["by_key"], params))), False

    def get(self, job_id: str) -> Job | None:
        row = _first(self._conn().execute(_SQL["get"], {"id": job_id}))
        return None if row is None else _job_from_row(row)

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """`work(conn)` under the write lock (BEGIN IMMEDIATE): what it reads, nobody changes before it writes."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            answer = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return answer

    def _seen(self, row: sqlite3.Row) -> Seen:
        return Seen(status=row["status"], attempts=row["attempts"], run_after=row["run_after"],
                    lease_expires_at=row["lease_expires_at"], owner=row["lease_owner"])

    def claim(self, owner: str, lease_seconds: float) -> Job | None:
        """Take the oldest runnable job and lease it to `owner`; None when nothing is runnable."""
        now = self.clock()

        def take(conn: sqlite3.Connection) -> sqlite3.Row | None:
            candidate = _first(conn.execute(_SQL["candidate"], {"now": now}))
            if candidate is None:
                return None
            decision = decide_claim(self._seen(candidate), now=now, max_attempts=self.max_attempts)
            if decision.action != RUN:  # the candidate's select excludes every other outcome
                return None
            return _first(conn.execute(_SQL["claim"], {
                "id": candidate["id"], "seen": candidate["status"], "attempt": decision.attempt,
                "error": decision.error, "owner": owner, "token": uuid.uuid4().hex, "lease": lease_seconds,
                "now": now}))

        row = self._transaction(take)
        return None if row is None else _job_from_row(row)

    def _fenced(self, statement: str, **params) -> bool:
        return self._conn().execute(_SQL[statement], dict(params, now=self.clock())).rowcount == 1

    def extend(self, job: Job, lease_seconds: float) -> bool:
        """Heartbeat: push the lease forward; False means the lease was lost."""
        return self._fenced("extend", id=job.id, token=job.lease_token, lease=lease_seconds)

    def complete(self, job: Job, result: Any = None) -> bool:
        """Mark done; False (and no change) when this worker no longer holds the lease."""
        return self._fenced("complete", id=job.id, token=job.lease_token,
                            result=json.dumps(result, default=str))

    def fail(self, job: Job, error: str) -> str | None:
        """Record a failed attempt: 'failed' (retried after backoff) or 'dead'; None if fenced off."""
        outcome = after_failure(job.attempts, max_attempts=self.max_attempts,
                                backoff_base=self.retry_backoff_seconds)
        if not self._fenced("fail", id=job.id, token=job.lease_token, error=error[:2000], status=outcome.status,
                            delay=outcome.delay):
            return None
        if outcome.status == "failed":
            self.work_available.set()
        return outcome.status

    def release(self, job: Job, reason: str) -> bool:
        """Give the job back without counting the attempt (the worker is going away)."""
        released = self._fenced("release", id=job.id, token=job.lease_token, reason=reason)
        if released:
            self.work_available.set()
        return released

    def reclaim(self) -> ReclaimResult:
        """Return every job whose lease ran out to the queue, after its backoff (or to dead after MAX_ATTEMPTS)."""
        now = self.clock()

        def expire(conn: sqlite3.Connection) -> ReclaimResult:
            result = ReclaimResult(requeued=[], dead=[])
            for row in conn.execute(_SQL["expired"], {"now": now}).fetchall():
                decision = decide_claim(self._seen(row), now=now, max_attempts=self.max_attempts)
                if decision.action not in (RUN, EXPIRE):
                    continue
                dead = decision.action == EXPIRE
                conn.execute(_SQL["reclaim"], {
                    "id": row["id"], "token": row["lease_token"], "status": "dead" if dead else "queued",
                    "error": decision.error, "run_after": now + self.backoff(row["attempts"]),
                    "finished": now if dead else None, "now": now})
                (result.dead if dead else result.requeued).append(row["id"])
            return result

        result = self._transaction(expire)
        if result.requeued:
            self.work_available.set()
        return result

    def requeue(self, job_id: str) -> Job | None:
        """Put a dead (or failed) job back with a fresh attempt count; None if not dead/failed."""
        row = _first(self._conn().execute(_SQL["requeue"], {"id": job_id, "now": self.clock()}))
        if row is None:
            return None
        self.work_available.set()
        return _job_from_row(row)

    def counts(self) -> dict:
        result = dict.fromkeys(STATUSES, 0)
        result.update(dict(self._conn().execute(_SQL["counts"]).fetchall()))
        return result
