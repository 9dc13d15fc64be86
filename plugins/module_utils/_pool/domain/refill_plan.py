# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The refill's rules as pure functions: what one pass does, decided from plain values.

refill.reconcile runs a pass as observe -> decide -> act. `observe` (refill.py) reads EC2 into an Observed;
`decide` (here) turns the pool's state, what EC2 said and `now` into a Plan; `act` (refill.py) carries the plan
out and then, under the pool's lock, `settle` (here) applies what the pass saw and launched to the state as it is
by then (a `get` may have leased an entry meanwhile) and says which surplus entries to retire.

Nothing here calls AWS, reads a clock or a store, or holds a launcher: every rule of the refill can be tested with
plain dicts and a fixed `now` (tests/unit/test_refill_plan.py). The instances EC2 lists are ec2.instance_summary()
dicts (`id`, `state`, `tags`, `launch_time`, ...); entries and leases are entries.py's.
"""

from __future__ import annotations

import collections

from . import identity
from .entries import SPOT
from .entries import fill_in
from .entries import is_fallback
from .entries import is_ready
from .timefmt import isoformat
from .timefmt import parse_time

# An instance EC2 does not list yet may simply be new (DescribeInstances is eventually consistent):
# only an entry older than this is dropped for being absent.
ABSENT_GRACE_SECONDS = 120
# The cool-down code of an offering whose idle Spot instance was interrupted in the pool: the launcher treats it
# like a capacity error (launcher.Cooldowns, launcher.Launcher.launch_instances).
INTERRUPTED = "SpotInterruption"


class Observed(collections.namedtuple("Observed", ["instances", "replayed"])):
    """What one pass learned from EC2, as plain values.

    - ``instances``: {instance id: ec2.instance_summary()} of every instance of the pool (identity.mine: this pool's
      id, or listed in its state or in a replayed fleet answer), whatever its EC2 state;
    - ``replayed``: the entries of the fleet requests whose answer was lost and that this pass replayed."""

    __slots__ = ()


class Policy(collections.namedtuple("Policy", ["orphan_grace_seconds", "fallback_action", "may_launch",
                                               "absent_grace_seconds"])):
    """How a pass decides, besides the state: the pool's orphan grace (seconds) and fallback action (refill.py reads
    them from its launch settings, with their defaults), whether this pass may launch, and the seconds an entry EC2
    does not list is kept (ABSENT_GRACE_SECONDS)."""

    __slots__ = ()


class Plan(collections.namedtuple("Plan", [
    "dead", "interrupted", "cooldowns", "expired", "tag_leased", "mark_orphans", "end_orphans", "launch",
    "extra_spot", "reusable", "kept", "fallback_action",
])):
    """What one pass does (decide), in the order act carries it out.

    - ``dead``: ids whose idle entry goes (settle drops them from the pool as it is then): the state's entries whose
      instance EC2 lists as no longer pending or running, or does not list although it is older than the absent
      grace, and every instance of the pool EC2 lists as no longer live;
    - ``interrupted``: ids of the dead idle Spot entries that EC2 still lists: nobody in the pool ended them;
    - ``cooldowns``: cool-downs to add, {"scope", "code", "market", "instance_type", "location"} (launcher.Cooldowns
      .add takes them with the pool's cool-down seconds): the offering of each interrupted entry;
    - ``expired``: the leases (dicts) past their ``expires_at``, to end and forget;
    - ``tag_leased``: ids of the other leases whose instance lacks the leased-at tag, to tag (a rebuild from tags
      knows them then);
    - ``mark_orphans``: ids of instances of the pool in neither the pool nor a lease, older than the orphan grace,
      not marked yet: to mark now; ``end_orphans``: those whose mark is older than the grace: to terminate;
    - ``launch``: how many instances to launch for missing slots (Spot, then what fallback allows);
      ``extra_spot``: how many Spot instances more, to replace idle fallbacks (never On-Demand). Both are 0 when the
      pass may not launch; together they never exceed the target less the Spot entries the pool holds;
    - ``reusable``: stopped fallbacks the pool kept (identity.reusable_fallbacks) to start before launching On-Demand;
    - ``kept``: {id: kept_fallbacks record} of the stopped fallbacks EC2 shows the pool keeping (settle adds and
      removes the ones this pass changes);
    - ``fallback_action``: how a fallback whose lease expired or that is retired ends (ending.py)."""

    __slots__ = ()


class Settled(collections.namedtuple("Settled", ["state", "dropped", "retire"])):
    """What settle makes of the pool: the new ``state`` to write, the ids it ``dropped``, the entries
    to ``retire`` (no longer in the state; act ends them once the lock is released)."""

    __slots__ = ()


class Outcome(collections.namedtuple("Outcome", ["entries", "reused", "settled", "cooldowns", "template", "gone"])):
    """What act did before settling, as settle needs it: the ``entries`` launched (or started again;
    ``reused``: the ids of those), the fleet tokens ``settled`` (answered or refused: no longer pending), the
    ``cooldowns`` list as it stands after the pass, the launch ``template`` used, and the ids of expired leases EC2
    no longer knew (``gone``: ended already, so not kept for reuse)."""

    __slots__ = ()


def age(moment, now):
    """Seconds from `moment` (a datetime, or a time as the pool writes it) to `now`; None when there is none."""
    if isinstance(moment, str):
        moment = parse_time(moment)
    return None if moment is None else (now - moment).total_seconds()


def is_alive(entry, info, now, absent_grace=ABSENT_GRACE_SECONDS):
    """Whether an idle entry still has a live instance: EC2 lists it pending or running (`info`), or does not list
    it yet and it is younger than `absent_grace` seconds."""
    if info is None:
        entry_age = age(entry.get("launched_at"), now)
        return entry_age is not None and entry_age < absent_grace
    return info["state"] in identity.LIVE_STATES


def interrupted_offering(entry, launch):
    """The cool-down of the Spot offering an interrupted entry ran in, located as the pool asks for offerings: a
    pool without zones or subnets asks EC2 for the type anywhere, so the zone the instance ran in would name an
    offering the launcher never uses."""
    location = entry.get("subnet_id") or (entry.get("availability_zone") if launch.get("availability_zones") else None)
    # The Spot market's name (launcher.SPOT) is the Spot entry type's.
    return {"scope": "offering", "code": INTERRUPTED, "market": SPOT, "instance_type": entry.get("instance_type"),
            "location": location}


def is_expired(lease, now):
    """A lease with an ``expires_at`` that `now` has reached (one without never expires)."""
    return bool(lease.get("expires_at")) and (age(lease["expires_at"], now) or 0) >= 0


def launch_counts(target, entries):
    """(missing, extra_spot) for a pool of `target` that holds `entries` (its live idle entries and those a replayed
    fleet answer adds): the slots to fill, and the Spot instances to launch besides to replace idle fallbacks, as
    many as fit under the target once the missing ones are counted as Spot."""
    slots = len(entries)
    missing = target - slots
    spot_count = sum(1 for entry in entries if not is_fallback(entry))
    idle_fallbacks = slots - spot_count
    extra_spot = min(idle_fallbacks, max(0, target - spot_count - max(0, missing)))
    return max(0, missing), extra_spot


def decide(state, observed, now, policy):
    """The Plan of one pass over the pool `state` (as read before observing), from what EC2 said (`observed`)."""
    pool_name, pool_id, launch = state["pool_name"], state.get("pool_id"), state["launch"]
    seen = observed.instances
    listed = {entry["id"] for entry in state["instances"] + state["leases"]}
    known = listed | {entry["id"] for entry in observed.replayed}

    # Dead idle entries; an idle Spot entry EC2 still lists as ended was interrupted (nobody in the pool ended it).
    alive, dead, interrupted, cooldowns = [], set(), [], []
    for entry in state["instances"]:
        info = seen.get(entry["id"])
        if is_alive(entry, info, now, policy.absent_grace_seconds):
            alive.append(entry)
            continue
        dead.add(entry["id"])
        if entry.get("type") == SPOT and info is not None:
            interrupted.append(entry["id"])
            cooldowns.append(interrupted_offering(entry, launch))
    dead.update(instance_id for instance_id, info in seen.items() if info["state"] not in identity.LIVE_STATES)

    expired = [lease for lease in state["leases"] if is_expired(lease, now)]
    ended = {lease["id"] for lease in expired}
    tag_leased = [lease["id"] for lease in state["leases"] if lease["id"] in seen
                  and identity.LEASED_TAG not in seen[lease["id"]]["tags"] and lease["id"] not in ended]

    # Orphans: the pool's instances in neither the pool nor a lease nor a fleet answer about to be added, not ending
    # already, not kept on purpose (released-at), and older than the grace (a launch whose answer is still on its
    # way is not one).
    mark, end = [], []
    for instance_id, info in sorted(seen.items()):
        if instance_id in known or info["state"] in ("shutting-down", "terminated") \
                or identity.RELEASED_TAG in info["tags"] \
                or (age(info["launch_time"], now) or 0) < policy.orphan_grace_seconds:
            continue
        marked = info["tags"].get(identity.ORPHAN_TAG)
        if marked is None:
            mark.append(instance_id)
        elif (age(marked, now) or 0) >= policy.orphan_grace_seconds:
            end.append(instance_id)

    missing, extra_spot = launch_counts(state["target_size"], alive + list(observed.replayed))
    if not policy.may_launch:
        missing, extra_spot = 0, 0
    kept = {item["id"]: {"id": item["id"], "instance_type": item.get("instance_type"),
                         "availability_zone": item.get("availability_zone"),
                         "released_at": item["tags"].get(identity.RELEASED_TAG)}
            for item in identity.kept_fallbacks(seen.values(), pool_name, pool_id)}
    return Plan(
        dead=frozenset(dead), interrupted=interrupted, cooldowns=cooldowns, expired=expired, tag_leased=tag_leased,
        mark_orphans=mark, end_orphans=end, launch=missing, extra_spot=extra_spot,
        reusable=identity.reusable_fallbacks(seen.values(), launch, pool_name, pool_id), kept=kept,
        fallback_action=policy.fallback_action,
    )


def surplus(instances, target):
    """Idle entries to retire so the pool holds `target`: fallbacks first, Spot ones only once no fallback is
    left (pending before ready, newest first). A ready entry goes only while the ready count stays at the target,
    so a fallback waits for the Spot instance that replaces it to be ready."""
    count = len(instances) - target
    if count <= 0:
        return []
    ready = sum(1 for e in instances if is_ready(e))
    fallbacks = sorted((e for e in instances if is_fallback(e)), key=is_ready)
    spots = sorted((e for e in instances if not is_fallback(e)), key=lambda e: e.get("launched_at") or "",
                   reverse=True)
    spots.sort(key=is_ready)
    retire = []
    for entry in fallbacks + spots:
        if len(retire) == count:
            break
        if not is_fallback(entry) and len(retire) < len(fallbacks):
            break  # a fallback is still in the pool: the Spot entries are its replacements
        if is_ready(entry):
            if ready - 1 < target:
                continue
            ready -= 1
        retire.append(entry)
    return retire


def kept_fallbacks(kept, reused, ended, fallback_action, now):
    """The stopped fallbacks the pool keeps for reuse, as `spot_pool_info` shows them, sorted by id: those EC2
    showed kept (`kept`), less those started again (`reused`), plus the fallbacks ended now if they are stopped."""
    kept = {key: value for key, value in kept.items() if key not in reused}
    if fallback_action == "stop":
        for entry in ended:
            if is_fallback(entry):
                kept[entry["id"]] = {"id": entry["id"], "instance_type": entry.get("instance_type"),
                                     "availability_zone": entry.get("availability_zone"),
                                     "released_at": isoformat(now)}
    return [kept[key] for key in sorted(kept)]


def settle(current, observed, plan, outcome, now):
    """Apply one pass to the pool as it is now (`current`, read under the lock), without changing it: a Settled.

    Dead entries go, live ones get their addresses, replayed and launched entries join (unless a `get` leased
    them meanwhile), the surplus is taken out (surplus()), expired leases go, settled fleet tokens stop being
    pending, and the cool-downs, the template, the kept fallbacks and the time of this verification are recorded."""
    leased = {lease["id"] for lease in current["leases"]}
    kept, dropped = [], []
    for entry in current["instances"]:
        if entry["id"] in plan.dead:
            dropped.append(entry["id"])
        else:
            kept.append(fill_in(dict(entry), observed.instances.get(entry["id"])))
    present = {entry["id"] for entry in kept} | leased
    kept.extend(entry for entry in list(observed.replayed) + list(outcome.entries) if entry["id"] not in present)
    retire = surplus(kept, current["target_size"])
    expired = {lease["id"] for lease in plan.expired}
    settled = set(outcome.settled)
    state = dict(current)
    state["instances"] = [entry for entry in kept if entry not in retire]
    state["leases"] = [lease for lease in current["leases"] if lease["id"] not in expired]
    state["pending_launches"] = [pending for pending in current.get("pending_launches") or []
                                 if pending["token"] not in settled]
    state["cooldowns"] = list(outcome.cooldowns)
    if outcome.template and current["launch"].get("template") != outcome.template:
        state["launch"] = dict(current["launch"], template=outcome.template)
    ended = retire + [lease for lease in plan.expired if lease["id"] not in outcome.gone]
    state["kept_fallbacks"] = kept_fallbacks(plan.kept, outcome.reused, ended, plan.fallback_action, now)
    state["refill"] = dict(current["refill"], verified_at=isoformat(now))
    return Settled(state, dropped, retire)


def plan_report(state, observed, plan):
    """What a pass would do, as `spot_pool_reconcile` reports it in check mode: plain ids and numbers, from the
    pool `state`, what EC2 said (`observed`) and the `plan` that decide made of them. Nothing here is carried out.

    A pass first replays the fleet requests whose answer was lost (``replay``: their ClientTokens); check mode does
    not send them, so ``launch`` counts the missing slots as if those requests had launched nothing."""
    idle = {entry["id"]: entry for entry in state["instances"]}
    addressed = sorted(instance_id for instance_id, entry in idle.items()
                       if instance_id not in plan.dead and not is_ready(entry)
                       and is_ready(fill_in(dict(entry), observed.instances.get(instance_id))))
    return {
        "replay": [pending["token"] for pending in state.get("pending_launches") or []],
        "drop": sorted(instance_id for instance_id in plan.dead if instance_id in idle),
        "interrupted": sorted(plan.interrupted),
        "address": addressed,
        "end_expired": [lease["id"] for lease in plan.expired],
        "tag_leased": list(plan.tag_leased),
        "mark_orphans": list(plan.mark_orphans),
        "end_orphans": list(plan.end_orphans),
        "launch": plan.launch,
        "replace_fallbacks": plan.extra_spot,
        # Started again before any On-Demand launch, if Spot falls short: only when launching at all.
        "reuse": [item["id"] for item in plan.reusable] if plan.launch or plan.extra_spot else [],
        "fallback_action": plan.fallback_action,
    }


def report_changes(report):
    """Whether the pass that `report` (plan_report) describes would change the pool or an instance."""
    return any(value for key, value in report.items() if key not in ("fallback_action", "reuse"))
