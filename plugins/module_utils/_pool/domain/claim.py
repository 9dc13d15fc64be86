# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which entry a hand-out takes: pure functions of values (no store, no clock, no AWS call) that every store calls
on the pool it read: the file store inside its transaction, the DynamoDB store on what it read before its one
conditional write. So the rule is one, whatever the store."""

from __future__ import annotations

from .entries import is_ready
from .timefmt import parse_time


def needs_verify(state, verify, verify_max_age, now):
    """Whether a get must ask EC2 about the instance it hands out: always, unless `verify` is off or the
    caller accepts a pool that the refill checked less than `verify_max_age` seconds before `now` (0: always ask)."""
    if not verify:
        return False
    if not verify_max_age or verify_max_age <= 0:
        return True
    verified_at = parse_time((state.get("refill") or {}).get("verified_at"))
    return verified_at is None or (now - verified_at).total_seconds() > verify_max_age


def choose_claim(state, dead, alive, trusted):
    """What a claim does to the pool `state`: returns (dropped, entry, unchecked).

    - `dropped`: ids of the idle entries in `dead` (EC2 reported them not running), in the pool's order;
    - `entry`: the idle entry to lease: the first ready one not dropped, if `trusted` (no check with EC2 needed),
      else the first whose id is in `alive` (EC2 has just reported it running); None when there is none;
    - `unchecked`: when no entry is taken, the ids of the ready entries not in `alive` (the ones to ask EC2 about
      before claiming again), in the pool's order; else empty."""
    dropped = [entry["id"] for entry in state["instances"] if entry["id"] in dead]
    ready = [entry for entry in state["instances"] if entry["id"] not in dead and is_ready(entry)]
    entry = next((entry for entry in ready if trusted or entry["id"] in alive), None)
    unchecked = [] if entry is not None else [item["id"] for item in ready if item["id"] not in alive]
    return dropped, entry, unchecked
