# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping a pool whole: the reconcile pass, and the detached refill job that repeats it.

One pass (`reconcile`), in order:
0. a pool made before pool ids adopts one (adopt_pool_id);
1. replays fleet requests whose answer never reached the state file (a crash between CreateFleet and the write):
   same ClientToken, so EC2 answers with the instances it launched then instead of launching again;
2. one DescribeInstances by the pool tag: every idle entry, lease and stray instance of the pool at once; only
   what carries the pool's id (or is listed in its state) is the pool's: another pool of the same name is not;
3. drops entries whose instance is gone; an idle Spot entry that died without us ending it was interrupted, and
   its offering cools down like one that had no capacity;
4. ends leases past their `expires_at`, so a CI job that died before its release step leaks nothing;
5. marks instances with the pool tag that are in neither the pool nor a lease, and terminates them on a later
   pass once the mark is older than the orphan grace (never a leased or just-launched one);
6. launches what is missing (Spot, then, for what the `fallback_on` errors left, the pool's stopped fallbacks
   started again, then On-Demand), plus Spot instances to replace idle fallbacks, from the pool's launch template
   (made again if it was deleted outside the pool); the locks are not held meanwhile, so `get` never waits on EC2;
7. under the lock: applies all of it to the current state (a `get` may have leased an entry meanwhile), and
   takes out the surplus: fallbacks first, once the Spot instances that replace them are ready; then, with the
   lock released, ends what it took out (ending.py: the one rule for ending an instance).
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

from . import ec2
from . import ending
from . import identity
from .defaults import ORPHAN_GRACE_SECONDS
from .entries import counts
from .entries import fill_in
from .entries import is_fallback
from .entries import is_ready
from .errors import LaunchError
from .errors import PoolError
from .launcher import ACCOUNT_LIMIT_ERRORS
from .launcher import CAPACITY_ERRORS
from .launcher import Cooldowns
from .launcher import INTERRUPTED
from .launcher import LaunchResult
from .launcher import Launcher
from .launcher import SPOT
from .launcher import SUBNET_ERRORS
from .launcher import ensure_template
from .state import FileStore
from .state import open_private
from .timefmt import isoformat
from .timefmt import parse_time
from .timefmt import utcnow

