# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rule for ending an instance, used by release, terminate, lease expiry, fallback retirement and the orphan
sweep: a Spot instance is terminated; an On-Demand fallback is stopped, tagged ec2spot:released-at and kept for
reuse (fallback_action=stop), or terminated (fallback_action=terminate). An instance EC2 no longer knows
(InvalidInstanceID.NotFound) is already gone: that is not an error, and the others named with it are still ended.

`plan_end` decides (plain values in, plain values out); `end_instances` carries a plan out. Neither takes a lock:
the callers read the state first, end what the plan names, then change the state.
"""

from __future__ import annotations

import collections

from . import ec2
from .defaults import FALLBACK_ACTION
from .defaults import FALLBACK_ACTIONS
from .timefmt import isoformat
from .timefmt import utcnow

NOT_FOUND = "InvalidInstanceID.NotFound"

EndPlan = collections.namedtuple("EndPlan", ["terminate", "stop"])
Ended = collections.namedtuple("Ended", ["terminated", "stopped", "gone"])


def fallback_action_of(launch):
    """The pool's own fallback_action, from its launch settings (the state's `launch`)."""
    return (launch or {}).get("fallback_action") or FALLBACK_ACTION


def plan_end(instances, fallback_action):
    """Which of `instances` to terminate and which to stop: an EndPlan of id lists, in the order given, each id once.

    `instances`: dicts with `id`, `type` (`spot` when absent) and, when the caller knows it, EC2's `state`. An
    instance already shutting down or terminated needs nothing; with fallback_action=stop, a fallback already
    stopping or stopped stays as it is; an unknown state counts as live."""
    if fallback_action not in FALLBACK_ACTIONS:
        raise ValueError("fallback_action must be one of %s, not %r" % (", ".join(FALLBACK_ACTIONS), fallback_action))
    terminate, stop, seen = [], [], set()
    for item in instances:
        where = item.get("state")
        if item["id"] in seen or where in ("shutting-down", "terminated"):
            continue
        seen.add(item["id"])
        if item.get("type") == "fallback" and fallback_action == "stop":
            if where not in ("stopping", "stopped"):
                stop.append(item["id"])
        else:
            terminate.append(item["id"])
    return EndPlan(terminate, stop)


def _each(call, client, ids, gone):
    """Call `call` for `ids` at once; on NotFound (EC2 refuses the whole call for one unknown id), one id at a time.
    Returns the ids the call was carried out for; the unknown ones go to `gone`."""
    if not ids:
        return []
    try:
        call(client, ids)
        return list(ids)
    except ec2.Ec2Error as exc:
        if exc.code != NOT_FOUND:
            raise
    if len(ids) == 1:
        gone.append(ids[0])
        return []
    done = []
    for instance_id in ids:
        done += _each(call, client, [instance_id], gone)
    return done


def end_instances(client, plan, now=None):
    """Carry out an EndPlan: terminate, stop, and mark the stopped ones as kept for reuse (so the orphan sweep
    leaves them alone, and the pool starts them again before it launches On-Demand). Returns an Ended."""
    gone = []
    terminated = _each(ec2.terminate_instances, client, list(plan.terminate), gone)
    stopped = _each(ec2.stop_instances, client, list(plan.stop), gone)
    if stopped:
        ec2.create_tags(client, stopped, {ec2.RELEASED_TAG: isoformat(now or utcnow())})
    return Ended(terminated, stopped, gone)


def end(client, instances, fallback_action, now=None):
    """plan_end, then end_instances."""
    return end_instances(client, plan_end(instances, fallback_action), now)
