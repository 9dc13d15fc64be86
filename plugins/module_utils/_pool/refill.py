# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping a pool whole: the reconcile step, the detached refill job that repeats it, and starting/stopping it.

One reconcile step: describe the pool's instances (one call), launch what is missing (outside the state lock,
so `get` never waits on EC2), then under the lock drop dead entries, fill in addresses, add the new instances
with `ip: null`. `spot_pool_init` runs the same steps in its own process; `spot_pool_get` starts the detached job.

The job is one process per pool: it holds `<pool file>.refill.lock` for as long as it runs, and a second start
is a no-op. It is started from a copy of the module's code (Ansible deletes the module's payload as soon as the
module exits), in a new session, with every standard stream redirected, so the playbook never waits for it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from . import ec2
from .errors import LaunchError
from .errors import PoolError
from .jobcontrol import log_path
from .jobcontrol import refill_lock
from .launcher import Launcher
from .state import PoolStore
from .state import counts
from .state import isoformat
from .state import parse_time
from .state import utcnow

# An instance EC2 does not list yet may simply be new (DescribeInstances is eventually consistent):
# only an entry older than this is dropped for being absent.
ABSENT_GRACE_SECONDS = 120
MAX_RUN_SECONDS = 900
LOG_MAX_BYTES = 1 << 20


class PoolGone(PoolError):
    """The pool file disappeared (terminated) while the refill ran."""


class ReconcileResult:
    def __init__(self):
        self.launched = []
        self.dropped = []
        self.launch_errors = []
        self.counts = {}

    @property
    def whole(self):
        return is_whole(self.counts)


def is_whole(pool_counts):
    """Every slot of the pool holds an instance that is ready to hand out."""
    return pool_counts.get("pending", 0) == 0 and pool_counts.get("ready", 0) >= pool_counts.get("target", 0)


def _observe(entry, info, now):
    """Update one entry from what EC2 says; False when the instance is gone for good."""
    if info is None:
        launched = parse_time(entry.get("launched_at"))
        return launched is not None and (now - launched).total_seconds() < ABSENT_GRACE_SECONDS
    if info["state"] not in ec2.LIVE_STATES:
        return False
    if info["state"] == "running":
        entry["public_ip"] = info["public_ip"]
        entry["private_ip"] = info["private_ip"]
        entry["ip"] = info["public_ip"] or info["private_ip"]
    return True


def reconcile(store, client, launch=True):
    """One pass; see the module docstring. Raises PoolGone if the pool no longer exists."""
    state = store.read()
    if state is None:
        raise PoolGone("pool '%s' has no state file %s" % (store.pool_name, store.path))
    checked = [entry["id"] for entry in state["instances"]]
    found = {item["InstanceId"]: ec2.instance_summary(item) for item in ec2.describe_instances(client, checked)}
    now = utcnow()
    alive = [entry for entry in state["instances"] if _observe(dict(entry), found.get(entry["id"]), now)]
    result = ReconcileResult()
    missing = state["target_size"] - len(alive)
    launched = None
    if launch and missing > 0:
        try:
            launched = Launcher(client, store.pool_name, state["launch"]).launch_instances(missing)
        except LaunchError as exc:
            result.launch_errors = exc.details.get("launch_errors", [])
            raise
        result.launch_errors = launched.errors_as_dicts()
    with store.transaction() as tx:
        if tx.state is None:
            if launched and launched.ids:
                # Terminated while we launched: what we just started must not outlive the pool.
                ec2.terminate_instances(client, launched.ids)
            raise PoolGone("pool '%s' was terminated during a refill" % store.pool_name)
        current = tx.state
        kept = []
        for entry in current["instances"]:
            if entry["id"] not in checked or _observe(entry, found.get(entry["id"]), now):
                kept.append(entry)
            else:
                result.dropped.append(entry["id"])
        if launched:
            kept.extend(launched.entries)
            result.launched = launched.ids
        current["instances"] = kept
        current["refill"]["verified_at"] = isoformat(now)
        result.counts = counts(current)
    return result


