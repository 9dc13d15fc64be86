# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which instances an ending terminates and which it stops (plain values in, plain values out): one rule for release,
terminate, lease expiry, fallback retirement and the orphan sweep. A Spot instance is terminated; an On-Demand
fallback is stopped (fallback_action=stop, kept for reuse) or terminated (fallback_action=terminate). ending.py
carries a plan out."""

from __future__ import annotations

import collections

from .defaults import FALLBACK_ACTION
from .defaults import FALLBACK_ACTIONS


EndPlan = collections.namedtuple("EndPlan", ["terminate", "stop"])


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
