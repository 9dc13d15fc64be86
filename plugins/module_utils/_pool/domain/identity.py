# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which EC2 resources belong to a pool: the rules, as plain functions of tags and values (no AWS call here).

A pool's name is chosen by people and two controllers can choose the same one; its state lives with one
controller. So the name alone cannot say what a pool owns. Every pool has a pool id (16 random hex digits) made
when the pool is created and kept in its state; every instance is tagged with it at launch, and so is the pool's
own launch template, whose name carries it too. Sweeps, terminate, the rebuild from tags and the reuse of stopped
fallbacks only ever touch instances with this pool's id (or, for a pool made before pool ids, the instances its
state lists).
"""

from __future__ import annotations

import binascii
import os
import re

from .errors import InvalidRequest

POOL_TAG = "ec2spot:pool"
POOL_ID_TAG = "ec2spot:pool-id"
TYPE_TAG = "ec2spot:type"
RELEASED_TAG = "ec2spot:released-at"
LEASED_TAG = "ec2spot:leased-at"  # set by the refill on leased instances, so a rebuild from tags knows them
ORPHAN_TAG = "ec2spot:orphan-since"  # first mark of an instance in neither the pool nor a lease
POOL_ID_RE = re.compile(r"[0-9a-f]{16}")
# An instance in these states is live: it runs, or will.
LIVE_STATES = ("pending", "running")
# Instances in these states show that a pool is alive (a stopped fallback is kept by its pool for reuse).
LIVE_OR_KEPT = ("pending", "running", "stopping", "stopped")


def new_pool_id():
    return binascii.hexlify(os.urandom(8)).decode("ascii")


def valid_pool_id(pool_id):
    return isinstance(pool_id, str) and POOL_ID_RE.fullmatch(pool_id) is not None


def template_name(pool_name, pool_id):
    """The name of the launch template a pool makes: another pool of the same name cannot find it by name."""
    return "ec2spot-%s-%s" % (pool_name, pool_id)


def is_member(tags, pool_name, pool_id):
    """An instance (or template) carries both this pool's name and its id."""
    return tags.get(POOL_TAG) == pool_name and pool_id is not None and tags.get(POOL_ID_TAG) == pool_id


def mine(summaries, pool_name, pool_id, listed=()):
    """The summaries (ec2.instance_summary shape) of this pool: tagged with its id, or listed in its state.

    Listed instances count even without the id tag: a pool made before pool ids tags them when it adopts an id,
    and EC2's tags are eventually consistent. Nothing unlisted without this pool's id is ever this pool's."""
    listed = set(listed)
    return [item for item in summaries if item["id"] in listed or is_member(item["tags"], pool_name, pool_id)]


def other_pools(summaries, templates, pool_name, pool_id, listed=()):
    """Other pools that use `pool_name`: {other id or None: {"instances": n, "templates": [names]}}.

    `summaries`: instances tagged with the name (ec2.instance_summary shape); `templates`: launch templates
    tagged with the name ({"name", "id", "tags"}). None stands for a pool made before pool ids. Instances this
    pool lists are its own whatever their tags; an old pool's stopped leftovers (no id) do not count, since
    no pool can reuse them (terminate them by hand)."""
    listed = set(listed)
    found = {}
    for item in summaries:
        if item["id"] in listed or item["tags"].get(POOL_TAG) != pool_name or item["state"] not in LIVE_OR_KEPT:
            continue
        other = item["tags"].get(POOL_ID_TAG)
        if other == pool_id and pool_id is not None:
            continue
        if other is None and item["state"] not in ("pending", "running"):
            continue
        found.setdefault(other, {"instances": 0, "templates": []})["instances"] += 1
    for template in templates:
        if template["tags"].get(POOL_TAG) != pool_name:
            continue
        other = template["tags"].get(POOL_ID_TAG)
        if other == pool_id and pool_id is not None:
            continue
        found.setdefault(other, {"instances": 0, "templates": []})["templates"].append(template["name"])
    return found


def colliding(found, stored):
    """What of `found` (other_pools()) is really another pool, once the store is read again: `stored` is the pool's
    state read after `found` was made (None: the store still has no pool). A pool that another init made in this
    same store meanwhile (two controllers sharing a table, two runs on one state file), and whose instances EC2
    already showed, is not another pool: it is left out. Everything else (another store's pool, a pool made before
    pool ids) stays."""
    stored_id = (stored or {}).get("pool_id")
    return {other: what for other, what in found.items() if not (stored_id and other == stored_id)}


