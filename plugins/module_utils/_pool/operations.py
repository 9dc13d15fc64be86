# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the five modules do, as plain functions of a pool store (store.PoolStore), an EC2 client and values.

Rules every function keeps: a store's change is never held open around an AWS call or a spawn; a failure before
the write changes nothing; check mode reads but never writes or launches.
`get_instance` and its imports stay free of boto3: it receives a factory for the client it rarely needs.
"""

from __future__ import annotations

import collections
import time

from . import jobcontrol
from .domain.defaults import ALLOCATION_STRATEGY
from .domain.defaults import COOLDOWN_SECONDS
from .domain.defaults import FALLBACK_ACTION
from .domain.defaults import ORPHAN_GRACE_SECONDS
from .domain.end_plan import EndPlan
from .domain.end_plan import fallback_action_of
from .domain.end_plan import plan_end
from .domain.entries import address_of
from .domain.entries import counts
from .domain.entries import entry_from_instance
from .domain.entries import is_ready
from .domain.entries import is_whole
from .domain.errors import InvalidRequest
from .domain.errors import NoReadyInstance
from .domain.errors import PoolError
from .domain.errors import StateFileError
from .domain.pool import new_state
from .domain.timefmt import parse_time
from .domain.timefmt import utcnow
from .stores.base import change_pool


def launch_settings(params, region):
    """The part of init's options that every later launch repeats. Credentials are never part of it."""
    # Only spot_pool_init calls this, and it imports the launcher anyway; get's path never does.
    from .launcher import DEFAULT_FALLBACK_ON  # pylint: disable=import-outside-toplevel

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
        "fallback_action": params.get("fallback_action") or FALLBACK_ACTION,
        "allocation_strategy": params.get("allocation_strategy") or ALLOCATION_STRATEGY,
        "cooldown_seconds": params.get("cooldown", COOLDOWN_SECONDS),
        "orphan_grace_seconds": params.get("orphan_grace", ORPHAN_GRACE_SECONDS),
        "region": region,
    }


DEFAULT_MAX_SIZE = 100
# How long init waits, by default, for every instance to run and have an address.
DEFAULT_INIT_WAIT_TIMEOUT = 300
# The collection's own tag keys (ec2spot:pool, ec2spot:type, ec2spot:leased-at, ...): the sweep and the rebuild
# read them, so a user tag in this namespace would be taken for the pool's own bookkeeping.
RESERVED_TAG_PREFIX = "ec2spot:"


class InitRequest(collections.namedtuple("InitRequest", [
        "size", "launch", "wait", "wait_timeout", "max_size", "rebuild", "force_rebuild", "pool_id", "create_table",
        "check_mode"], defaults=(True, DEFAULT_INIT_WAIT_TIMEOUT, DEFAULT_MAX_SIZE, False, False, None, True, False))):
    """What spot_pool_init asks for (init_request makes it from the module's options), as init_pool reads it.

    size: the number of instances the pool keeps. launch: launch_settings() (what every later launch repeats).
    wait, wait_timeout: whether init waits, and how long, for every instance to run and have an address.
    max_size: the guard against a typo in size. rebuild: make a lost or damaged pool again from EC2's tags;
    force_rebuild: also move aside a file that is not recognisably this pool's. pool_id: the pool id to act on
    (a rebuild of a lost pool names it; otherwise it must agree with the store's). create_table: the store may make
    its place (the DynamoDB table). check_mode: read, never write or launch."""

    __slots__ = ()


def init_request(params, region, check_mode=False):
    """The InitRequest of spot_pool_init's options (`params`, as the module has them) in `region`."""
    return InitRequest(size=params["size"], launch=launch_settings(params, region), wait=params["wait"],
                       wait_timeout=params["wait_timeout"], max_size=params["max_size"], rebuild=params["rebuild"],
                       force_rebuild=params["force_rebuild"], pool_id=params["pool_id"],
                       create_table=params["create_table"], check_mode=check_mode)


def require_non_negative(**values):
    """Refuse a negative number of seconds (or instances): it would mean "already over" everywhere it is used."""
    for name, value in sorted(values.items()):
        if value is not None and value < 0:
            raise InvalidRequest("%s must be 0 or more, got %d" % (name, value))


def check_init_request(size, launch, wait_timeout=0, max_size=DEFAULT_MAX_SIZE):
    """The checks of init's options that need no AWS call. Raises InvalidRequest before anything is changed."""
    require_non_negative(size=size, wait_timeout=wait_timeout, cooldown=launch.get("cooldown_seconds"),
                         orphan_grace=launch.get("orphan_grace_seconds"))
    if max_size is None or max_size < 1:
        raise InvalidRequest("max_size must be 1 or more, got %s" % (max_size,))
    if size > max_size:
        raise InvalidRequest("size %d is above max_size %d (a guard against typos); set max_size to %d or more "
                             "to allow a pool that large" % (size, max_size, size))
    reserved = sorted(key for key in (launch.get("tags") or {}) if str(key).lower().startswith(RESERVED_TAG_PREFIX))
    if reserved:
        raise InvalidRequest("tags: %s %s in the collection's own namespace '%s' (the pool's bookkeeping uses it); "
                             "rename %s" % (", ".join(reserved), "is" if len(reserved) == 1 else "are",
                                            RESERVED_TAG_PREFIX, "it" if len(reserved) == 1 else "them"))
    if not launch.get("instance_types"):
        raise InvalidRequest("instance_types must name at least one instance type")


