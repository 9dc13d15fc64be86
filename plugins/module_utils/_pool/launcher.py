# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Launching pool instances: Spot first across (instance type x zone/subnet) offerings, On-Demand only for
what Spot could not supply, every instance tagged at launch so the pool can always be found again from EC2.

One RunInstances per offering (MinCount=1, so a partly available offering still gives what it has). The
count is spread over the zones of the preferred instance type first: a pool that lives in one zone loses every
instance to one capacity event. What an offering cannot supply moves on to the next offering.
"""

from __future__ import annotations

import uuid

from . import ec2
from .errors import InvalidRequest
from .errors import LaunchError
from .state import isoformat
from .state import utcnow

SPOT = "spot"
ON_DEMAND = "on-demand"

# EC2 error codes by what they say about where to launch next.
# No capacity for this (market, type, zone): try the next offering.
CAPACITY_ERRORS = frozenset((
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacityOnHost",
    "InsufficientReservedInstanceCapacity", "UnfulfillableCapacity", "Unsupported",
    "InsufficientFreeAddressesInSubnet", "SpotMaxPriceTooLow",
))
# The account cannot get more of this market now: no point trying other Spot offerings.
ACCOUNT_LIMIT_ERRORS = frozenset((
    "MaxSpotInstanceCountExceeded", "VcpuLimitExceeded", "MaxFleetCountExceeded", "InstanceLimitExceeded",
))
# Codes after which an On-Demand fallback is allowed (the `fallback_on` option may replace this).
DEFAULT_FALLBACK_ON = tuple(sorted(CAPACITY_ERRORS | ACCOUNT_LIMIT_ERRORS))


class Offering:
    """Where one RunInstances goes: market, instance type, and a zone or a subnet."""

    __slots__ = ("market", "instance_type", "zone", "subnet_id")

    def __init__(self, market, instance_type, zone=None, subnet_id=None):
        self.market = market
        self.instance_type = instance_type
        self.zone = zone
        self.subnet_id = subnet_id

    @property
    def location(self):
        return self.subnet_id or self.zone

    def __repr__(self):
        return "Offering(%s, %s, %s)" % (self.market, self.instance_type, self.location)

    def as_dict(self):
        return {"market": self.market, "instance_type": self.instance_type, "zone": self.zone,
                "subnet_id": self.subnet_id}


def offerings(launch, market):
    """Offerings in preference order: the first instance type in every zone, then the next type, ..."""
    locations = [(None, subnet) for subnet in launch.get("subnet_ids") or []] or \
                [(zone, None) for zone in launch.get("availability_zones") or [None]]
    return [Offering(market, itype, zone, subnet)
            for itype in launch["instance_types"] for zone, subnet in locations]


class LaunchResult:
    def __init__(self):
        self.entries = []
        self.errors = []  # (offering, error code, message)
        self.spot_disabled = None  # the account-limit code that turned Spot off, if any

    @property
    def ids(self):
        return [entry["id"] for entry in self.entries]

    def errors_as_dicts(self):
        return [dict(offering.as_dict(), code=code, message=message) for offering, code, message in self.errors]


class Launcher:
    """Launches pool instances for one pool's launch specification (the state file's `launch`)."""

    def __init__(self, client, pool_name, launch):
        self.client = client
        self.pool_name = pool_name
        self.launch = launch
        self.fallback_on = frozenset(launch.get("fallback_on") or DEFAULT_FALLBACK_ON)

    def launch_instances(self, count):
        """Launch up to `count` instances: Spot first; On-Demand for the rest if `fallback` allows it."""
        result = LaunchResult()
        if count <= 0:
            return result
        remaining = self._launch_market(SPOT, count, result)
        spot_failures = {code for _, code, _ in result.errors}
        if remaining and self.launch.get("fallback", True) and (spot_failures & self.fallback_on):
            remaining = self._launch_market(ON_DEMAND, remaining, result)
        if remaining == count:
            raise LaunchError(
                "no instance could be launched for pool '%s': %s" % (self.pool_name, "; ".join(
                    "%s %s in %s: %s" % (o.market, o.instance_type, o.location, code) for o, code, _ in result.errors)),
                launch_errors=result.errors_as_dicts(),
            )
        return result

    def _launch_market(self, market, count, result):
        pending = offerings(self.launch, market)
        remaining = count
        while remaining > 0 and pending:
            offering = pending.pop(0)
            # Spread over the locations still untried for this instance type.
            same_type_left = 1 + sum(1 for other in pending if other.instance_type == offering.instance_type)
            ask = -(-remaining // same_type_left)
            try:
                instances = ec2.run_instances(self.client, **self.run_params(offering, ask))
            except ec2.Ec2Error as exc:
                if exc.code in CAPACITY_ERRORS:
                    result.errors.append((offering, exc.code, exc.message))
                    continue
                if exc.code in ACCOUNT_LIMIT_ERRORS:
                    result.errors.append((offering, exc.code, exc.message))
                    if market == SPOT:
                        result.spot_disabled = exc.code
                    break
                raise
            for instance in instances:
                result.entries.append(self.entry(instance, market))
            remaining -= len(instances)
            if 0 < len(instances) < ask:
                # A partial answer (MinCount=1) means the offering had some capacity: ask it again after the
                # others rather than giving up on it. Each re-ask launches at least one instance or fails, so
                # the loop ends.
                pending.append(offering)
        return remaining

    def run_params(self, offering, count):
        launch = self.launch
        kind = "spot" if offering.market == SPOT else "fallback"
        tags = dict(launch.get("tags") or {})
        tags.setdefault("Name", "ec2spot-%s" % self.pool_name)
        tags[ec2.POOL_TAG] = self.pool_name
        tags[ec2.TYPE_TAG] = kind
        params = {
            "MinCount": 1,
            "MaxCount": count,
            "InstanceType": offering.instance_type,
            # Retries of this same call (throttling) reuse the token, so EC2 never launches twice for it.
            "ClientToken": "ec2spot-%s" % uuid.uuid4().hex,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": ec2.tag_list(tags)},
                {"ResourceType": "volume", "Tags": ec2.tag_list(tags)},
            ],
        }
        if launch.get("launch_template"):
            params["LaunchTemplate"] = dict(launch["launch_template"])
        if launch.get("image_id"):
            params["ImageId"] = launch["image_id"]
        if offering.subnet_id:
            params["SubnetId"] = offering.subnet_id
        elif offering.zone:
            params["Placement"] = {"AvailabilityZone": offering.zone}
        if launch.get("security_group_ids"):
            params["SecurityGroupIds"] = list(launch["security_group_ids"])
        if launch.get("key_name"):
            params["KeyName"] = launch["key_name"]
        profile = launch.get("iam_instance_profile")
        if profile:
            params["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        if launch.get("user_data"):
            params["UserData"] = launch["user_data"]
        if offering.market == SPOT:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        return params

    @staticmethod
    def entry(instance, market):
        summary = ec2.instance_summary(instance)
        return {
            "id": summary["id"],
            "ip": None,  # set once the instance runs and has an address: an entry without one is never handed out
            "public_ip": None,
            "private_ip": summary["private_ip"],
            "type": "spot" if market == SPOT else "fallback",
            "availability_zone": summary["availability_zone"],
            "instance_type": summary["instance_type"],
            "launched_at": isoformat(utcnow()),
        }


def validate_launch(client, launch):
    """Check zones, subnets and instance types against EC2 before anything is launched."""
    if launch.get("availability_zones"):
        known = {zone["ZoneName"]: zone for zone in ec2.describe_availability_zones(client)}
        unknown = [zone for zone in launch["availability_zones"] if zone not in known]
        if unknown:
            raise InvalidRequest("unknown availability zone(s) %s; this region has %s"
                                 % (", ".join(unknown), ", ".join(sorted(known))))
    if launch.get("subnet_ids"):
        try:
            ec2.describe_subnets(client, launch["subnet_ids"])
        except ec2.Ec2Error as exc:
            raise InvalidRequest("subnet_ids: %s" % exc.message, error_code=exc.code)
    if launch.get("instance_types"):
        try:
            found = {item["InstanceType"] for item in ec2.describe_instance_types(client, launch["instance_types"])}
        except ec2.Ec2Error as exc:
            if exc.code.startswith("InvalidInstanceType") or exc.code == "InvalidParameterValue":
                raise InvalidRequest("instance_types: %s" % exc.message, error_code=exc.code)
            raise
        missing = [itype for itype in launch["instance_types"] if itype not in found]
        if missing:
            raise InvalidRequest("instance_types: unknown instance type(s) %s" % ", ".join(missing))