def describe_others(found):
    parts = []
    for other, what in sorted(found.items(), key=lambda item: item[0] or ""):
        name = "pool id %s" % other if other else "a pool made before pool ids (no ec2spot:pool-id tag)"
        detail = ["%d instance%s" % (what["instances"], "" if what["instances"] == 1 else "s")]
        if what["templates"]:
            detail.append("launch template %s" % ", ".join(sorted(what["templates"])))
        parts.append("%s (%s)" % (name, ", ".join(detail)))
    return "; ".join(parts)


def collision_message(pool_name, region, found):
    return (
        "pool name '%s' is already used in region %s by another pool: %s. Two pools of one name would end each "
        "other's instances. Either use that pool (for several controllers: one store shared by the controllers; "
        "on one controller: the same state file, i.e. the same state_dir or pool_file), or choose another "
        "pool_name, or end the other pool with ec2spot.pool.spot_pool_terminate where its state lives."
        % (pool_name, region or "(default)", describe_others(found))
    )


def pools_of_name(summaries, pool_name):
    """{pool id (None: no id tag): {"instances": n, "leased": n}} over the live or kept instances tagged with the
    name. `leased` counts the running ones tagged ec2spot:leased-at: the refill tags a lease at its next pass, so a
    lease no pass has seen yet is counted as an instance only."""
    found = {}
    for item in summaries:
        if item["tags"].get(POOL_TAG) != pool_name or item["state"] not in LIVE_OR_KEPT:
            continue
        what = found.setdefault(item["tags"].get(POOL_ID_TAG), {"instances": 0, "leased": 0})
        what["instances"] += 1
        if LEASED_TAG in item["tags"] and RELEASED_TAG not in item["tags"] and item["state"] in LIVE_STATES:
            what["leased"] += 1
    return found


def describe_pools_of_name(found):
    """pools_of_name() in words: "pool id <id> (3 instances, 1 leased); ..."."""
    parts = []
    for other, what in sorted(found.items(), key=lambda item: item[0] or ""):
        name = "pool id %s" % other if other else "a pool made before pool ids (no ec2spot:pool-id tag)"
        parts.append("%s (%d instance%s, %d leased)" % (name, what["instances"], "" if what["instances"] == 1 else "s",
                                                        what["leased"]))
    return "; ".join(parts)


def pool_id_without_store(found, requested, damaged):
    """The pool id an operation may act on when the store says none (terminate; init with rebuild): a pure rule.

    `found`: pools_of_name() of the pool's name; `requested`: the user's pool_id; `damaged`: the store holds a
    damaged pool of this name (its own file, unreadable), rather than no pool or a file that is not this pool's.
    No pool in the store cannot tell "my pool file was lost" from "this pool was never mine" (a job on the wrong
    runner, a dynamodb_table that names another table), so then only the id the user names is acted on. A
    damaged pool was this store's: the only id tagged with its name is its own.

    Returns (pool id or None, refusal or None); the id is None, with no refusal, when no instance of the name
    carries a pool id (nothing to act on)."""
    if requested:
        return requested, None
    ids = {key: what for key, what in found.items() if key}
    if not ids:
        return None, None
    if damaged and len(ids) == 1:
        return next(iter(ids)), None
    if damaged:
        return None, "instances of several pools are tagged with the name: %s" % describe_pools_of_name(ids)
    return None, "instances tagged with the name: %s" % describe_pools_of_name(ids)


def listed_ids(state):
    """The ids a pool's state lists (idle entries, then leases); none for no state."""
    return [entry["id"] for entry in (state or {}).get("instances", []) + (state or {}).get("leases", [])]


def check_pool_id(requested, known, location, way_out=""):
    """Refuse (InvalidRequest) a `requested` pool id that is not one, or that the store's pool id (`known`, of the
    pool in `location`) contradicts; `way_out` ends the second message. Nothing has been read from EC2 yet."""
    if requested and not valid_pool_id(requested):
        raise InvalidRequest("pool_id %r is not a pool id: 16 lower-case hex digits, as spot_pool_info shows it"
                             % (requested,))
    if requested and known and requested != known:
        raise InvalidRequest("pool_id %s does not match the pool id %s in %s%s" % (requested, known, location, way_out))