def _pool_view(state):
    return {"instances": list(state["instances"]) if state else [], "leases": list(state["leases"]) if state else []}


# -- init -------------------------------------------------------------------------------------------------
def _rebuild_from_tags(named, store, size, launch, previous, pool_id):
    """A state made from what EC2 knows by the pool's id: idle instances, and leases (an instance tagged
    ec2spot:leased-at). Leases the store still knows (`previous`: what it holds after move_aside) are kept as they
    were."""
    from ._aws import ec2  # pylint: disable=import-outside-toplevel
    from .domain import identity  # pylint: disable=import-outside-toplevel

    state = new_state(store.pool_name, size, launch)
    state["pool_id"] = pool_id
    old_leases = {lease["id"]: lease for lease in (previous or {}).get("leases", [])}
    for info in identity.mine(named, store.pool_name, pool_id, identity.listed_ids(previous)):
        if ec2.RELEASED_TAG in info["tags"] or info["state"] not in ("pending", "running"):
            continue
        entry = entry_from_instance(dict(info, subnet_id=None), info["tags"].get(ec2.TYPE_TAG), utcnow())
        if info["id"] in old_leases:
            # What the store kept of it wins; the tags fill in what a lease salvaged from damage lacks.
            state["leases"].append(dict(entry, **old_leases[info["id"]]))
        elif ec2.LEASED_TAG in info["tags"]:
            state["leases"].append(dict(entry, leased_at=info["tags"][ec2.LEASED_TAG]))
        else:
            state["instances"].append(entry)
    return state


def _identify(store, client, existing, rebuild, requested, region, size, corrupt=None):
    """The pool id init works with, and what EC2 knows by the pool's name (None unless it was asked).

    A new pool (no state file, or a rebuild that finds no pool of its name) gets a new id, once EC2 shows no
    other live pool of that name (_check_name_free). The check reads only; it runs before anything is written.
    `corrupt`: the read's StateFileError, if any (a rebuild of a damaged pool of this store may take the only pool
    id of its name; without one, only `requested`: identity.pool_id_for_init)."""
    from ._aws import ec2  # pylint: disable=import-outside-toplevel
    from .domain import identity  # pylint: disable=import-outside-toplevel

    known = (existing or {}).get("pool_id")
    identity.check_pool_id(requested, known, store.location,
                           "; leave pool_id out, or use the state file of pool %s" % (requested,))
    if existing is not None and not rebuild:
        return known, None
    named = [ec2.instance_summary(item) for item in ec2.describe_pool_instances(client, store.pool_name)]
    pool_id = identity.pool_id_for_init(named, store.pool_name, store.location, known, requested, rebuild,
                                        corrupt.kind if corrupt is not None else None)
    if not identity.known_to_ec2(named, store.pool_name, pool_id):
        # A pool that EC2 does not know yet: its name must be free.
        pool_id = pool_id or identity.new_pool_id()
        _check_name_free(store, client, named, existing, pool_id, rebuild, region, size)
    return pool_id, named


def _check_name_free(store, client, named, existing, pool_id, rebuild, region, size):
    """Refuse a new pool (`pool_id`) whose name another live pool uses: two pools of one name, each with its own
    controller, were the way one controller ended the other's instances. What EC2 shows is checked against the
    store read once more: another init may have made the pool there after `existing` was read and launched before
    EC2 was asked (_CreatedMeanwhile, as _apply_init says it for the other timing; `size` is this run's, for its
    message)."""
    from ._aws import ec2  # pylint: disable=import-outside-toplevel
    from .domain import identity  # pylint: disable=import-outside-toplevel

    others = identity.other_pools(named, ec2.describe_pool_templates(client, store.pool_name), store.pool_name,
                                  pool_id, identity.listed_ids(existing))
    if others and not rebuild:
        # Read again only here: an init that finds the name free pays no second read. A rebuild takes over
        # whatever the store holds, so a pool made meanwhile is no reason for it to stop.
        stored = _read_again(store)
        others = identity.colliding(others, stored)
        if not others:
            raise _created_meanwhile(store, stored, size)
    if others:
        raise identity.collision_error(store.pool_name, region, others)


def _read_again(store):
    """The pool as the store holds it now, None when there is none; a table still missing is no pool (another
    controller's init makes the table before it writes the pool)."""
    try:
        return store.read()
    except PoolError as exc:
        if exc.details.get("error_code") == "ResourceNotFoundException":
            return None
        raise


def _rebuildable(error, rebuild, force_rebuild):
    """Whether init may move this unreadable file aside: a damaged file of this pool with `rebuild`; a file that
    is not recognisably this pool's only with `force_rebuild` (it may be the user's own file that pool_file names
    by mistake); a file or directory others could change, or a link, never."""
    return (error.kind == "damaged" and (rebuild or force_rebuild)) or (error.kind == "foreign" and force_rebuild)


