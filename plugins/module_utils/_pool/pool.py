# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the five modules do, as plain functions of a PoolStore, an EC2 client and values.

Rules every function keeps: the state lock is held only around file I/O (never around an AWS call or a
spawn); a failure before the write changes nothing; check mode reads but never writes or launches.
`get_instance` and its imports stay free of boto3: it receives a factory for the client it rarely needs.
"""

from __future__ import annotations

import datetime
import os
import time

from . import jobcontrol
from .errors import InvalidRequest
from .errors import NoReadyInstance
from .errors import PoolError
from .errors import StateFileError
from .state import counts
from .state import isoformat
from .state import new_state
from .state import parse_time
from .state import utcnow


def launch_spec(params, region):
    """The part of init's options that every later launch repeats. Credentials are never part of it."""
    # Only spot_pool_init calls this, and it imports the launcher anyway; get's path never does.
    # pylint: disable=import-outside-toplevel
    from .launcher import DEFAULT_COOLDOWN_SECONDS
    from .launcher import DEFAULT_FALLBACK_ON
    from .refill import DEFAULT_ORPHAN_GRACE_SECONDS

    template = params.get("launch_template")
    if template:
        template = {key: value for key, value in (("LaunchTemplateId", template.get("id")),
                                                  ("LaunchTemplateName", template.get("name")),
                                                  ("Version", template.get("version"))) if value}
    return {
        "image_id": params.get("image_id"),
        "launch_template": template or None,
        "instance_types": list(params["instance_types"]),
        "availability_zones": list(params.get("availability_zones") or []),
        "subnet_ids": list(params.get("subnet_ids") or []),
        "security_group_ids": list(params.get("security_group_ids") or []),
        "key_name": params.get("key_name"),
        "iam_instance_profile": params.get("iam_instance_profile"),
        "user_data": params.get("user_data"),
        "tags": dict(params.get("tags") or {}),
        "fallback": params.get("fallback", True),
        "fallback_on": list(params.get("fallback_on") or DEFAULT_FALLBACK_ON),
        "fallback_action": params.get("fallback_action") or "stop",
        "allocation_strategy": params.get("allocation_strategy") or "price-capacity-optimized",
        "cooldown_seconds": params.get("cooldown", DEFAULT_COOLDOWN_SECONDS),
        "orphan_grace_seconds": params.get("orphan_grace", DEFAULT_ORPHAN_GRACE_SECONDS),
        "region": region,
    }


def _pool_view(state):
    return {"instances": list(state["instances"]) if state else [], "leases": list(state["leases"]) if state else []}


# -- init -------------------------------------------------------------------------------------------------
def _rebuild_from_tags(client, store, size, launch, previous):
    """A state made from what EC2 knows by the pool tag: idle instances, and leases (the refill tags leased
    instances with ec2spot:leased-at). Leases the old file still knows are kept as they were."""
    from . import ec2  # pylint: disable=import-outside-toplevel

    state = new_state(store.pool_name, size, launch)
    old_leases = {lease["id"]: lease for lease in (previous or {}).get("leases", [])}
    for item in ec2.describe_pool_instances(client, store.pool_name, states=("pending", "running")):
        info = ec2.instance_summary(item)
        if ec2.RELEASED_TAG in info["tags"]:
            continue
        running = info["state"] == "running"
        entry = {"id": info["id"], "ip": (info["public_ip"] or info["private_ip"]) if running else None,
                 "public_ip": info["public_ip"] if running else None, "private_ip": info["private_ip"],
                 "type": info["tags"].get(ec2.TYPE_TAG, "spot"), "availability_zone": info["availability_zone"],
                 "subnet_id": None, "instance_type": info["instance_type"],
                 "launched_at": isoformat(info["launch_time"]) if info["launch_time"] else isoformat(utcnow())}
        if info["id"] in old_leases:
            state["leases"].append(old_leases[info["id"]])
        elif ec2.LEASED_TAG in info["tags"]:
            state["leases"].append(dict(entry, leased_at=info["tags"][ec2.LEASED_TAG]))
        else:
            state["instances"].append(entry)
    return state


