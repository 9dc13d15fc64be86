# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping a pool whole: the reconcile pass, and the detached refill job that repeats it.

One pass (`reconcile`) is observe -> decide -> act; the rules are pure functions in domain/refill_plan.py:
0. a pool made before pool ids adopts one (adopt_pool_id);
1. replay: fleet requests whose answer never reached the state file (a crash between CreateFleet and the write)
   are sent again: same ClientToken, so EC2 answers with the instances it launched then instead of launching again;
2. observe: one DescribeInstances by the pool tag: every idle entry, lease and stray instance of the pool at once;
   only what carries the pool's id (or is listed in its state) is the pool's: another pool of the same name is not;
3. decide (refill_plan.decide: the state, what EC2 said, the time and the pool's policy in, a Plan out): which
   entries are dead (their instance is gone); which idle Spot ones died without us ending them (interrupted: their
   offering cools down like one that had no capacity); which leases are past their `expires_at` (so a CI job that
   died before its release step leaks nothing); which instances with the pool tag, in neither the pool nor a
   lease, to mark as orphans, and which to terminate once the mark is older than the orphan grace (never a leased
   or just-launched one); how many to launch: what is missing, plus Spot instances to replace idle fallbacks;
4. act: carries the plan out: ends the expired leases and the orphans, tags the leases, and launches (Spot, then,
   for what the `fallback_on` errors left, the pool's stopped fallbacks started again, then On-Demand) from the
   pool's launch template (made again if it was deleted outside the pool); the locks are not held meanwhile, so
   `get` never waits on EC2;
5. under the lock, settle (refill_plan.settle) applies all of it to the current state (a `get` may have leased an
   entry meanwhile) and takes out the surplus: fallbacks first, once the Spot instances that replace them are
   ready; then, with the lock released, act ends what it took out (ending.py: the one rule for ending an instance).
`spot_pool_init` runs the same passes in its own process; `spot_pool_get` starts the detached job (jobcontrol.py).

The job is one process per pool: it holds the store's refill lock (store.refill_lock()) for as long as it runs,
and a second start is a no-op. It is started from a copy of the module's code (Ansible deletes the module's payload
as soon as the module exits), in a new session, with every standard stream redirected, so the playbook never waits for it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import threading
import time
import traceback

from . import ending
from ._aws import ec2
from ._aws import retry
from .domain import identity
from .domain.defaults import ORPHAN_GRACE_SECONDS
from .domain.end_plan import fallback_action_of
from .domain.entries import counts
from .domain.entries import is_whole  # ReconcileResult.whole; the job stops on it
from .domain.errors import LaunchError
from .domain.errors import PoolError
from .domain.errors import RefillLeaseLost
from .domain.refill_plan import ABSENT_GRACE_SECONDS
from .domain.refill_plan import Observed
from .domain.refill_plan import Outcome
from .domain.refill_plan import Policy
from .domain.refill_plan import decide
from .domain.refill_plan import plan_report
from .domain.refill_plan import settle
from .domain.timefmt import isoformat
from .domain.timefmt import utcnow
from .launcher import ACCOUNT_LIMIT_ERRORS
from .launcher import CAPACITY_ERRORS
from .launcher import Cooldowns
from .launcher import LaunchResult
from .launcher import Launcher
from .launcher import SUBNET_ERRORS
from .launcher import ensure_template
from .stores.base import change_pool
from .stores.localfiles import open_private
from .stores.opening import open_store
from .stores.spec import StoreSpec
from .stores.spec import add_job_arguments

MAX_RUN_SECONDS = 900
LOG_MAX_BYTES = 1 << 20
# Fleet errors that a later pass may not meet again (a cool-down ends, EC2 recovers). A fleet whose offerings all
# failed with other codes (authorisation, validation) fails the same way on every pass: the job stops instead.
# Throttling and passing server errors that outlasted the call's retries (retry.py) pass too.
TRANSIENT_LAUNCH_ERRORS = CAPACITY_ERRORS | SUBNET_ERRORS | ACCOUNT_LIMIT_ERRORS | retry.EC2_RETRYABLE_CODES


class PoolGone(PoolError):
    """The pool file disappeared (terminated) while the refill ran."""


class ReconcileResult:
    def __init__(self):
        self.launched = []
        self.reused = []  # stopped fallbacks started again (also in `launched`)
        self.replayed = []
        self.dropped = []
        self.interrupted = []
        self.expired = []
        self.orphans_marked = []
        self.orphans_terminated = []
        self.leases_tagged = []
        self.retired = []
        self.launch_errors = []
        self.counts = {}

    @property
    def whole(self):
        return is_whole(self.counts)

    def as_dict(self):
        """Every field, empty ones too: the refill log's records keep one shape."""
        return dict(vars(self))


def _record_pending(store, heartbeat=None):
    """The launcher's hook before every CreateFleet: the request and its ClientToken are in the store before the
    call (a write fenced by the refill lease in a shared store: a job that lost its lease launches nothing)."""
    def before_call(token, request):
        if heartbeat is not None:
            heartbeat()
        pending = {"token": token, "request": request, "at": isoformat(utcnow())}

        def record(tx):
            if tx.state is None:
                raise PoolGone("pool '%s' was terminated during a refill" % store.pool_name)
            tx.state.setdefault("pending_launches", []).append(pending)
        change_pool(store, record)
    return before_call


def adopt_pool_id(store, client, state, pool_id=None):
    """Give a pool made before pool ids its id: tag the instances its state lists (and its own launch template)
    with a new id, then record it. Only what the state lists: an instance with the pool's name that it does not
    list may be another controller's, and stays untouched. Returns the state with its `pool_id`."""
    if state.get("pool_id"):
        return state
    pool_id = pool_id or identity.new_pool_id()
    listed = [entry["id"] for entry in state["instances"] + state["leases"]]
    # Only those EC2 still knows: CreateTags fails as a whole on one unknown id.
    known = [item["InstanceId"] for item in ec2.describe_instances(client, listed)]
    ec2.create_tags(client, known, {ec2.POOL_ID_TAG: pool_id})
    template = state["launch"].get("template") or {}
    if template.get("owned") and template.get("LaunchTemplateId"):
        try:
            ec2.create_tags(client, [template["LaunchTemplateId"]], {ec2.POOL_ID_TAG: pool_id})
        except ec2.Ec2Error as exc:
            # Deleted outside the pool: nothing to tag, ensure_template makes a new one. Anything else is raised.
            if not exc.code.startswith("InvalidLaunchTemplateId"):
                raise

    def adopt(tx):
        if tx.state is None:
            raise PoolGone("pool '%s' was terminated during a refill" % store.pool_name)
        tx.state["pool_id"] = tx.state.get("pool_id") or pool_id
        return tx.state
    adopted = change_pool(store, adopt)
    if adopted["pool_id"] != pool_id:  # adopted by another process meanwhile: its id wins
        ec2.create_tags(client, known, {ec2.POOL_ID_TAG: adopted["pool_id"]})
    return adopted


def reconcile(store, client, launch=True, heartbeat=None):
    """One pass, as observe -> decide -> act; see the module docstring. `launch`: whether it may launch (False:
    it only drops, fills in, ends and sweeps). Raises PoolGone if the pool no longer exists.

    `heartbeat` (the refill lease's renew, or a LeaseKeeper's beat) is called between the steps and before every
    launch: it raises RefillLeaseLost once the lease is another controller's, and the pass stops there."""
    beat = heartbeat or (lambda: None)
    state = store.read()
    if state is None:
        raise PoolGone("pool '%s' has no state file %s" % (store.pool_name, store.location))
    state = adopt_pool_id(store, client, state)
    now = utcnow()
    launch_settings = state["launch"]
    result = ReconcileResult()
    launcher = Launcher(client, store.pool_name, launch_settings, Cooldowns(state.get("cooldowns"), now),
                        before_call=_record_pending(store, heartbeat), pool_id=state["pool_id"])
    beat()
    replayed = replay(launcher, state.get("pending_launches") or [], result)
    beat()
    observed = observe(client, store.pool_name, state, replayed)
    beat()
    return act(store, client, launcher, observed, decide(state, observed, now, policy_of(launch_settings, launch)),
               now, result)


def policy_of(launch_settings, may_launch=True):
    """The Policy of a pass over a pool with these launch settings (their defaults for keys an old file lacks)."""
    return Policy(orphan_grace_seconds=launch_settings.get("orphan_grace_seconds", ORPHAN_GRACE_SECONDS),
                  fallback_action=fallback_action_of(launch_settings), may_launch=may_launch,
                  absent_grace_seconds=ABSENT_GRACE_SECONDS)


def preview(store, client, state):
    """What one pass over `state` would do, carrying none of it out: refill_plan.plan_report of observe ->
    decide. Its only AWS call is observe's DescribeInstances; no replay (a CreateFleet), no adoption of a pool id
    (tags), no write to the store."""
    # A pool made before pool ids has none until its first real pass adopts one; until then only what its state
    # lists is its own (identity.mine).
    state = dict(state, pool_id=state.get("pool_id"))
    observed = observe(client, store.pool_name, state, [])
    return plan_report(state, observed, decide(state, observed, utcnow(), policy_of(state["launch"])))


def replay(launcher, pending_launches, result):
    """Send again the fleet requests whose answer never reached the state (a crash between CreateFleet and the
    write): same ClientToken, so EC2 answers with what it launched then instead of launching again. Returns the
    entries of those answers; a request EC2 refuses now (e.g. its token expired) is recorded in `result` and
    forgotten, one that got no answer stays pending for the next pass."""
    replayed = LaunchResult()
    for pending in pending_launches:
        try:
            launcher.absorb(launcher.create_fleet(pending["request"]), replayed)
        except ec2.Ec2Error as exc:
            result.launch_errors.append({"token": pending["token"], "code": exc.code, "message": exc.message})
    result.replayed = replayed.ids
    return replayed.entries


def observe(client, pool_name, state, replayed):
    """The pool as EC2 sees it, in one DescribeInstances by the pool tag: an Observed (domain/refill_plan.py).

    Only what carries this pool's id, or is listed in its state or in a replayed fleet answer, is the pool's:
    another pool of the same name (another controller's) carries another id, and is never swept, reused or
    counted here."""
    named = [ec2.instance_summary(item)
             for item in ec2.describe_instances(client, filters=[{"Name": "tag:" + ec2.POOL_TAG,
                                                                  "Values": [pool_name]}])]
    listed = {entry["id"] for entry in state["instances"] + state["leases"] + list(replayed)}
    return Observed({item["id"]: item for item in identity.mine(named, pool_name, state["pool_id"], listed)},
                    list(replayed))


def act(store, client, launcher, observed, plan, now, result):
    """Carry out `plan` (refill_plan.decide), in its order, and record what was done in `result` (returned).

    The AWS calls come first and no lock is held meanwhile, so `get` never waits on EC2; then, under the pool's
    lock, the pass is applied to the pool as it is by then (refill_plan.settle); what that retires is ended
    after the lock is released. A pool terminated meanwhile: what this pass launched or took over is terminated
    and PoolGone raised. A launch error is raised last, once the rest of the pass is recorded."""
    result.interrupted = list(plan.interrupted)
    for cooldown in plan.cooldowns:
        launcher.cooldowns.add(cooldown["scope"], cooldown["code"], launcher.cooldown_seconds, cooldown["market"],
                               cooldown["instance_type"], cooldown["location"])
    gone = _end_and_mark(client, plan, now, result)
    launched, error, template = _launch(store, client, launcher, plan)
    result.launch_errors += launched.errors

    # No EC2 call under the lock: what settle retires is ended after it.
    outcome = Outcome(entries=launched.entries, reused=launched.reused, settled=launcher.settled,
                      cooldowns=launcher.cooldowns.entries, template=template, gone=gone)

    def apply(tx):
        # settle is pure: after a conflict (a get leased an entry meanwhile) it is applied again to the pool as
        # it is then.
        if tx.state is None:
            return None
        done = settle(tx.state, observed, plan, outcome, now)
        tx.state = done.state
        return done
    settled = change_pool(store, apply)
    if settled is None:
        # Terminated meanwhile: nothing this pass launched or took over may outlive the pool.
        ending.end(client, [{"id": instance_id} for instance_id in launched.ids + result.replayed], "terminate")
        raise PoolGone("pool '%s' was terminated during a refill" % store.pool_name)
    result.launched = launched.ids
    result.reused = launched.reused
    result.dropped = settled.dropped
    result.retired = [entry["id"] for entry in settled.retire]
    result.counts = counts(settled.state)
    if settled.retire:
        ending.end(client, settled.retire, plan.fallback_action)
    if error is not None:
        raise error
    return result


def _end_and_mark(client, plan, now, result):
    """act's first AWS calls: end the expired leases, tag the leased instances, mark and end the orphans (recorded
    in `result`). Returns the expired leases EC2 no longer knows (ended already)."""
    gone = []
    if plan.expired:
        gone = ending.end(client, plan.expired, plan.fallback_action).gone
        result.expired = [lease["id"] for lease in plan.expired]
    ec2.create_tags(client, plan.tag_leased, {ec2.LEASED_TAG: isoformat(now)})
    result.leases_tagged = list(plan.tag_leased)
    for instance_id in plan.mark_orphans:
        ec2.create_tags(client, [instance_id], {ec2.ORPHAN_TAG: isoformat(now)})
        result.orphans_marked.append(instance_id)
    if plan.end_orphans:
        # In neither the pool nor a lease, so never kept for its reuse: terminated, whatever their type.
        ending.end(client, [{"id": instance_id} for instance_id in plan.end_orphans], "terminate")
        result.orphans_terminated = list(plan.end_orphans)
    return gone


def _launch(store, client, launcher, plan):
    """act's launches (plan.launch, plan.extra_spot, reusing plan.reusable): (the LaunchResult, the error that
    stopped them or None, the pool's launch template as it is now)."""
    launch_settings = launcher.launch
    launched, error, template = LaunchResult(), None, launch_settings.get("template")
    if plan.launch or plan.extra_spot:
        # The template may have been deleted outside the pool: the pool's own is made again from the settings in
        # the state; a user's that vanished stops the job with an error that says what to do.
        template = ensure_template(client, store.pool_name, launcher.pool_id, launch_settings)
        launcher.launch = dict(launch_settings, template=template)
        launcher.reusable = list(plan.reusable)
        try:
            launched = launcher.launch_instances(plan.launch, plan.extra_spot)
        except LaunchError as exc:
            error = exc
            launched.errors = exc.details.get("launch_errors", [])
        except ec2.Ec2Error as exc:
            error = exc  # recorded below with what this pass did learn, then raised
    return launched, error, template


# How often the refill job renews a lease that expires (DynamoDB), whatever its length: each renewal also answers
# whether another controller asked the job to stop (a stop request on the lease, jobcontrol.stop_refill), and the
# asker waits 20 s for the job to stop. One conditional UpdateItem every 5 s of a job's run.
STOP_CHECK_SECONDS = 5.0


class LeaseKeeper:
    """Keeps the refill lease of a shared store while its holder works: beat() renews it once `every` seconds
    (by `clock`) have passed since it was taken or last renewed, and raises RefillLeaseLost when another controller
    has taken it. `every` None: a lease that never expires (the file store's flock), nothing to renew.

    `on_stop` (the refill job's): called with the stop request a renewal returns (another controller asks the
    holder to stop: jobcontrol.stop_refill), once; the keeper then renews every `ask_every` seconds (sooner than
    `every`), so the request is seen within seconds. Without it (init, reconcile), a request is not looked at:
    they end by themselves, and the asker waits for them as for a job."""

    def __init__(self, lock, every, clock=time.monotonic, on_stop=None, ask_every=None):
        self.lock = lock
        self.every = every
        self.clock = clock
        self.on_stop = on_stop
        self.interval = every if every is None or on_stop is None or ask_every is None else min(every, ask_every)
        self.stop_seen = None
        self.renewed = clock()

    @classmethod
    def of(cls, store, lock, clock=time.monotonic, on_stop=None):
        """A keeper that renews three times per lease length (the store's `lease_seconds`, if its lease expires),
        and with `on_stop` every STOP_CHECK_SECONDS."""
        seconds = store.lease_seconds
        return cls(lock, seconds / 3.0 if seconds else None, clock, on_stop, STOP_CHECK_SECONDS)

    def taken(self):
        """The lease was (re)acquired just now (an acquisition clears any stop request)."""
        self.renewed = self.clock()
        self.stop_seen = None

    def beat(self):
        if self.interval is None or self.clock() - self.renewed < self.interval:
            return
        request = self.lock.renew()
        self.renewed = self.clock()
        if request and self.on_stop is not None and self.stop_seen is None:
            self.stop_seen = request
            self.on_stop(request)


class RefillJob:
    """The detached job: reconcile until the pool is whole, then exit. One per pool.

    With a store whose refill lease expires (DynamoDB), the job renews it while it works (LeaseKeeper: between the
    steps of a pass, before every launch, after every wait); once the lease is lost (another controller took it
    over after it expired) the job stops at once and writes nothing more: the new holder does the work. A renewal
    that returns a stop request (another controller's terminate or init) stops the job as SIGTERM does: the pass
    under way is finished and recorded, then the job records that it stopped and releases the lease."""

    def __init__(self, store, client, log, max_seconds=MAX_RUN_SECONDS, clock=time.monotonic):
        self.store = store
        self.client = client
        self.log = log
        self.max_seconds = max_seconds
        self.lock = store.refill_lock()
        self.keeper = LeaseKeeper.of(store, self.lock, clock, on_stop=self._asked_to_stop)
        self.stop_requested = threading.Event()
        # (message, code) of an end this job could not write to the pool (a store that refuses its writes): its
        # lease records it when released (release()), where info and get read it.
        self.unrecorded = None

    def _asked_to_stop(self, request):
        """Another controller asked this job to stop (a stop request on the lease: its terminate or init, where no
        signal of theirs reaches us): stop as on SIGTERM, at the end of the current pass, releasing the lease."""
        self.log("stop_requested", by=request.get("by"), at=request.get("at"))
        self.stop_requested.set()

    def _record(self, **fields):
        def record(tx):
            if tx.state is not None:
                tx.state["refill"].update(fields)
        try:
            change_pool(self.store, record)
        except RefillLeaseLost:
            raise  # the job stops: see RefillJob
        except (PoolError, OSError, ValueError) as exc:  # a full disk, a file gone bad, no permission
            self.log("state_write_failed", error=getattr(exc, "message", None) or str(exc))
            if fields.get("last_error"):
                self.unrecorded = (fields["last_error"], fields.get("last_error_code"))

    def release(self):
        """Release the refill lease, with the end this job could not write to the pool when its lease can record
        it (DynamoDB's: jobcontrol.exit_note says it)."""
        if self.unrecorded:
            self.lock.release(exit_error=self.unrecorded[0], exit_code=self.unrecorded[1])
        else:
            self.lock.release()

    def _stopped_on(self, message, code, permanent):
        """The job ends on an error: record it where info and get read it, with the pid cleared."""
        self._record(last_error=message, last_error_code=code, last_error_permanent=permanent, pid=None,
                     finished_at=isoformat(utcnow()))

    def run(self):
        if not self.lock.acquire(blocking=False):
            self.log("already_running")
            return 0
        self.keeper.taken()
        lost = False
        try:
            return self._run_locked()
        except RefillLeaseLost as exc:
            # Another controller holds the lease now and does this work: nothing more is written here (not even
            # a release of the lease, which is the new holder's).
            lost = True
            self.log("lease_lost", message=exc.message)
            return 0
        # Whatever else goes wrong (a malformed entry: KeyError, TypeError...) is recorded too, never only a
        # traceback in the log and a stale pid in the file.
        except Exception as exc:  # pylint: disable=broad-except
            self._stopped_on("the refill job crashed: %s: %s (see %s)"
                             % (type(exc).__name__, exc, self.store.refill_log_path()),
                             type(exc).__name__, True)
            self.log("crashed", error="%s: %s" % (type(exc).__name__, exc), traceback=traceback.format_exc())
            return 1
        finally:
            if not lost:
                self.release()

    def _run_locked(self):
        self._record(pid=os.getpid(), started_at=isoformat(utcnow()), finished_at=None)
        self.log("started")
        deadline = time.monotonic() + self.max_seconds
        delay = 1.0
        while not self.stop_requested.is_set():
            try:
                self.keeper.beat()
                result = reconcile(self.store, self.client, heartbeat=self.keeper.beat)
            except RefillLeaseLost:
                raise  # run() stops the job
            except PoolGone as exc:
                self.log("pool_gone", message=exc.message)
                return 0
            except LaunchError as exc:
                codes = {error.get("code") for error in exc.details.get("launch_errors") or []}
                if codes and not codes & TRANSIENT_LAUNCH_ERRORS:
                    self._stopped_on(exc.message, sorted(codes)[0], True)
                    self.log("failed", message=exc.message, errors=exc.details.get("launch_errors"))
                    return 1
                # Every offering refused (capacity): keep trying, gently, until the deadline.
                self._record(last_error=exc.message, last_error_code=sorted(codes)[0] if codes else None,
                             last_error_permanent=False)
                self.log("launch_failed", message=exc.message, errors=exc.details.get("launch_errors"))
            except PoolError as exc:
                # Authentication, validation, a corrupt file: retrying at once would not help. Record it for
                # info/get; a passing one (throttled for good, EC2 unreachable) lets the next get start the job.
                code = getattr(exc, "code", None) or exc.details.get("error_code") or type(exc).__name__
                self._stopped_on(exc.message, code, code not in TRANSIENT_LAUNCH_ERRORS | retry.CONNECTION_ERRORS)
                self.log("failed", message=exc.message)
                return 1
            else:
                self.log("reconciled", **result.as_dict())
                # Whole, and no fallback left to replace by Spot (or no time left to try): done.
                if result.whole and (not result.counts.get("fallback") or time.monotonic() >= deadline):
                    self._record(pid=None, finished_at=isoformat(utcnow()), last_error=None, last_error_code=None,
                                 last_error_permanent=None)
                    if self._handed_over():
                        self.log("finished", counts=result.counts)
                        return 0
                    delay = 1.0
                    continue
            if time.monotonic() >= deadline:
                self._stopped_on("refill gave up after %d s without making the pool whole" % self.max_seconds,
                                 "GaveUp", False)
                self.log("gave_up")
                return 1
            self.stop_requested.wait(delay)
            self.keeper.beat()
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
        self.keeper.taken()
        self._record(pid=os.getpid(), finished_at=None)
        return False


# -- the job's entry point ---------------------------------------------------------------------------------
def _rotate_log(path, fd=1, max_bytes=LOG_MAX_BYTES):
    """Start a fresh log once the one we write to (`fd`) grew past `max_bytes`; the last one is kept as `.1`.

    Returns the new log's descriptor, or None when nothing was rotated. Only our own regular file is renamed, and
    only when it is the very file we write to (never what a link or someone else's file at the path points to);
    the new one is opened like every file of ours (no link followed, refused if not ours)."""
    try:
        current = os.fstat(fd)
        if current.st_size <= max_bytes:
            return None
        at_path = os.lstat(path)
        if not stat.S_ISREG(at_path.st_mode) or at_path.st_uid != os.geteuid() \
                or (at_path.st_dev, at_path.st_ino) != (current.st_dev, current.st_ino):
            return None
        os.replace(path, path + ".1")
        return open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except (OSError, PoolError):
        return None  # a log that cannot rotate is no reason to leave the pool unfilled: keep writing where we are


def _json_logger(path):
    def log(event, **fields):
        record = dict(time=isoformat(utcnow()), event=event, pid=os.getpid(), **fields)
        sys.stdout.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()

    # Keep the log bounded. Our stdout and stderr are the log that start_refill opened.
    fd = _rotate_log(path)
    if fd is not None:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    return log


def parse_arguments(argv=None):
    """The job's command line: the store (StoreSpec.job_arguments(): a state file, or a DynamoDB table and the state
    directory that keeps this controller's log), the pool, and how long the job may run."""
    parser = argparse.ArgumentParser(description="ec2spot.pool refill job (started by spot_pool_get)")
    add_job_arguments(parser)
    parser.add_argument("--max-seconds", type=float, default=MAX_RUN_SECONDS)
    args = parser.parse_args(argv)
    if args.state_dir and not args.dynamodb_table:
        parser.error("--state-dir goes with --dynamodb-table (a state file says its own directory)")
    return args


def job_store(args, client_from_environment):
    """The store the job's arguments name (StoreSpec.from_job_arguments). A DynamoDB store gets a client made from
    the job's environment only (its region, endpoint and credentials: connection.child_environment)."""
    spec = StoreSpec.from_job_arguments(args)
    return open_store(spec, client_from_environment("dynamodb") if spec.kind == "dynamodb" else None)


def main(argv=None):
    args = parse_arguments(argv)
    from ._aws.connection import client_from_environment  # pylint: disable=import-outside-toplevel

    try:
        store = job_store(args, client_from_environment)
    except PoolError as exc:  # no client (no region): nothing to record it in; the log is the job's stdout
        sys.stdout.write(json.dumps({"time": isoformat(utcnow()), "event": "failed", "pid": os.getpid(),
                                     "message": "the refill job could not start: %s" % exc.message}) + "\n")
        return 1
    log = _json_logger(store.refill_log_path())

    try:
        state = store.read()
        if state and state["launch"].get("region") and not (os.environ.get("AWS_REGION")
                                                            or os.environ.get("AWS_DEFAULT_REGION")):
            os.environ["AWS_DEFAULT_REGION"] = state["launch"]["region"]
        client = client_from_environment()
    # Anything here is recorded (when the file can take it), then the job ends.
    except Exception as exc:  # pylint: disable=broad-except
        message = "the refill job could not start: %s" % (getattr(exc, "message", None) or exc)
        log("failed", message=message)
        job = RefillJob(store, None, log)
        if job.lock.acquire(blocking=False):  # never over the record of a job that runs meanwhile
            try:
                job._stopped_on(message, getattr(exc, "code", None) or type(exc).__name__, True)
            finally:
                job.release()
        return 1
    job = RefillJob(store, client, log, max_seconds=args.max_seconds)
    signal.signal(signal.SIGTERM, lambda *_: job.stop_requested.set())
    return job.run()


if __name__ == "__main__":
    raise SystemExit(main())