def init_pool(store, client, request, refill_env=None, quotas_client=None, sleep=time.sleep, clock=time.monotonic):
    """Create or update the pool and fill it to `request.size` (an InitRequest); with `wait`, until every instance
    has an address.

    With `rebuild`, a lost or damaged state file is made again from the pool's tags (a damaged one is first
    moved aside to `<file>.corrupt-<time>`, never overwritten): the instances of its pool id, which `pool_id`
    gives, or for a damaged file the only pool id tagged with the name (identity.pool_id_from_tags).
    `force_rebuild`: for a file that is not recognisably this pool's. Anything else unreadable is an error, and
    nothing is moved or written. Before anything is written or launched, the options are checked, and what would
    be launched against the account's limits (`quotas_client`: a Service Quotas client, for the vCPU quotas). The
    store's place (the DynamoDB store's table) is checked first and made, with `create_table`, only once nothing
    else refused the request; check mode never makes it. `refill_env`: the environment of the refill job init
    starts when the pool is not whole yet (None: none is started)."""
    # The launcher pulls in boto3; get must not import this path.
    from .launcher import validate_launch  # pylint: disable=import-outside-toplevel

    size, launch = request.size, request.launch
    check_init_request(size, launch, request.wait_timeout, request.max_size)
    validate_launch(client, launch)
    store_ready, existing, corrupt = _read_for_init(store, request)
    rebuild = request.rebuild or request.force_rebuild
    warnings = []
    have = len(existing["instances"]) if existing else 0
    _check_account_limits(store, client, quotas_client, launch, size - have, warnings)
    pool_id, named = _identify(store, client, existing, rebuild, request.pool_id, launch.get("region"), size, corrupt)
    old_launch = {k: v for k, v in ((existing or {}).get("launch") or {}).items() if k != "template"}
    spec_changed = rebuild or existing is None or existing["target_size"] != size or old_launch != launch
    if request.check_mode:
        return {"changed": spec_changed or have != size or not store_ready, "launched": [], "terminated": [],
                "would_launch": max(0, size - have), "pool": _pool_view(existing), "counts": counts(existing),
                "warnings": warnings, "pool_id": pool_id}
    made = []  # the template this run makes, if any: nothing refers to it until the pool is written
    existing, pool_id, launch = _ready_to_write(store, client, request, store_ready, existing, pool_id, made)
    try:
        lock, aside = _write_pool(store, corrupt, request.force_rebuild,
                                  lambda tx: _apply_init(tx, store, existing, size, launch, rebuild, named, pool_id))
    except Exception as exc:
        # Not written (another init created the pool meanwhile, a state directory refused, a failed write): what
        # this run made in EC2 goes, or it would block the pool's name for every later init.
        _remove_made_templates(client, made, exc)
        raise
    launched, dropped, retired = _fill(store, client, lock, request, sleep, clock)
    result = _init_result(store, size, refill_env, bool(spec_changed or launched or dropped or retired), launched,
                          retired, warnings)
    if corrupt is not None and aside:
        result["moved_aside"] = aside
    return result


def _read_for_init(store, request):
    """(whether the store's place is ready, the pool it holds or None, the StateFileError that init may rebuild
    past or None). A table of another shape, a missing one that may not be made, no permission: refused here,
    before anything else."""
    store_ready = store.prepare(create=request.create_table, dry_run=True)
    try:
        return store_ready, (store.read() if store_ready else None), None
    except StateFileError as exc:
        if not _rebuildable(exc, request.rebuild, request.force_rebuild):
            raise
        return store_ready, None, exc


def _check_account_limits(store, client, quotas_client, launch, more, warnings):
    """Refuse (InvalidRequest) `more` instances that the account's limits would not allow; notes go to `warnings`."""
    from .launcher import account_limit_problem  # pylint: disable=import-outside-toplevel

    problem = account_limit_problem(client, quotas_client, launch, more, warnings.append)
    if problem:
        raise InvalidRequest("pool '%s': %s" % (store.pool_name, problem), warnings=warnings)


def _ready_to_write(store, client, request, store_ready, existing, pool_id, made):
    """What init does before it writes: make the store's place, adopt a pool id for a pool made before pool ids
    (adopt_pool_id, before its template is named), and ensure the pool's launch template (one it makes is added to
    `made`). Returns (the pool as it now is, its pool id, the launch settings with the template)."""
    # pylint: disable=import-outside-toplevel
    from .launcher import ensure_template
    from .refill import adopt_pool_id

    if not store_ready:
        store.prepare(create=request.create_table)
    if existing is not None and not existing.get("pool_id"):
        existing = adopt_pool_id(store, client, existing, pool_id)
        pool_id = existing["pool_id"]
    previous = dict(request.launch, template=(existing or {}).get("launch", {}).get("template"))
    launch = dict(request.launch, template=ensure_template(client, store.pool_name, pool_id, previous, made=made))
    return existing, pool_id, launch


