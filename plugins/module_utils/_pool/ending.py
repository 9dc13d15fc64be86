# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rule for ending an instance, used by release, terminate, lease expiry, fallback retirement and the orphan
sweep: a Spot instance is terminated; an On-Demand fallback is stopped, tagged ec2spot:released-at and kept for
reuse (fallback_action=stop), or terminated (fallback_action=terminate). An instance EC2 no longer knows
(InvalidInstanceID.NotFound) is already gone: that is not an error, and the others named with it are still ended.

`plan_end` (domain/end_plan.py) decides; `end_instances` carries a plan out. Neither takes a lock:
the callers read the state first, end what the plan names, then change the state.
"""

from __future__ import annotations

import collections

from ._aws import ec2
from .domain.end_plan import plan_end
from .domain.timefmt import isoformat
from .domain.timefmt import utcnow

NOT_FOUND = "InvalidInstanceID.NotFound"

Ended = collections.namedtuple("Ended", ["terminated", "stopped", "gone"])


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