def pool_id_from_tags(found, requested, pool_name, location, corrupt_kind, doing):
    """The pool id to act on when the store gives none (pool_id_without_store): the one asked for; with a damaged
    pool in the store (`corrupt_kind` "damaged", the kind of the read's StateFileError; None: the store has no
    pool), the only one tagged with the name; None when no instance of the name has an id. Anything else is
    refused, naming the ids found (`found`: pools_of_name()), with `doing` (what pool_id=<id> would do) as the way
    out."""
    damaged = corrupt_kind == "damaged"
    pool_id, refusal = pool_id_without_store(found, requested, damaged)
    if refusal is None:
        return pool_id
    if damaged:
        why = "its pool in %s is damaged" % location
    else:
        why = "%s, so nothing says which instances of that name are its own (they may be another controller's pool " \
              "of the same name)" % ("there is no pool '%s' in %s" % (pool_name, location)
                                     if corrupt_kind is None else "%s is not this pool's readable state" % location)
    raise InvalidRequest(
        "pool '%s': %s; nothing was changed. EC2 has %s. If one of them is this pool (its state was lost), %s with "
        "pool_id=<id> (spot_pool_info where the pool lives shows its pool_id); leave another controller's pool to "
        "that controller" % (pool_name, why, refusal, doing),
        pool_ids=sorted(key for key in found if key),
        pools_of_name={key or "none": value for key, value in found.items()})


def pool_id_for_init(named, pool_name, location, known, requested, rebuild, corrupt_kind=None):
    """The pool id init builds on, before it is known whether EC2 has a pool of it (None: a new id is to be made).
    Without `rebuild`, the one asked for; a rebuild keeps the store's (`known`), or else takes the id that
    pool_id_from_tags allows among the instances tagged with the name (`named`: summaries)."""
    if not rebuild:
        return requested
    return known or pool_id_from_tags(pools_of_name(named, pool_name), requested, pool_name, location, corrupt_kind,
                                      "rebuild it")


def known_to_ec2(named, pool_name, pool_id):
    """Some instance tagged with the name (`named`: summaries) carries `pool_id`: the pool exists in EC2."""
    return pool_id is not None and any(is_member(item["tags"], pool_name, pool_id) for item in named)


def collision_error(pool_name, region, others):
    """The refusal of a new pool whose name other pools use (`others`: other_pools() after colliding())."""
    return InvalidRequest(collision_message(pool_name, region, others),
                          other_pools={key or "none": value for key, value in others.items()})


def pool_id_to_end(state, named, pool_name, location, requested, corrupt_kind=None):
    """The id whose instances terminate ends, and the warnings that choice gives: (pool id or None, [str]).

    The state's id; a pool of the state made before pool ids ends what it lists (and `requested`), naming the
    instances of its name with no id that it leaves alone; without a readable state, `requested` (or, for a damaged
    pool of this store, the only id tagged with the pool's name: pool_id_from_tags)."""
    known = (state or {}).get("pool_id")
    check_pool_id(requested, known, location)
    if known:
        return known, []
    if state is not None:
        listed = set(listed_ids(state))
        unknown = sorted(item["id"] for item in named if item["id"] not in listed
                         and not item["tags"].get(POOL_ID_TAG) and item["state"] in LIVE_OR_KEPT)
        if not unknown:
            return requested, []
        return requested, ["instances tagged with the name '%s' but with no pool id were left alone, as this pool "
                           "(made before pool ids) does not list them and they may be another controller's: %s"
                           % (pool_name, ", ".join(unknown))]
    pool_id = pool_id_from_tags(pools_of_name(named, pool_name), requested, pool_name, location, corrupt_kind, "end it")
    if pool_id and not requested:
        return pool_id, ["pool '%s' has a damaged state that cannot say its pool id; ended the instances of pool id "
                         "%s, the only pool of this name in EC2" % (pool_name, pool_id)]
    return pool_id, []


def reusable_fallbacks(summaries, launch, pool_name, pool_id):
    """Stopped fallbacks this pool kept for reuse (released-at tag, this pool's id) of an instance type and
    zone/subnet the pool still asks for, oldest release first."""
    types = set(launch.get("instance_types") or [])
    zones = set(launch.get("availability_zones") or [])
    subnets = set(launch.get("subnet_ids") or [])
    found = []
    for item in summaries:
        tags = item["tags"]
        if item["state"] != "stopped" or RELEASED_TAG not in tags or tags.get(TYPE_TAG) != "fallback":
            continue
        if not is_member(tags, pool_name, pool_id) or item.get("instance_type") not in types:
            continue
        if subnets and item.get("subnet_id") not in subnets:
            continue
        if zones and not subnets and item.get("availability_zone") not in zones:
            continue
        found.append(item)
    return sorted(found, key=lambda item: (item["tags"][RELEASED_TAG], item["id"]))


def kept_fallbacks(summaries, pool_name, pool_id):
    """Fallbacks this pool stopped and keeps (released-at tag, this pool's id), running or not."""
    return [item for item in summaries if RELEASED_TAG in item["tags"] and item["state"] in LIVE_OR_KEPT
            and is_member(item["tags"], pool_name, pool_id)]