def _fill(store, client, lock, request, sleep, clock):
    """Refill passes under init's `lock` (released at the end): one, or with `request.wait` until the pool is whole
    (PoolError after wait_timeout). Returns what they launched, dropped and retired, as three id lists."""
    # pylint: disable=import-outside-toplevel
    from .refill import LeaseKeeper
    from .refill import reconcile

    try:
        launched, dropped, retired = [], [], []
        deadline = clock() + request.wait_timeout
        keeper = LeaseKeeper.of(store, lock)  # a wait may outlast the lease: renewed while it lasts
        while True:
            result = reconcile(store, client, heartbeat=keeper.beat)
            launched += result.launched + result.replayed
            dropped += result.dropped
            retired += result.retired
            if result.whole or not request.wait:
                break
            if clock() >= deadline:
                raise PoolError(
                    "pool '%s' has %d ready of %d after wait_timeout=%ss; %d pending"
                    % (store.pool_name, result.counts["ready"], request.size, request.wait_timeout,
                       result.counts["pending"]),
                    launched=launched, counts=result.counts,
                )
            sleep(1.0)
        _clear_refill_error(store)
    finally:
        if lock is not None:
            lock.release()
    return launched, dropped, retired


def _init_result(store, size, refill_env, changed, launched, retired, warnings):
    """init's result, from the pool as written; starts the refill job if the pool is not whole."""
    state = store.read()
    pool_counts = counts(state)
    if refill_env is not None and (pool_counts["pending"] or pool_counts["fallback"] or pool_counts["ready"] < size):
        # Addresses still to fill in (wait=false), or fallbacks to replace by Spot: the job goes on in the background.
        jobcontrol.start_refill(store, refill_env)
    return {"changed": changed, "launched": launched, "terminated": retired, "pool": _pool_view(state),
            "counts": pool_counts, "pool_id": state.get("pool_id"), "cooldowns": state.get("cooldowns", []),
            "warnings": warnings}


def _write_pool(store, corrupt, force_rebuild, change):
    """init's write: stop the refill job (taking its lock), move a damaged file aside first if there is one, then
    change_pool(store, change). Returns (the refill lock or None, where the file was moved or None); on failure
    the lock is released and the error raised."""
    lock = jobcontrol.stop_refill(store) if corrupt is None else None
    aside = None
    try:
        if corrupt is not None:
            # Under the pool's lock, after checking once more that it is the kind of file we may move.
            aside = store.move_aside(allow_foreign=force_rebuild)
            lock = jobcontrol.stop_refill(store)
        change_pool(store, change)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock, aside


def _remove_made_templates(client, made, error):
    """Delete the launch templates an init made before it failed; one that cannot be deleted is named in the
    error's details (`templates_left`), which is raised anyway."""
    from ._aws import ec2  # pylint: disable=import-outside-toplevel

    for template_id in made:
        try:
            ec2.delete_launch_template(client, template_id)
        except PoolError:
            if isinstance(error, PoolError):
                error.details.setdefault("templates_left", []).append(template_id)


class _CreatedMeanwhile(PoolError):
    """Another spot_pool_init created the pool after this one read it (see _apply_init)."""


def _created_meanwhile(store, state, size):
    """The error of an init whose pool another init created (`state`, as read) while it ran."""
    return _CreatedMeanwhile(
        "pool '%s' was created by another spot_pool_init while this one ran (pool id %s, size %d, in %s): this "
        "run wrote and launched nothing; run it again to give the pool size %d"
        % (store.pool_name, state.get("pool_id"), state["target_size"], store.location, size),
        pool_id=state.get("pool_id"), counts=counts(state))


def _apply_init(tx, store, existing, size, launch, rebuild, named, pool_id):
    """init's change of the pool, a function of `tx.state` (change_pool may run it again after a conflict).

    A pool that another spot_pool_init created after this one read (two controllers, or two runs, at once) is not
    taken over: it has its own pool id and launch template. This run fails and writes nothing; the other one's
    result stands, and a second run applies this one's options to it."""
    if rebuild:
        tx.state = _rebuild_from_tags(named, store, size, launch, tx.state, pool_id)
    elif tx.state is None:
        tx.state = new_state(store.pool_name, size, launch)
        tx.state["pool_id"] = pool_id
    elif existing is None or (existing.get("pool_id") and tx.state.get("pool_id") != existing.get("pool_id")):
        raise _created_meanwhile(store, tx.state, size)
    else:
        tx.state["target_size"] = size
        tx.state["launch"] = launch


def _clear_refill_error(store):
    """A pass went through: whatever stopped the refill job before (credentials, a lost template) is gone, so its
    error must not keep failing gets and info."""
    def clear(tx):
        if tx.state is not None and tx.state["refill"].get("last_error"):
            tx.state["refill"].update(last_error=None, last_error_code=None, last_error_permanent=None)

    change_pool(store, clear)


# -- reconcile --------------------------------------------------------------------------------------------
# How long reconcile with wait=true waits, by default, for the pool to be whole (and for a running refill job).
DEFAULT_RECONCILE_WAIT_TIMEOUT = 300
# What a pass did, as ReconcileResult names it: the lists reconcile returns (summed over its passes).
RECONCILE_LISTS = ("launched", "reused", "replayed", "dropped", "interrupted", "expired", "leases_tagged",
                   "orphans_marked", "orphans_terminated", "retired", "launch_errors")
REFILL_RUNNING = "the refill job is running; it does the same work"


def _reconcile_result(state, passes, done, refill_running, msg):
    pool_counts = counts(state)
    result = {"changed": any(value for key, value in done.items() if key not in ("launch_errors", "interrupted")),
              "passes": passes, "counts": pool_counts, "whole": is_whole(pool_counts),
              "refill_running": refill_running, "pool_id": (state or {}).get("pool_id"), "msg": msg}
    result.update(done)
    return result


