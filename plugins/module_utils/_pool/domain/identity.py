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