class RefillJob:
    """The detached job: reconcile until the pool is whole, then exit. One per pool."""

    def __init__(self, store, client, log, max_seconds=MAX_RUN_SECONDS):
        self.store = store
        self.client = client
        self.log = log
        self.max_seconds = max_seconds
        self.lock = refill_lock(store)
        self.stop_requested = threading.Event()

    def _record(self, **fields):
        try:
            with self.store.transaction() as tx:
                if tx.state is not None:
                    tx.state["refill"].update(fields)
        except PoolError as exc:
            self.log("state_write_failed", error=exc.message)

    def run(self):
        if not self.lock.acquire(blocking=False):
            self.log("already_running")
            return 0
        try:
            return self._run_locked()
        finally:
            self.lock.release()

    def _run_locked(self):
        self._record(pid=os.getpid(), started_at=isoformat(utcnow()), finished_at=None)
        self.log("started")
        deadline = time.monotonic() + self.max_seconds
        delay = 1.0
        while not self.stop_requested.is_set():
            try:
                result = reconcile(self.store, self.client)
            except PoolGone as exc:
                self.log("pool_gone", message=exc.message)
                return 0
            except LaunchError as exc:
                # Every offering refused (capacity): keep trying, gently, until the deadline.
                self._record(last_error=exc.message)
                self.log("launch_failed", message=exc.message, errors=exc.details.get("launch_errors"))
            except PoolError as exc:
                # Authentication, validation, a corrupt file: retrying would not help. Record it for info/get.
                self._record(last_error=exc.message, pid=None, finished_at=isoformat(utcnow()))
                self.log("failed", message=exc.message)
                return 1
            else:
                self.log("reconciled", launched=result.launched, dropped=result.dropped, counts=result.counts,
                         launch_errors=result.launch_errors)
                if result.whole:
                    self._record(pid=None, finished_at=isoformat(utcnow()), last_error=None)
                    if self._handed_over():
                        self.log("finished", counts=result.counts)
                        return 0
                    delay = 1.0
                    continue
            if time.monotonic() >= deadline:
                self._record(pid=None, finished_at=isoformat(utcnow()),
                             last_error="refill gave up after %d s without making the pool whole" % self.max_seconds)
                self.log("gave_up")
                return 1
            self.stop_requested.wait(delay)
            delay = min(delay * 2, 10.0)
        self._record(pid=None, finished_at=isoformat(utcnow()))
        self.log("stopped")
        return 0

    def _handed_over(self):
        """Release the job lock, then look once more: a `get` that took an instance just before the release saw
        the lock held and started nothing, so its change must be picked up here or by a job started after it."""
        self.lock.release()
        state = self.store.read()
        if state is None:
            return True
        now_counts = counts(state)
        if is_whole(now_counts):
            return True
        # Not whole any more. Either a newer job holds the lock now, or we carry on.
        if not self.lock.acquire(blocking=False):
            return True
        self._record(pid=os.getpid(), finished_at=None)
        return False


# -- the job's entry point ---------------------------------------------------------------------------------
def _json_logger(path):
    def log(event, **fields):
        record = dict(time=isoformat(utcnow()), event=event, pid=os.getpid(), **fields)
        sys.stdout.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()

    # Keep the log bounded: start a fresh one when it grew past LOG_MAX_BYTES (the last one is kept as .1).
    try:
        if os.path.getsize(path) > LOG_MAX_BYTES:
            os.replace(path, path + ".1")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    except OSError:
        pass
    return log


def main(argv=None):
    parser = argparse.ArgumentParser(description="ec2spot.pool refill job (started by spot_pool_get)")
    parser.add_argument("--state-file", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--max-seconds", type=float, default=MAX_RUN_SECONDS)
    args = parser.parse_args(argv)
    store = PoolStore(args.state_file, args.pool_name)
    log = _json_logger(log_path(store))
    from .connection import client_from_environment  # pylint: disable=import-outside-toplevel

    try:
        state = store.read()
        if state and state["launch"].get("region") and not (os.environ.get("AWS_REGION")
                                                            or os.environ.get("AWS_DEFAULT_REGION")):
            os.environ["AWS_DEFAULT_REGION"] = state["launch"]["region"]
        client = client_from_environment()
    except Exception as exc:  # pylint: disable=broad-except  (anything here is recorded, then the job ends)
        log("failed", message="cannot create the EC2 client: %s" % exc)
        return 1
    job = RefillJob(store, client, log, max_seconds=args.max_seconds)
    signal.signal(signal.SIGTERM, lambda *_: job.stop_requested.set())
    return job.run()


if __name__ == "__main__":
    sys.exit(main())