def init_pool(store, client, size, launch, wait=True, wait_timeout=300, check_mode=False, refill_env=None,
              rebuild=False, sleep=time.sleep, clock=time.monotonic):
    """Create or update the pool and fill it to `size`; with `wait`, until every instance has an address.

    With `rebuild`, a lost or corrupt state file is made again from the pool's tags (a corrupt one is first
    moved aside to `<file>.corrupt-<time>`, never overwritten)."""
    # pylint: disable=import-outside-toplevel
    # The launcher pulls in boto3; get must not import this path.
    from .launcher import ensure_template
    from .launcher import validate_launch
    from .refill import reconcile

    if size < 0:
        raise InvalidRequest("size must be 0 or more, got %d" % size)
    if not launch.get("instance_types"):
        raise InvalidRequest("instance_types must name at least one instance type")
    validate_launch(client, launch)
    corrupt = None
    try:
        existing = store.read()
    except StateFileError as exc:
        if not rebuild:
            raise
        existing, corrupt = None, exc
    old_launch = {k: v for k, v in ((existing or {}).get("launch") or {}).items() if k != "template"}
    spec_changed = rebuild or existing is None or existing["target_size"] != size or old_launch != launch
    if check_mode:
        have = len(existing["instances"]) if existing else 0
        return {"changed": spec_changed or have != size, "launched": [], "terminated": [],
                "would_launch": max(0, size - have), "pool": _pool_view(existing), "counts": counts(existing)}

    launch = dict(launch, template=ensure_template(client, store.pool_name,
                                                   dict(launch, template=(existing or {}).get("launch", {})
                                                        .get("template"))))
    lock = jobcontrol.stop_refill(store) if corrupt is None else None
    try:
        if corrupt is not None:
            aside = "%s.corrupt-%s" % (store.path, utcnow().strftime("%Y%m%dT%H%M%SZ"))
            os.rename(store.path, aside)
            lock = jobcontrol.stop_refill(store)
        with store.transaction() as tx:
            if rebuild:
                tx.state = _rebuild_from_tags(client, store, size, launch, tx.state)
            elif tx.state is None:
                tx.state = new_state(store.pool_name, size, launch)
            else:
                tx.state["target_size"] = size
                tx.state["launch"] = launch
        launched, dropped, retired = [], [], []
        deadline = clock() + wait_timeout
        while True:
            result = reconcile(store, client)
            launched += result.launched + result.replayed
            dropped += result.dropped
            retired += result.retired
            if result.whole or not wait:
                break
            if clock() >= deadline:
                raise PoolError(
                    "pool '%s' has %d ready of %d after wait_timeout=%ss; %d pending"
                    % (store.pool_name, result.counts["ready"], size, wait_timeout, result.counts["pending"]),
                    launched=launched, counts=result.counts,
                )
            sleep(1.0)
        with store.transaction() as tx:
            # A pass went through: whatever stopped the refill job before (credentials, a lost template) is
            # gone, so its error must not keep failing gets and info.
            if tx.state is not None and tx.state["refill"].get("last_error"):
                tx.state["refill"].update(last_error=None, last_error_code=None, last_error_permanent=None)
    finally:
        if lock is not None:
            lock.release()
    state = store.read()
    pool_counts = counts(state)
    if refill_env is not None and (pool_counts["pending"] or pool_counts["fallback"] or pool_counts["ready"] < size):
        # Addresses still to fill in (wait=false), or fallbacks to replace by Spot: the job goes on in the background.
        jobcontrol.start_refill(store, refill_env)
    result = {"changed": bool(spec_changed or launched or dropped or retired), "launched": launched,
              "terminated": retired, "pool": _pool_view(state), "counts": pool_counts,
              "cooldowns": state.get("cooldowns", [])}
    if corrupt is not None:
        result["moved_aside"] = aside
    return result


# -- get --------------------------------------------------------------------------------------------------
# A lease whose holder never learned its id (a get that failed after the write, a CI job killed mid-step) must not
# hold an instance forever: leases expire after a day unless the caller says otherwise (0: never).
DEFAULT_LEASE_TTL = 86400


def _needs_verify(state, verify, verify_max_age, now):
    """Whether this get must ask EC2 about the instance it hands out: always, unless `verify` is off or the
    caller accepts a pool that the refill checked less than `verify_max_age` seconds ago (0: always ask)."""
    if not verify:
        return False
    if not verify_max_age or verify_max_age <= 0:
        return True
    verified_at = parse_time((state.get("refill") or {}).get("verified_at"))
    return verified_at is None or (now - verified_at).total_seconds() > verify_max_age


def new_lease(entry, now, lease_ttl):
    """The lease record of a hand-out: built here and nowhere else."""
    lease = dict(entry, leased_at=isoformat(now))
    if lease_ttl:
        lease["expires_at"] = isoformat(now + datetime.timedelta(seconds=lease_ttl))
    return lease