def _addressed(before, after):
    """Ids of idle entries that had no address in `before` and have one in `after` (both pool states)."""
    waiting = {entry["id"] for entry in before["instances"] if not is_ready(entry)}
    return sorted(entry["id"] for entry in (after or {}).get("instances", []) if entry["id"] in waiting
                  and is_ready(entry))


def reconcile_pool(store, client, wait=False, wait_timeout=DEFAULT_RECONCILE_WAIT_TIMEOUT, check_mode=False,
                   sleep=time.sleep, clock=time.monotonic):
    """One refill pass (refill.reconcile) over an existing pool, or with `wait`, passes until it is whole.

    The pass holds the pool's refill lock, as the refill job does, so the two never run at once. When the job
    holds it, reconcile without `wait` changes nothing and says so (REFILL_RUNNING: a schedule that fires while
    the job works must neither fail nor stop it); with `wait`, it waits for the job, within `wait_timeout`. The
    lock is let go between passes, so init and terminate (which stop the job and take the lock) are not kept
    waiting by a long wait. Check mode reads the pool and EC2 (one DescribeInstances) and returns the `plan`
    (refill_plan.plan_report); it writes, launches, tags and creates nothing. A pool that does not exist is an
    error, and nothing is created for it."""
    # pylint: disable=import-outside-toplevel
    # The refill pulls in boto3 and the launcher; get must not import this path.
    from .refill import preview
    from .domain.refill_plan import report_changes

    require_non_negative(wait_timeout=wait_timeout)
    state = store.read()
    if state is None:
        raise InvalidRequest("pool '%s' does not exist (no state file %s): nothing to reconcile; create it with "
                             "ec2spot.pool.spot_pool_init" % (store.pool_name, store.location))
    lock = store.refill_lock()
    done = {key: [] for key in RECONCILE_LISTS}
    done["addressed"] = []
    if check_mode:
        plan = preview(store, client, state)
        result = _reconcile_result(state, 0, done, lock.is_held_elsewhere(),
                                   "check mode: the plan of one pass, nothing done")
        result.update(changed=report_changes(plan), plan=plan)
        return result
    deadline = clock() + wait_timeout
    passes = 0
    while True:
        if not lock.acquire(blocking=False):
            if not wait:
                return _reconcile_result(state, passes, done, True,
                                         "pool '%s': %s; nothing done" % (store.pool_name, REFILL_RUNNING))
            _wait_for_the_job(store, lock, max(0.0, deadline - clock()), wait_timeout, passes)
        before, outcome = _locked_pass(store, client, lock)
        passes += 1
        state = store.read() or before
        for key in RECONCILE_LISTS:
            done[key] += getattr(outcome, key)
        done["addressed"] += [item for item in _addressed(before, state) if item not in done["addressed"]]
        if is_whole(outcome.counts) or not wait:
            break
        if clock() >= deadline:
            raise PoolError("pool '%s' has %d ready of %d after wait_timeout=%ss; %d pending"
                            % (store.pool_name, outcome.counts["ready"], outcome.counts["target"], wait_timeout,
                               outcome.counts["pending"]), passes=passes, counts=outcome.counts, **done)
        sleep(1.0)
    _clear_refill_error(store)
    state = store.read() or state
    return _reconcile_result(state, passes, done, False,
                             "pool '%s': %d pass%s, %d ready of %d" % (
                                 store.pool_name, passes, "" if passes == 1 else "es", counts(state)["ready"],
                                 counts(state)["target"]))


def _wait_for_the_job(store, lock, timeout, wait_timeout, passes):
    """Take the refill `lock` that the job holds, waiting up to `timeout` seconds; PoolError if it is still held
    (`wait_timeout` and `passes`, the passes done so far, for the error)."""
    if not lock.acquire(timeout=timeout):
        raise PoolError("pool '%s': the refill job still held the pool's refill lock after wait_timeout=%ss; "
                        "it does the same work (see %s), or run again with a longer wait_timeout"
                        % (store.pool_name, wait_timeout, store.refill_log_path()),
                        refill_running=True, passes=passes, counts=counts(store.read()))


def _locked_pass(store, client, lock):
    """One refill pass under the refill `lock` (taken by the caller, released here): (the pool before it, its
    ReconcileResult). A pool terminated meanwhile raises PoolGone, and the lock made for it is removed."""
    # pylint: disable=import-outside-toplevel
    from .refill import LeaseKeeper
    from .refill import PoolGone
    from .refill import reconcile

    try:
        before = store.read()
        try:
            if before is None:
                raise PoolGone("pool '%s' was terminated during the reconcile" % store.pool_name)
            outcome = reconcile(store, client, heartbeat=LeaseKeeper.of(store, lock).beat)
        except PoolGone:
            lock.remove()  # made for a pool that no longer exists: nothing may be left of it
            raise
    finally:
        lock.release()
    return before, outcome


# -- get --------------------------------------------------------------------------------------------------
# A lease whose holder never learned its id (a get that failed after the write, a CI job killed mid-step) must not
# hold an instance forever: leases expire after a day unless the caller says otherwise (0: never).
DEFAULT_LEASE_TTL = 86400


