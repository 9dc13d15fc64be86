"""Pool entries for tests, made by the collection's own constructors (entries.py), never written out by hand.

`pool_entry(7)` is a ready Spot entry with documentation addresses (never contacted); `ready=False` gives one that
EC2 has not reported running yet; every other field can be set by name.
"""

from __future__ import annotations

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import entries

LAUNCHED_AT = "2026-11-22T10:00:00Z"


def instance_id(number):
    return "i-%017x" % number


def pool_entry(number_or_id, ready=True, kind=entries.SPOT, public_ip=None, private_ip=None, **fields):
    """A pool entry as the refill writes it. `number_or_id`: an int (addresses derived from it) or an instance id."""
    number = number_or_id if isinstance(number_or_id, int) else 1
    ident = instance_id(number_or_id) if isinstance(number_or_id, int) else number_or_id
    entry = entries.new_entry(ident, kind, fields.pop("instance_type", "t3.micro"),
                              fields.pop("availability_zone", "us-east-1a"), fields.pop("subnet_id", None),
                              fields.pop("launched_at", LAUNCHED_AT))
    if not ready and private_ip is not None:
        fields["private_ip"] = private_ip
    if ready:
        entries.fill_in(entry, {"state": "running",
                                "public_ip": public_ip if public_ip is not None else "198.51.100.%d" % (number % 250 + 1),
                                "private_ip": private_ip or "10.0.%d.%d" % (number // 250 % 250, number % 250 + 1)})
    entry.update(fields)
    return entry