def _no_pool(store):
    return NoReadyInstance("pool '%s' does not exist (no state file %s); run ec2spot.pool.spot_pool_init"
                           % (store.pool_name, store.path))


def _no_ready(store, pool_counts, refill_error, refill_note, dropped):
    parts = ["pool '%s' has %d ready of %d; %d pending; %d leased" % (
        store.pool_name, pool_counts["ready"], pool_counts["target"], pool_counts["pending"], pool_counts["leased"])]
    if dropped:
        pronoun = "it" if len(dropped) == 1 else "them"
        parts.append("dropped %s: EC2 reports %s not running" % (", ".join(sorted(dropped)), pronoun))
    if refill_error:
        parts.append("refill error: %s" % refill_error)
    if refill_note:
        parts.append(refill_note)
    return NoReadyInstance("; ".join(parts), counts=pool_counts)


class _Claim:
    """What one hand-out transaction found: the lease (or None), and what the caller reports or decides on."""

    def __init__(self):
        self.lease = None
        self.counts = None
        self.refill_error = None
        self.dropped = []
        self.unchecked = []  # no lease yet: the ready entries to ask EC2 about first


def _claim(store, dead, alive, verify, verify_max_age, lease_ttl, check_mode):
    """One transaction, no AWS call: drop the entries EC2 reported dead (`dead`), then lease the first ready entry,
    if no check is needed, or else the first that EC2 has just reported running (`alive`). When a check is needed
    and no ready entry was checked, nothing is leased and `unchecked` names the candidates.

    The lease is this transaction's write, the last step of a get that can fail. The drops are written even when
    nothing can be handed out: what EC2 said must not be rolled back with a failed get."""
    claim = _Claim()
    try:
        with store.transaction() as tx:
            state = tx.state
            if state is None:
                raise _no_pool(store)
            now = utcnow()
            claim.dropped = [entry["id"] for entry in state["instances"] if entry["id"] in dead]
            state["instances"] = [entry for entry in state["instances"] if entry["id"] not in dead]
            ready = [entry for entry in state["instances"] if entry.get("ip")]
            trusted = not _needs_verify(state, verify, verify_max_age, now)
            entry = next((entry for entry in ready if trusted or entry["id"] in alive), None)
            claim.refill_error = (state.get("refill") or {}).get("last_error")
            if entry is not None:
                claim.lease = new_lease(entry, now, lease_ttl)
                state["instances"].remove(entry)
                state["leases"].append(claim.lease)
            else:
                claim.unchecked = [item["id"] for item in ready if item["id"] not in alive]
            claim.counts = counts(state)
            if check_mode:
                tx.state = None  # check mode: leave the file exactly as it is
    except OSError as exc:  # the write failed (a full disk): the transaction wrote nothing, so nothing was leased
        raise PoolError("cannot write the pool file %s: %s; nothing was leased or changed"
                        % (store.path, exc.strerror or exc))
    return claim


def _start_refill_quietly(store, refill_env):
    """Start the refill job; a failure to start it is reported, never raised: it must not undo or fail a get."""
    try:
        started, pid = jobcontrol.start_refill(store, refill_env)
    except (PoolError, OSError) as exc:
        return False, None, "the refill job could not be started: %s" % (getattr(exc, "message", None) or exc)
    return started, pid, None


