# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One pool entry, one lease, and the counts every result shows: defined here and nowhere else.

An **entry** is one idle instance of the pool, a plain dict (it is stored as JSON as it is), with the fields of
ENTRY_FIELDS:

- ``id``: the EC2 instance id;
- ``type``: ``spot``, or ``fallback`` for an On-Demand instance launched because Spot failed;
- ``ip``, ``public_ip``, ``private_ip``: its addresses, filled in once EC2 reports it running; ``ip`` is the
  public address when it has one, else the private one. **An entry is ready (is_ready) when it has an ``ip``**:
  only a ready entry is ever handed out;
- ``availability_zone``, ``subnet_id``, ``instance_type``: the offering it was launched in;
- ``launched_at``: when the pool launched it (or first saw it), as ``2026-11-22T10:00:00Z``.

A **lease** is an entry that was handed out, with LEASE_FIELDS besides: ``leased_at``, ``lease_id`` (the
caller's token: a release that names it ends nothing else) and ``expires_at`` (absent for a lease that never
expires). Leases rebuilt from tags have no ``lease_id``.

Plain dicts, not a TypedDict or dataclass: this module is on the hand-out path of ``spot_pool_get``, and the
``typing`` import alone costs about 3 ms there (python -X importtime). The constructors below are the only places
that make an entry or a lease.
"""

from __future__ import annotations

import datetime
import os

from .timefmt import isoformat

SPOT = "spot"
FALLBACK = "fallback"
KINDS = (SPOT, FALLBACK)

ENTRY_FIELDS = ("id", "type", "ip", "public_ip", "private_ip", "availability_zone", "subnet_id", "instance_type",
                "launched_at")
LEASE_FIELDS = ("leased_at", "lease_id", "expires_at")


def new_entry(instance_id, kind=SPOT, instance_type=None, availability_zone=None, subnet_id=None, launched_at=None):
    """An entry for an instance just launched (or found): not ready until fill_in() sees it running."""
    return {
        "id": instance_id,
        "type": kind or SPOT,
        "ip": None,
        "public_ip": None,
        "private_ip": None,
        "availability_zone": availability_zone,
        "subnet_id": subnet_id,
        "instance_type": instance_type,
        "launched_at": launched_at,
    }


def entry_from_instance(info, kind=None, now=None):
    """An entry from an EC2 description (ec2.instance_summary()): addresses filled in if it runs. `kind` defaults
    to spot; `launched_at` is EC2's launch time, else `now`."""
    launched = info.get("launch_time") or now
    entry = new_entry(info["id"], kind or SPOT, info.get("instance_type"), info.get("availability_zone"),
                      info.get("subnet_id"), isoformat(launched) if launched is not None else None)
    fill_in(entry, info)
    return entry


def fill_in(entry, info):
    """Bring an entry up to date with its EC2 description: its addresses once it runs. Returns the entry."""
    if info is not None and info.get("state") == "running":
        entry["public_ip"] = info.get("public_ip")
        entry["private_ip"] = info.get("private_ip")
        entry["ip"] = info.get("public_ip") or info.get("private_ip")
        entry["availability_zone"] = info.get("availability_zone") or entry.get("availability_zone")
    return entry


def is_ready(entry):
    """Ready to hand out: EC2 reported it running with an address."""
    return bool(entry.get("ip"))


def is_fallback(entry):
    return entry.get("type") == FALLBACK


def new_lease(entry, now, lease_ttl, lease_id=None):
    """The lease of a hand-out of `entry` at `now`, expiring `lease_ttl` seconds later (0 or None: never)."""
    lease = dict(entry, leased_at=isoformat(now), lease_id=lease_id or os.urandom(16).hex())
    if lease_ttl:
        lease["expires_at"] = isoformat(now + datetime.timedelta(seconds=lease_ttl))
    return lease


def address_of(lease, address="public"):
    """The address a caller asked for: `private`, or the public one (the private one when it has none)."""
    if address == "private":
        return lease.get("private_ip")
    return lease.get("public_ip") or lease.get("ip")


def counts(state):
    """The counts every result shows (None: no pool):

    - ``target``: the pool's size;
    - ``ready``: idle entries ready to hand out; ``pending``: idle entries not ready yet;
    - ``leased``: leases held;
    - ``spot``, ``fallback``: **idle** entries of each type (leased instances are not counted in them): what the
      pool holds right now, so ``fallback`` > 0 means the refill still has fallbacks to replace by Spot."""
    if not state:
        return {"target": 0, "ready": 0, "pending": 0, "leased": 0, "spot": 0, "fallback": 0}
    instances = state["instances"]
    ready = sum(1 for entry in instances if is_ready(entry))
    fallback = sum(1 for entry in instances if is_fallback(entry))
    return {
        "target": state["target_size"],
        "ready": ready,
        "pending": len(instances) - ready,
        "leased": len(state["leases"]),
        "spot": sum(1 for entry in instances if entry.get("type") == SPOT),
        "fallback": fallback,
    }


def is_whole(pool_counts):
    """Every slot of the pool holds an instance that is ready to hand out (`pool_counts`: counts())."""
    return pool_counts.get("pending", 0) == 0 and pool_counts.get("ready", 0) >= pool_counts.get("target", 0)