# An instance EC2 does not list yet may simply be new (DescribeInstances is eventually consistent):
# only an entry older than this is dropped for being absent.
ABSENT_GRACE_SECONDS = 120
MAX_RUN_SECONDS = 900
LOG_MAX_BYTES = 1 << 20
# Fleet errors that a later pass may not meet again (a cool-down ends, EC2 recovers). A fleet whose offerings all
# failed with other codes (authorisation, validation) fails the same way on every pass: the job stops instead.
TRANSIENT_LAUNCH_ERRORS = CAPACITY_ERRORS | SUBNET_ERRORS | ACCOUNT_LIMIT_ERRORS | frozenset((
    "RequestLimitExceeded", "Throttling", "InternalError", "InternalFailure", "Unavailable", "ServiceUnavailable",
))
# botocore's names for a call that got no answer (Ec2Error.code): EC2 may well answer the next job.
CONNECTION_ERRORS = frozenset(("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                               "ConnectionClosedError"))


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
        self.retired = []
        self.launch_errors = []
        self.counts = {}

    @property
    def whole(self):
        return is_whole(self.counts)

    def as_dict(self):
        """Every field, empty ones too: the refill log's records keep one shape."""
        return dict(vars(self))


def is_whole(pool_counts):
    """Every slot of the pool holds an instance that is ready to hand out."""
    return pool_counts.get("pending", 0) == 0 and pool_counts.get("ready", 0) >= pool_counts.get("target", 0)


def _age(moment, now):
    if isinstance(moment, str):
        moment = parse_time(moment)
    return None if moment is None else (now - moment).total_seconds()


def _alive(entry, info, now):
    """Whether an idle entry still has a live instance (and fill in its addresses when it runs)."""
    if info is None:
        age = _age(entry.get("launched_at"), now)
        return age is not None and age < ABSENT_GRACE_SECONDS
    if info["state"] not in ec2.LIVE_STATES:
        return False
    fill_in(entry, info)
    return True


def _surplus(instances, target):
    """Idle entries to retire so the pool holds `target`: fallbacks first, Spot ones only once no fallback is
    left (pending before ready, newest first). A ready entry goes only while the ready count stays at the target,
    so a fallback waits for the Spot instance that replaces it to be ready."""
    surplus = len(instances) - target
    if surplus <= 0:
        return []
    ready = sum(1 for e in instances if is_ready(e))
    fallbacks = sorted((e for e in instances if is_fallback(e)), key=is_ready)
    spots = sorted((e for e in instances if not is_fallback(e)), key=lambda e: e.get("launched_at") or "",
                   reverse=True)
    spots.sort(key=is_ready)
    retire = []
    for entry in fallbacks + spots:
        if len(retire) == surplus:
            break
        if not is_fallback(entry) and len(retire) < len(fallbacks):
            break  # a fallback is still in the pool: the Spot entries are its replacements
        if is_ready(entry):
            if ready - 1 < target:
                continue
            ready -= 1
        retire.append(entry)
    return retire


def _kept_fallbacks(tagged, pool_name, pool_id, reused, ended, fallback_action, now):
    """The stopped fallbacks this pool keeps for reuse, as `spot_pool_info` shows them: those EC2 listed with
    the keep mark, less those started again in this pass, plus the fallbacks this pass stops."""
    kept = {item["id"]: {"id": item["id"], "instance_type": item.get("instance_type"),
                         "availability_zone": item.get("availability_zone"),
                         "released_at": item["tags"].get(ec2.RELEASED_TAG)}
            for item in identity.kept_fallbacks(tagged.values(), pool_name, pool_id) if item["id"] not in reused}
    if fallback_action == "stop":
        for entry in ended:
            if entry.get("type") == "fallback":
                kept[entry["id"]] = {"id": entry["id"], "instance_type": entry.get("instance_type"),
                                     "availability_zone": entry.get("availability_zone"),
                                     "released_at": isoformat(now)}
    return [kept[key] for key in sorted(kept)]


def _record_pending(store):
    def before_call(token, request):
        with store.transaction() as tx:
            if tx.state is None:
                raise PoolGone("pool '%s' was terminated during a refill" % store.pool_name)
            tx.state.setdefault("pending_launches", []).append(
                {"token": token, "request": request, "at": isoformat(utcnow())})
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
    with store.transaction() as tx:
        if tx.state is None:
            raise PoolGone("pool '%s' was terminated during a refill" % store.pool_name)
        tx.state["pool_id"] = tx.state.get("pool_id") or pool_id
        adopted = tx.state
    if adopted["pool_id"] != pool_id:  # adopted by another process meanwhile: its id wins
        ec2.create_tags(client, known, {ec2.POOL_ID_TAG: adopted["pool_id"]})
    return adopted


def reconcile(store, client, launch=True):
    """One pass; see the module docstring. Raises PoolGone if the pool no longer exists."""
    state = store.read()
    if state is None:
        raise PoolGone("pool '%s' has no state file %s" % (store.pool_name, store.location))
    state = adopt_pool_id(store, client, state)
    pool_id = state["pool_id"]
    now = utcnow()
    spec = state["launch"]
    result = ReconcileResult()
    cooldowns = Cooldowns(state.get("cooldowns"), now)
    launcher = Launcher(client, store.pool_name, spec, cooldowns, before_call=_record_pending(store), pool_id=pool_id)
    orphan_grace = spec.get("orphan_grace_seconds", ORPHAN_GRACE_SECONDS)
    fallback_action = ending.fallback_action_of(spec)

    # 1. fleet requests whose answer was lost
    replayed = LaunchResult()
    for pending in state.get("pending_launches") or []:
        try:
            launcher.absorb(launcher.create_fleet(pending["request"]), replayed)
        except ec2.Ec2Error as exc:  # refused now (e.g. the token expired): forgotten; else kept for next pass
            result.launch_errors.append({"token": pending["token"], "code": exc.code, "message": exc.message})
    result.replayed = replayed.ids

    # 2. the pool as EC2 sees it: what carries this pool's id, or is listed in its state. Another pool of the
    # same name (another controller's) carries another id: never swept, reused or counted here.
    named = [ec2.instance_summary(item)
             for item in ec2.describe_instances(client, filters=[{"Name": "tag:" + ec2.POOL_TAG,
                                                                  "Values": [store.pool_name]}])]
    listed = {e["id"] for e in state["instances"] + state["leases"]} | set(replayed.ids)
    tagged = {item["id"]: item for item in identity.mine(named, store.pool_name, pool_id, listed)}
    # 3. dead idle entries; an idle Spot instance we did not end was interrupted
    alive = []
    for entry in state["instances"]:
        info = tagged.get(entry["id"])
        if _alive(dict(entry), info, now):
            alive.append(entry)
        elif entry.get("type") == "spot" and info is not None:
            result.interrupted.append(entry["id"])
            # The offering's location as the pool asks for it: a pool without zones or subnets asks EC2 for the
            # type anywhere, so the zone the instance ran in would name an offering the launcher never uses.
            location = entry.get("subnet_id") or (entry.get("availability_zone")
                                                  if spec.get("availability_zones") else None)
            cooldowns.add("offering", INTERRUPTED, launcher.cooldown_seconds, SPOT, entry.get("instance_type"),
                          location)

    # 4. expired leases
    expired = [lease for lease in state["leases"]
               if lease.get("expires_at") and (_age(lease["expires_at"], now) or 0) >= 0]
    gone = []  # ended already: EC2 no longer knows them
    if expired:
        gone = ending.end(client, expired, fallback_action).gone
        result.expired = [lease["id"] for lease in expired]
    untagged_leases = [lease["id"] for lease in state["leases"] if lease["id"] in tagged
                       and ec2.LEASED_TAG not in tagged[lease["id"]]["tags"] and lease not in expired]
    ec2.create_tags(client, untagged_leases, {ec2.LEASED_TAG: isoformat(now)})

    # 5. orphans: tagged, live, in neither the pool nor a lease nor a fleet answer we are about to add
    known = {e["id"] for e in state["instances"] + state["leases"]} | set(replayed.ids)
    orphans = []
    for instance_id, info in sorted(tagged.items()):
        if instance_id in known or info["state"] in ("shutting-down", "terminated") \
                or ec2.RELEASED_TAG in info["tags"] or (_age(info["launch_time"], now) or 0) < orphan_grace:
            continue
        marked = info["tags"].get(ec2.ORPHAN_TAG)
        if marked is None:
            ec2.create_tags(client, [instance_id], {ec2.ORPHAN_TAG: isoformat(now)})
            result.orphans_marked.append(instance_id)
        elif (_age(marked, now) or 0) >= orphan_grace:
            orphans.append(instance_id)
    if orphans:
        # In neither the pool nor a lease, so never kept for its reuse: terminated, whatever their type.
        ending.end(client, [{"id": instance_id} for instance_id in orphans], "terminate")
        result.orphans_terminated = orphans

    # 6. launches
    launched = LaunchResult()
    error = None
    slots = len(alive) + len(replayed.entries)
    missing = state["target_size"] - slots
    spot_count = sum(1 for e in alive + replayed.entries if e.get("type") != "fallback")
    idle_fallbacks = slots - spot_count
    extra_spot = min(idle_fallbacks, max(0, state["target_size"] - spot_count - max(0, missing)))
    template = spec.get("template")
    if launch and (missing > 0 or extra_spot > 0):
        # The template may have been deleted outside the pool: the pool's own is made again from the settings in
        # the state; a user's that vanished stops the job with an error that says what to do.
        template = ensure_template(client, store.pool_name, pool_id, spec)
        launcher.launch = dict(spec, template=template)
        launcher.reusable = identity.reusable_fallbacks(tagged.values(), spec, store.pool_name, pool_id)
        try:
            launched = launcher.launch_instances(max(0, missing), extra_spot)
        except LaunchError as exc:
            error = exc
            launched.errors = exc.details.get("launch_errors", [])
        except ec2.Ec2Error as exc:
            error = exc  # recorded below with what this pass did learn, then raised
    result.launch_errors += launched.errors

    # 7. apply to the current state. No EC2 call under the lock: what this step decides to end is ended after it.
    vanished, retire = False, []
    with store.transaction() as tx:
        current = tx.state
        if current is None:
            vanished = True
        else:
            leased = {lease["id"] for lease in current["leases"]}
            checked = {e["id"] for e in state["instances"]} | set(tagged)
            kept = []
            for entry in current["instances"]:
                if entry["id"] in checked:
                    if not _alive(entry, tagged.get(entry["id"]), now):
                        result.dropped.append(entry["id"])
                        continue
                kept.append(entry)
            present = {e["id"] for e in kept} | leased
            kept.extend(e for e in replayed.entries + launched.entries if e["id"] not in present)
            retire = _surplus(kept, current["target_size"])
            current["instances"] = [e for e in kept if e not in retire]
            current["leases"] = [lease for lease in current["leases"] if lease["id"] not in result.expired]
            done = set(launcher.settled)
            current["pending_launches"] = [p for p in current.get("pending_launches") or []
                                           if p["token"] not in done]
            current["cooldowns"] = cooldowns.entries
            if template and current["launch"].get("template") != template:
                current["launch"]["template"] = template
            current["kept_fallbacks"] = _kept_fallbacks(tagged, store.pool_name, pool_id, launched.reused,
                                                        retire + [e for e in expired if e["id"] not in gone],
                                                        fallback_action, now)
            current["refill"]["verified_at"] = isoformat(now)
            result.launched = launched.ids
            result.reused = launched.reused
            result.retired = [e["id"] for e in retire]
            result.counts = counts(current)
    if vanished:
        # Terminated meanwhile: nothing this pass launched or took over may outlive the pool.
        ending.end(client, [{"id": instance_id} for instance_id in launched.ids + replayed.ids], "terminate")
        raise PoolGone("pool '%s' was terminated during a refill" % store.pool_name)
    if retire:
        ending.end(client, retire, fallback_action)
    if error is not None:
        raise error
    return result


class RefillJob:
    """The detached job: reconcile until the pool is whole, then exit. One per pool."""

    def __init__(self, store, client, log, max_seconds=MAX_RUN_SECONDS):
        self.store = store
        self.client = client
        self.log = log
        self.max_seconds = max_seconds
        self.lock = store.refill_lock()
        self.stop_requested = threading.Event()

    def _record(self, **fields):
        try:
            with self.store.transaction() as tx:
                if tx.state is not None:
                    tx.state["refill"].update(fields)
        except (PoolError, OSError, ValueError) as exc:  # a full disk, a file that went bad meanwhile
            self.log("state_write_failed", error=getattr(exc, "message", None) or str(exc))

    def _stopped_on(self, message, code, permanent):
        """The job ends on an error: record it where info and get read it, with the pid cleared."""
        self._record(last_error=message, last_error_code=code, last_error_permanent=permanent, pid=None,
                     finished_at=isoformat(utcnow()))

    def run(self):
        if not self.lock.acquire(blocking=False):
            self.log("already_running")
            return 0
        try:
            return self._run_locked()
        # Whatever else goes wrong (a malformed entry: KeyError, TypeError...) is recorded too, never only a
        # traceback in the log and a stale pid in the file.
        except Exception as exc:  # pylint: disable=broad-except
            self._stopped_on("the refill job crashed: %s: %s (see %s)"
                             % (type(exc).__name__, exc, self.store.refill_log_path()),
                             type(exc).__name__, True)
            self.log("crashed", error="%s: %s" % (type(exc).__name__, exc), traceback=traceback.format_exc())
            return 1
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
                code = getattr(exc, "code", None) or type(exc).__name__
                self._stopped_on(exc.message, code, code not in TRANSIENT_LAUNCH_ERRORS | CONNECTION_ERRORS)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="ec2spot.pool refill job (started by spot_pool_get)")
    parser.add_argument("--state-file", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--max-seconds", type=float, default=MAX_RUN_SECONDS)
    args = parser.parse_args(argv)
    store = FileStore(args.state_file, args.pool_name)
    log = _json_logger(store.refill_log_path())
    from .connection import client_from_environment  # pylint: disable=import-outside-toplevel

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
                job.lock.release()
        return 1
    job = RefillJob(store, client, log, max_seconds=args.max_seconds)
    signal.signal(signal.SIGTERM, lambda *_: job.stop_requested.set())
    return job.run()


if __name__ == "__main__":
    raise SystemExit(main())