def get_instance(store, instance_states, address="public", verify=True, verify_max_age=0,
                 lease_ttl=DEFAULT_LEASE_TTL, wait_timeout=0, refill=True, refill_env=None, check_mode=False,
                 sleep=time.sleep, clock=time.monotonic):
    """Hand out a ready instance now; never wait for a launch (unless `wait_timeout` allows it).

    `instance_states(ids)` answers {id: EC2 state name} (one DescribeInstances); it is called outside the lock, for
    the instance about to be handed out only, and when that one is dead, once more for all the other ready ones.
    The lease is then written in a transaction that takes the instance only if it is still idle; the dead are
    dropped in that same transaction, and stay dropped even when nothing is left to hand out."""
    if lease_ttl is None:
        lease_ttl = DEFAULT_LEASE_TTL
    if lease_ttl < 0:
        raise InvalidRequest("lease_ttl must be a number of seconds, or 0 for a lease that never expires; got %d"
                             % lease_ttl)
    deadline = clock() + wait_timeout
    alive, dead, dropped = set(), set(), []
    verified = False
    refill_started = None
    while True:
        claim = _claim(store, dead, alive, verify, verify_max_age, lease_ttl, check_mode)
        dropped += [instance_id for instance_id in claim.dropped if instance_id not in dropped]
        if claim.lease is not None:
            break
        if claim.unchecked:
            # Outside the lock. One id: the common case is one call for one instance. After a dead one, all the
            # other candidates in one call: an instance seldom dies alone (an interruption wave, a pool ended
            # outside it). If another get leases the checked instance meanwhile, the claim passes it over.
            asked = claim.unchecked if dead else claim.unchecked[:1]
            found = instance_states(asked)
            verified = True
            for instance_id in asked:
                (alive if found.get(instance_id) == "running" else dead).add(instance_id)
            continue
        if refill and not check_mode and refill_started is None:
            refill_started = _start_refill_quietly(store, refill_env)
        if clock() >= deadline:
            raise _no_ready(store, claim.counts, claim.refill_error, _refill_note(refill, check_mode, refill_started),
                            dropped)
        alive = set()  # a wait of a second or more: what was running may not be now
        sleep(1.0)
    lease = claim.lease
    warnings = []
    if claim.refill_error:
        warnings.append("the pool's refill job failed: %s" % claim.refill_error)
    refill_result = {"started": False, "pid": None}
    if refill and not check_mode:
        started, pid, problem = _start_refill_quietly(store, refill_env)
        refill_result = {"started": started, "pid": pid}
        if problem:
            refill_result["error"] = problem
            warnings.append("%s; the lease stands, and the next get or spot_pool_init starts the job" % problem)
    ip = lease.get("private_ip") if address == "private" else (lease.get("public_ip") or lease.get("ip"))
    return {
        "changed": True,
        "ip": ip,
        "public_ip": lease.get("public_ip"),
        "private_ip": lease.get("private_ip"),
        "instance_id": lease["id"],
        "type": lease.get("type"),
        "availability_zone": lease.get("availability_zone"),
        "instance_type": lease.get("instance_type"),
        "leased_at": lease["leased_at"],
        "expires_at": lease.get("expires_at"),
        "verified": verified,
        "dropped": sorted(dropped),
        "counts": claim.counts,
        "refill": refill_result,
        "warnings": warnings,
    }


def _refill_note(refill, check_mode, refill_started):
    """What the failure message says about the refill job that this get (re)started, or did not."""
    if check_mode:
        return "check mode: the refill job was not started"
    if not refill:
        return "refill=false: the refill job was not started"
    started, pid, problem = refill_started
    if problem:
        return problem
    if started:
        return "the refill job was started (pid %d) to make the pool whole" % pid
    return "the refill job is running"


# -- release ----------------------------------------------------------------------------------------------
def release_instance(store, client, instance_id=None, fallback_action="stop", check_mode=False):
    """End a lease: terminate a Spot instance; stop (or terminate) a fallback."""
    from . import ec2  # pylint: disable=import-outside-toplevel

    state = store.read()
    leases = state["leases"] if state else []
    if instance_id is None:
        if not leases:
            return {"changed": False, "instance_id": None, "action": "none",
                    "msg": "pool '%s' has no lease to release" % store.pool_name, "counts": counts(state)}
        lease = max(enumerate(leases), key=lambda item: (item[1].get("leased_at") or "", item[0]))[1]
    else:
        lease = next((item for item in leases if item["id"] == instance_id), None)
        if lease is None:
            raise InvalidRequest("instance %s is not leased from pool '%s'; its leases are: %s"
                                 % (instance_id, store.pool_name, ", ".join(item["id"] for item in leases) or "none"))
    action = "terminate" if lease.get("type") != "fallback" or fallback_action == "terminate" else "stop"
    result = {"changed": True, "instance_id": lease["id"], "type": lease.get("type"), "action": action}
    if check_mode:
        result["counts"] = counts(state)
        return result
    try:
        if action == "terminate":
            ec2.terminate_instances(client, [lease["id"]])
        else:
            ec2.stop_instances(client, [lease["id"]])
            # Kept on purpose: the refill's orphan sweep must leave it alone; terminate_pool still ends it.
            ec2.create_tags(client, [lease["id"]], {ec2.RELEASED_TAG: isoformat(utcnow())})
    except ec2.Ec2Error as exc:
        if exc.code != "InvalidInstanceID.NotFound":  # already gone: the lease still ends
            raise
    with store.transaction() as tx:
        if tx.state is not None:
            tx.state["leases"] = [item for item in tx.state["leases"] if item["id"] != lease["id"]]
            result["counts"] = counts(tx.state)
    return result