def _no_pool(store):
    return NoReadyInstance("pool '%s' does not exist (no state file %s); run ec2spot.pool.spot_pool_init"
                           % (store.pool_name, store.location))


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


def _start_refill_quietly(store, refill_env):
    """Start the refill job; a failure to start it is reported, never raised: it must not undo or fail a get.
    Returns (started, pid, problem, what the refill lease says of the last job's end: jobcontrol.exit_note)."""
    lock = store.refill_lock()
    try:
        started, pid = jobcontrol.start_refill(store, refill_env, lock=lock)
    except (PoolError, OSError) as exc:
        return False, None, "the refill job could not be started: %s" % (getattr(exc, "message", None) or exc), None
    return started, pid, None, jobcontrol.lease_exit_note(lock, cached=True)


def get_instance(store, instance_states, address="public", verify=True, verify_max_age=0,
                 lease_ttl=DEFAULT_LEASE_TTL, wait_timeout=0, refill=True, refill_env=None, check_mode=False,
                 sleep=time.sleep, clock=time.monotonic):
    """Hand out a ready instance now; never wait for a launch (unless `wait_timeout` allows it).

    `instance_states(ids)` answers {id: EC2 state name} (one DescribeInstances); it is called outside the lock, for
    the instance about to be handed out only, and when that one is dead, once more for all the other ready ones.
    The lease is then written in a transaction that takes the instance only if it is still idle; the dead are
    dropped in that same transaction, and stay dropped even when nothing is left to hand out."""
    require_non_negative(wait_timeout=wait_timeout, verify_max_age=verify_max_age)
    if lease_ttl is None:
        lease_ttl = DEFAULT_LEASE_TTL
    if lease_ttl < 0:
        raise InvalidRequest("lease_ttl must be a number of seconds, or 0 for a lease that never expires; got %d"
                             % lease_ttl)

    def claim_ready(dead, alive):
        # One store call: the drops and the lease in one atomic step, the last step of a get that can fail.
        return store.claim_ready(dead, alive, lease_ttl, verify=verify, verify_max_age=verify_max_age,
                                 check_mode=check_mode)

    claim, verified, dropped = _claim(store, instance_states, claim_ready, (refill, refill_env, check_mode),
                                      clock() + wait_timeout, sleep, clock)
    lease = claim.lease
    warnings = []
    if claim.refill_error:
        warnings.append("the pool's refill job failed: %s" % claim.refill_error)
    refill_result = {"started": False, "pid": None}
    if refill and not check_mode:
        refill_result = _refill_after_get(store, refill_env, claim.refill_error, warnings)
    return {
        "changed": True,
        "ip": address_of(lease, address),
        "public_ip": lease.get("public_ip"),
        "private_ip": lease.get("private_ip"),
        "instance_id": lease["id"],
        "lease_id": lease["lease_id"],
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


def _claim(store, instance_states, claim_ready, refill_options, deadline, sleep, clock):
    """The store's claim that holds a lease: (claim, whether EC2 was asked, the ids dropped as dead).

    `claim_ready(dead, alive)` is asked again after each check of the candidates it left unchecked, and once a
    second until `deadline` while nothing is ready: then the refill job is started once (`refill_options`: get's
    refill, refill_env and check_mode), and NoReadyInstance says what became of it."""
    refill, refill_env, check_mode = refill_options
    alive, dead, dropped = set(), set(), []
    verified = False
    refill_started = None
    while True:
        claim = claim_ready(dead, alive)
        if claim is None:
            raise _no_pool(store)
        dropped += [instance_id for instance_id in claim.dropped if instance_id not in dropped]
        if claim.lease is not None:
            return claim, verified, dropped
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


def _refill_after_get(store, refill_env, refill_error, warnings):
    """Start the refill job after a lease was written; its result's `refill` (what went wrong goes to `warnings`:
    the lease stands whatever happens here). `refill_error`: the pool's, already warned about."""
    started, pid, problem, exited = _start_refill_quietly(store, refill_env)
    refill_result = {"started": started, "pid": pid}
    if exited and not refill_error:
        refill_result["last_error"] = exited
        warnings.append("the pool's refill job failed: %s" % exited)
    if problem:
        refill_result["error"] = problem
        warnings.append("%s; the lease stands, and the next get or spot_pool_init starts the job" % problem)
    return refill_result


def _refill_note(refill, check_mode, refill_started):
    """What the failure message says about the refill job that this get (re)started, or did not."""
    if check_mode:
        return "check mode: the refill job was not started"
    if not refill:
        return "refill=false: the refill job was not started"
    started, pid, problem, exited = refill_started
    if exited:
        then = "a new one was started (pid %s)" % pid if started else "the next get starts a new one"
        problem = "%s; %s" % (exited, problem or then)
    if problem:
        return problem
    if started:
        return "the refill job was started (pid %d) to make the pool whole" % pid
    return "the refill job is running"


# -- release ----------------------------------------------------------------------------------------------
LATEST = "latest"


def _nothing_released(store, state, why):
    return {"changed": False, "instance_id": None, "action": "none", "counts": counts(state),
            "msg": "nothing released from pool '%s': %s" % (store.pool_name, why)}


class NothingToRelease(Exception):
    """lease_to_release found nothing the caller may end; the reason (str(exc)) is the result's message."""


def lease_to_release(pool_name, state, instance_id, lease_id):
    """The lease the caller holds, from the pool's state (None: no pool); raises NothingToRelease with the reason
    when there is nothing to release, InvalidRequest when the names contradict each other or the pool.

    A release ends only what its caller names: an instance id, a lease id (the token `get` returned), or the
    explicit `latest`. An empty name is "nothing": a CI step whose get failed, or a cleanup step that runs
    twice, must never end another job's lease."""
    leases = state["leases"] if state else []
    if instance_id == LATEST:
        if lease_id:
            raise InvalidRequest("instance_id=latest and lease_id exclude each other: pass the lease_id (and the "
                                 "instance_id) that spot_pool_get returned, or instance_id=latest alone")
        if not leases:
            raise NothingToRelease("the pool has no lease")
        return max(enumerate(leases), key=lambda item: (item[1].get("leased_at") or "", item[0]))[1]
    if not instance_id and not lease_id:
        raise NothingToRelease("no instance_id and no lease_id given (the step that got the instance may have "
                               "failed); pass the instance_id and lease_id that spot_pool_get returned, or "
                               "instance_id=latest")
    if lease_id:
        lease = next((item for item in leases if item.get("lease_id") == lease_id), None)
        if lease is None:
            # Already released (a retried step), expired, or never this pool's: the instance may be leased
            # again by someone else by now, so it is not touched.
            raise NothingToRelease("lease %s is not held any more%s" % (
                lease_id, " (instance %s is not touched)" % instance_id if instance_id else ""))
        if instance_id and lease["id"] != instance_id:
            raise InvalidRequest("lease %s is of instance %s, not %s: pass the instance_id and lease_id that the "
                                 "same spot_pool_get returned" % (lease_id, lease["id"], instance_id))
        return lease
    lease = next((item for item in leases if item["id"] == instance_id), None)
    if lease is None:
        raise InvalidRequest("instance %s is not leased from pool '%s'; its leases are: %s"
                             % (instance_id, pool_name, ", ".join(item["id"] for item in leases) or "none"))
    return lease


def release_instance(store, client, instance_id=None, fallback_action=None, check_mode=False, lease_id=None):
    """End a lease: terminate a Spot instance; stop (or terminate) a fallback, per `fallback_action`, or when that
    is None, per the pool's own setting (the one the refill follows for expired leases and retired fallbacks)."""
    from . import ending  # pylint: disable=import-outside-toplevel

    state = store.read()
    try:
        lease = lease_to_release(store.pool_name, state, instance_id, lease_id)
    except NothingToRelease as nothing:
        return _nothing_released(store, state, str(nothing))
    plan = plan_end([lease], fallback_action or fallback_action_of(state["launch"]))
    action = "stop" if plan.stop else "terminate"
    result = {"changed": True, "instance_id": lease["id"], "type": lease.get("type"), "action": action}
    if check_mode:
        result["counts"] = counts(state)
        return result
    ending.end_instances(client, plan)  # an instance already gone ends its lease all the same
    # This lease only: the same instance may be leased again (a reused fallback) under another lease_id.
    after = store.end_lease(lease["id"], lease.get("lease_id"))
    if after is not None:
        result["counts"] = after
    return result


# -- terminate --------------------------------------------------------------------------------------------
def select_for_terminate(state, named, pool_name, pool_id, fallback_action="terminate", include_orphans=True):
    """What terminate ends, from the state (or None) and the instances tagged with the pool's name (summaries).

    Only this pool's instances: those its state lists, and those tagged with its id (orphans, with
    `include_orphans`; and the stopped fallbacks it kept for reuse, always: no pool is left to reuse them).
    With fallback_action=stop, fallbacks are stopped (kept ones stay stopped) instead of terminated.
    Returns (to_terminate, to_stop, orphans, kept) as sorted id lists."""
    # pylint: disable=import-outside-toplevel
    from .domain import identity

    kinds = {}
    for entry in (state["instances"] + state["leases"]) if state else []:
        kinds[entry["id"]] = entry.get("type") or "spot"
    listed = set(kinds)
    live = {}
    orphans, kept = [], []
    for item in identity.mine(named, pool_name, pool_id, listed):
        live[item["id"]] = item["state"]
        if item["id"] in listed or item["state"] in ("shutting-down", "terminated"):
            continue
        if identity.RELEASED_TAG in item["tags"]:
            kept.append(item["id"])
        elif include_orphans:
            orphans.append(item["id"])
        else:
            continue
        kinds[item["id"]] = item["tags"].get(identity.TYPE_TAG, "spot")
    plan = plan_end([{"id": instance_id, "type": kind, "state": live.get(instance_id)}
                     for instance_id, kind in sorted(kinds.items())], fallback_action)
    return plan.terminate, plan.stop, sorted(orphans), sorted(kept)


def terminate_pool(store, client, fallback_action="terminate", include_orphans=True, check_mode=False,
                   pool_id=None):
    """End the pool: stop its refill job, terminate its instances (fallbacks stopped instead with
    fallback_action=stop), the stopped fallbacks it kept for reuse, and its own launch template; clear the state."""
    # pylint: disable=import-outside-toplevel
    from ._aws import ec2
    from . import ending
    from .domain import identity

    warnings = []
    corrupt = None
    try:
        state = store.read()
    except StateFileError as exc:
        state, corrupt = None, exc
        warnings.append("%s The instances were found by their tag instead; %s was left in place."
                        % (exc.message, "the file" if exc.details.get("path") else "what the store holds"))

    def plan(current, notes=None):
        named = [ec2.instance_summary(item) for item in ec2.describe_pool_instances(client, store.pool_name)]
        chosen, said = identity.pool_id_to_end(current, named, store.pool_name, store.location, pool_id,
                                               corrupt.kind if corrupt is not None else None)
        (warnings if notes is None else notes).extend(said)
        return (chosen,) + select_for_terminate(current, named, store.pool_name, chosen, fallback_action,
                                                include_orphans)

    def result(chosen, to_terminate, to_stop, orphans, kept):
        msg = "pool '%s' ended: %d terminated, %d stopped" % (store.pool_name, len(to_terminate), len(to_stop))
        if kept:
            msg += "; %d stopped fallback%s kept for reuse %s" % (
                len(kept), "" if len(kept) == 1 else "s",
                "terminated with the pool" if fallback_action == "terminate" else "left stopped (fallback_action=stop)")
        return {"changed": bool(to_terminate or to_stop or state), "terminated": to_terminate, "stopped": to_stop,
                "orphans": orphans, "kept_fallbacks": kept, "pool_id": chosen, "msg": msg, "warnings": warnings}

    if check_mode:
        return result(*plan(state))
    if state is None:
        plan(None, [])  # without a pool, its id is checked before anything is done (the refill job stopped)
    # A pool without a file gets no lock file made just to be removed again (nothing is created for it).
    lock = jobcontrol.stop_refill(store, create=state is not None) if corrupt is None else None
    try:
        state = store.read() if corrupt is None else None  # the job may have added instances before it stopped
        chosen, to_terminate, to_stop, orphans, kept = plan(state)
        ending.end_instances(client, EndPlan(to_terminate, to_stop))
        _delete_own_template(client, store.pool_name, chosen, state, warnings)
        if corrupt is None:
            # The pool and all the store keeps for it (the job lock, still held, and the log), then the code copy if
            # no other pool here needs it. A damaged file and its sidecars stay for inspection.
            warnings.extend(store.delete(lock) or [])  # what the store would not delete, named
            jobcontrol.remove_unused_code(store)
    finally:
        if lock is not None:
            lock.release()
    return result(chosen, to_terminate, to_stop, orphans, kept)


def _delete_own_template(client, pool_name, pool_id, state, warnings):
    """Delete the launch template the pool made: the one its state records, or the one named after its id. Never
    a template that carries another pool's id (a pool made before pool ids could have recorded another's)."""
    from ._aws import ec2  # pylint: disable=import-outside-toplevel
    from .domain import identity  # pylint: disable=import-outside-toplevel

    template = ((state or {}).get("launch") or {}).get("template") or {}
    found = None
    if template.get("owned") and template.get("LaunchTemplateId"):
        found = ec2.find_launch_template_by_id(client, template["LaunchTemplateId"])
    if found is None and pool_id:
        found = ec2.find_launch_template(client, identity.template_name(pool_name, pool_id))
    if found is None:
        return
    owner = ec2.tag_dict(found.get("Tags")).get(identity.POOL_ID_TAG)
    if owner is not None and owner != pool_id:
        warnings.append("launch template %s belongs to pool id %s, not to this pool (%s): left in place"
                        % (found["LaunchTemplateName"], owner, pool_id))
        return
    ec2.delete_launch_template(client, found["LaunchTemplateId"])


# -- info -------------------------------------------------------------------------------------------------
def pool_info(store, make_client=None, verify=False):
    """The pool as the file says it (and, with `verify`, what EC2 says about each instance). Changes nothing."""
    state = store.read()
    now = utcnow()
    result = {
        "changed": False,
        "exists": state is not None,
        "path": store.location,
        "pool_id": (state or {}).get("pool_id"),
        "target_size": state["target_size"] if state else 0,
        "launch": state["launch"] if state else {},
        "pool": (state or {}).get("instances", []),
        "leases": (state or {}).get("leases", []),
        "counts": counts(state),
        "refill": jobcontrol.refill_status(store, state),
        # Stopped fallbacks the pool keeps to start again before it launches On-Demand (as of the last refill pass).
        "kept_fallbacks": (state or {}).get("kept_fallbacks", []),
        "cooldowns": [c for c in (state or {}).get("cooldowns", []) if (parse_time(c.get("until")) or now) > now],
        "pending_launches": [p["token"] for p in (state or {}).get("pending_launches", [])],
    }
    for lease in result["leases"]:
        lease["expired"] = bool(lease.get("expires_at")) and parse_time(lease["expires_at"]) <= now
    if verify and state:
        from ._aws import ec2  # pylint: disable=import-outside-toplevel

        entries = result["pool"] + result["leases"]
        found = {item["InstanceId"]: item["State"]["Name"]
                 for item in ec2.describe_instances(make_client(), [entry["id"] for entry in entries])}
        for entry in entries:
            entry["ec2_state"] = found.get(entry["id"], "absent")
        result["dead"] = [entry["id"] for entry in entries if entry["ec2_state"] not in ("pending", "running")]
    return result
