# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool document: its first shape (new_state) and its schema (schema_problems), whatever store keeps it.

Every store reads and writes this one document (the file store as JSON, the DynamoDB store spread over items), and
checks what it read against the schema before anything trusts it: a pool that fails the check is damaged, never
guessed at."""

from __future__ import annotations

import json
import re

from .defaults import FALLBACK_ACTIONS
from .errors import InvalidRequest
from .timefmt import TIME_RE


STATE_VERSION = 1


# Matched with fullmatch(): `$` would also accept a name followed by a newline ("ci\n" is not pool "ci").
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_pool_name(pool_name):
    """Refuse (InvalidRequest) a pool name that is not POOL_NAME_RE's: one rule for every store, so that a pool can
    move between the stores under its name (and a name never leaves the state directory)."""
    if not isinstance(pool_name, str) or not POOL_NAME_RE.fullmatch(pool_name):
        raise InvalidRequest("pool_name %r is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit" % (pool_name,))


def new_state(pool_name, target_size, launch):
    return {
        "version": STATE_VERSION,
        "pool_name": pool_name,
        "target_size": target_size,
        "launch": launch,
        "instances": [],
        "leases": [],
        "cooldowns": [],
        "pending_launches": [],
        "refill": {"pid": None, "started_at": None, "finished_at": None, "verified_at": None, "last_error": None},
    }


# -- the schema: checked once, at read, for every reader -----------------------------------------------------------
_ENTRY_STRINGS = ("ip", "public_ip", "private_ip", "type", "availability_zone", "subnet_id", "instance_type")


_LAUNCH_STRINGS = ("image_id", "key_name", "iam_instance_profile", "user_data", "region", "allocation_strategy",
                   "fallback_action")


_LAUNCH_LISTS = ("availability_zones", "subnet_ids", "security_group_ids", "fallback_on")


_TIME_FORMAT = "a time like 2026-11-22T10:00:00Z"


def shown_value(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_time(value):
    return value is None or (isinstance(value, str) and TIME_RE.match(value) is not None)


def _is_number(value, minimum=0):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum


def _check_fields(problems, where, item, strings=(), times=(), required_strings=()):
    for key in required_strings:
        if not isinstance(item.get(key), str) or not item.get(key):
            problems.append("%s.%s is %s, expected a non-empty string" % (where, key, shown_value(item.get(key))))
    for key in strings:
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            problems.append("%s.%s is %s, expected a string or null" % (where, key, shown_value(value)))
    for key in times:
        if not _is_time(item.get(key)):
            problems.append("%s.%s is %s, expected %s or null" % (where, key, shown_value(item.get(key)), _TIME_FORMAT))


def _check_list(problems, state, key, check):
    items = state.get(key, [])
    if not isinstance(items, list):
        problems.append("%s is %s, expected a list" % (key, shown_value(items)))
        return
    for index, item in enumerate(items):
        where = "%s[%d]" % (key, index)
        if isinstance(item, dict):
            check(problems, where, item)
        else:
            problems.append("%s is %s, expected an object" % (where, shown_value(item)))


def _check_instance(problems, where, item):
    _check_fields(problems, where, item, strings=_ENTRY_STRINGS, times=("launched_at",), required_strings=("id",))


def _check_lease(problems, where, item):
    _check_fields(problems, where, item, strings=_ENTRY_STRINGS, times=("launched_at", "leased_at", "expires_at"),
                  required_strings=("id",))


def _check_cooldown(problems, where, item):
    _check_fields(problems, where, item, strings=("market", "instance_type", "location"), times=("until",),
                  required_strings=("scope", "code"))


def _check_pending(problems, where, item):
    _check_fields(problems, where, item, times=("at",), required_strings=("token",))
    if not isinstance(item.get("request"), dict):
        problems.append("%s.request is %s, expected an object" % (where, shown_value(item.get("request"))))


def _check_launch(problems, launch):
    types = launch.get("instance_types")
    if not (isinstance(types, list) and types and all(isinstance(name, str) and name for name in types)):
        problems.append("launch.instance_types is %s, expected a non-empty list of instance types" % shown_value(types))
    _check_fields(problems, "launch", launch, strings=_LAUNCH_STRINGS)
    for key in _LAUNCH_LISTS:
        value = launch.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            problems.append("launch.%s is %s, expected a list of strings" % (key, shown_value(value)))
    tags = launch.get("tags")
    if tags is not None and not (isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())):
        problems.append("launch.tags is %s, expected an object of strings" % shown_value(tags))
    if launch.get("fallback") is not None and not isinstance(launch.get("fallback"), bool):
        problems.append("launch.fallback is %s, expected true or false" % shown_value(launch.get("fallback")))
    if launch.get("fallback_action") is not None and launch.get("fallback_action") not in FALLBACK_ACTIONS:
        problems.append("launch.fallback_action is %s, expected one of %s"
                        % (shown_value(launch.get("fallback_action")), ", ".join(FALLBACK_ACTIONS)))
    for key in ("cooldown_seconds", "orphan_grace_seconds"):
        if launch.get(key) is not None and not _is_number(launch.get(key)):
            problems.append("launch.%s is %s, expected a number of seconds" % (key, shown_value(launch.get(key))))
    for key in ("launch_template", "template"):
        if launch.get(key) is not None and not isinstance(launch.get(key), dict):
            problems.append("launch.%s is %s, expected an object or null" % (key, shown_value(launch.get(key))))
    template = launch.get("template") or {}
    if isinstance(template, dict):
        _check_fields(problems, "launch.template", template, strings=("LaunchTemplateId", "Version"))
        if template.get("owned") is not None and not isinstance(template.get("owned"), bool):
            problems.append("launch.template.owned is %s, expected true or false" % shown_value(template.get("owned")))


def entry_problems(where, entry, lease=False):
    """What is wrong with one instance entry (a lease with `lease`), as schema_problems says it (`where` names it):
    for a store that keeps each entry apart (the DynamoDB store's items)."""
    problems = []
    if not isinstance(entry, dict):
        return ["%s is %s, expected an object" % (where, shown_value(entry))]
    (_check_lease if lease else _check_instance)(problems, where, entry)
    return problems


def schema_problems(state):
    """What is wrong with the fields of a pool state (a dict that claims to be one), as `field is x, expected y`.

    Checked once, when the file is read: every reader (init, get, release, terminate, info, the refill job, the
    inventory) can then use the fields without a KeyError or TypeError that would not name the file."""
    problems = []
    size = state.get("target_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append("target_size is %s, expected an integer of 0 or more" % shown_value(size))
    launch = state.get("launch")
    if isinstance(launch, dict):
        _check_launch(problems, launch)
    else:
        problems.append("launch is %s, expected an object" % shown_value(launch))
    for key in ("instances", "leases"):
        if key not in state:
            problems.append("%s is missing" % key)
    _check_list(problems, state, "instances", _check_instance)
    _check_list(problems, state, "leases", _check_lease)
    _check_list(problems, state, "cooldowns", _check_cooldown)
    _check_list(problems, state, "pending_launches", _check_pending)
    refill = state.get("refill", {})
    if not isinstance(refill, dict):
        problems.append("refill is %s, expected an object" % shown_value(refill))
    else:
        pid = refill.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
            problems.append("refill.pid is %s, expected a process id or null" % shown_value(pid))
        _check_fields(problems, "refill", refill, strings=("last_error",),
                      times=("started_at", "finished_at", "verified_at"))
    return problems