# -- terminate --------------------------------------------------------------------------------------------
def _classify(state, tagged):
    """id -> 'spot' | 'fallback' for every instance of the pool: in the file, leased, or only tagged."""
    kinds = {}
    for entry in (state["instances"] + state["leases"]) if state else []:
        kinds[entry["id"]] = entry.get("type") or "spot"
    orphans = []
    for item in tagged:
        if item["id"] not in kinds:
            orphans.append(item["id"])
            kinds[item["id"]] = item["tags"].get("ec2spot:type", "spot")
    return kinds, orphans


def terminate_pool(store, client, fallback_action="stop", include_orphans=True, check_mode=False):
    """End the pool: stop its refill job, terminate Spot, stop (or terminate) fallbacks, clear the state."""
    from . import ec2  # pylint: disable=import-outside-toplevel

    warnings = []
    corrupt = None
    try:
        state = store.read()
    except StateFileError as exc:
        state, corrupt = None, exc
        warnings.append("%s The instances were found by their tag instead; the file was left in place." % exc.message)

    def plan(current):
        tagged = [ec2.instance_summary(item) for item in ec2.describe_pool_instances(client, store.pool_name)] \
            if include_orphans or current is None else []
        live = {item["id"]: item["state"] for item in tagged}
        kinds, orphans = _classify(current, tagged)
        to_terminate, to_stop = [], []
        for instance_id, kind in sorted(kinds.items()):
            if kind == "fallback" and fallback_action == "stop":
                if live.get(instance_id, "running") in ("pending", "running"):
                    to_stop.append(instance_id)
            elif live.get(instance_id, "running") != "terminated":
                to_terminate.append(instance_id)
        return to_terminate, to_stop, orphans

    if check_mode:
        to_terminate, to_stop, orphans = plan(state)
        return {"changed": bool(to_terminate or to_stop or state), "terminated": to_terminate, "stopped": to_stop,
                "orphans": orphans, "warnings": warnings}
    lock = jobcontrol.stop_refill(store) if corrupt is None else None
    try:
        state = store.read() if corrupt is None else None  # the job may have added instances before it stopped
        to_terminate, to_stop, orphans = plan(state)
        try:
            ec2.terminate_instances(client, to_terminate)
            ec2.stop_instances(client, to_stop)
        except ec2.Ec2Error as exc:
            if exc.code != "InvalidInstanceID.NotFound":
                raise
        template = ((state or {}).get("launch") or {}).get("template") or {}
        if template.get("owned"):
            ec2.delete_launch_template(client, template["LaunchTemplateId"])
        if corrupt is None:
            with store.transaction() as tx:
                if tx.state is not None:
                    tx.delete()
    finally:
        if lock is not None:
            lock.release()
    return {"changed": bool(to_terminate or to_stop or state), "terminated": to_terminate, "stopped": to_stop,
            "orphans": orphans, "warnings": warnings}


# -- info -------------------------------------------------------------------------------------------------
def pool_info(store, make_client=None, verify=False):
    """The pool as the file says it (and, with `verify`, what EC2 says about each instance). Changes nothing."""
    state = store.read()
    now = utcnow()
    result = {
        "changed": False,
        "exists": state is not None,
        "path": store.path,
        "target_size": state["target_size"] if state else 0,
        "launch": state["launch"] if state else {},
        "pool": (state or {}).get("instances", []),
        "leases": (state or {}).get("leases", []),
        "counts": counts(state),
        "refill": jobcontrol.refill_status(store, state),
        "cooldowns": [c for c in (state or {}).get("cooldowns", []) if (parse_time(c.get("until")) or now) > now],
        "pending_launches": [p["token"] for p in (state or {}).get("pending_launches", [])],
    }
    for lease in result["leases"]:
        lease["expired"] = bool(lease.get("expires_at")) and parse_time(lease["expires_at"]) <= now
    if verify and state:
        from . import ec2  # pylint: disable=import-outside-toplevel

        entries = result["pool"] + result["leases"]
        found = {item["InstanceId"]: item["State"]["Name"]
                 for item in ec2.describe_instances(make_client(), [entry["id"] for entry in entries])}
        for entry in entries:
            entry["ec2_state"] = found.get(entry["id"], "absent")
        result["dead"] = [entry["id"] for entry in entries if entry["ec2_state"] not in ("pending", "running")]
    return result
