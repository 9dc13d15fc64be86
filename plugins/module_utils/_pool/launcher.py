# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Launching pool instances: one instant CreateFleet for Spot over every (instance type x zone/subnet)
offering that is not cooling down, then, for what Spot could not supply and only after an error in `fallback_on`
(or a Spot interruption), one instant CreateFleet On-Demand (`type: fallback`). Every instance is tagged at launch.
What to launch comes from the pool's launch settings, `launch` (the state file's `launch`).

The per-override `Errors` of a fleet answer say which offerings failed and why; the error's scope decides what
is remembered (Cooldowns, kept in the state file): a capacity error cools down that (market, type, zone), a full
subnet cools down the subnet, an account limit turns Spot off. Throttling of the call itself is retried by _aws/ec2.py
(a capped, jittered backoff); once those attempts are used up it is raised, like anything else (authorisation,
validation).

Fleets need a launch template: the user's, or one the pool owns (`ec2spot-<pool>-<pool id>`), made from
`image_id` & co. Before an On-Demand fleet, stopped fallbacks that this pool kept for reuse are started instead
(faster than a launch, and they would cost storage for nothing otherwise).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import uuid

from ._aws import ec2
from .domain import entries
from .domain import identity
from .domain import quotas
from .domain.defaults import ALLOCATION_STRATEGIES
from .domain.defaults import ALLOCATION_STRATEGY
from .domain.defaults import COOLDOWN_SECONDS
from .domain.entries import new_entry
from .domain.errors import InvalidRequest
from .domain.errors import LaunchError
from .domain.refill_plan import INTERRUPTED
from .domain.timefmt import isoformat
from .domain.timefmt import parse_time
from .domain.timefmt import utcnow

SPOT = "spot"
ON_DEMAND = "on-demand"

# No capacity for this (market, type, zone), or no such offering there: cool that offering down, try the others.
CAPACITY_ERRORS = frozenset((
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacityOnHost",
    "InsufficientReservedInstanceCapacity", "UnfulfillableCapacity", "Unsupported",
))
# The subnet has no free address: cool the subnet down for every type and market.
SUBNET_ERRORS = frozenset(("InsufficientFreeAddressesInSubnet",))
# No Spot for now (the account's limits, or a max price under the Spot price): Spot off for the cool-down,
# On-Demand at once.
ACCOUNT_LIMIT_ERRORS = frozenset((
    "MaxSpotInstanceCountExceeded", "VcpuLimitExceeded", "MaxFleetCountExceeded", "SpotMaxPriceTooLow",
    "InstanceLimitExceeded",
))
DEFAULT_FALLBACK_ON = tuple(sorted(CAPACITY_ERRORS | SUBNET_ERRORS | ACCOUNT_LIMIT_ERRORS))


class Offering:
    """Where capacity comes from: market, instance type, and a zone or a subnet."""

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

    def override(self, priority):
        out = {"InstanceType": self.instance_type, "Priority": float(priority)}
        if self.subnet_id:
            out["SubnetId"] = self.subnet_id
        elif self.zone:
            out["AvailabilityZone"] = self.zone
        return out


def offerings(launch, market):
    """Offerings in preference order: the first instance type in every zone, then the next type, ..."""
    locations = [(None, subnet) for subnet in launch.get("subnet_ids") or []] or \
                [(zone, None) for zone in launch.get("availability_zones") or [None]]
    return [Offering(market, itype, zone, subnet)
            for itype in launch["instance_types"] for zone, subnet in locations]


class Cooldowns:
    """What failed recently and must not be asked again before `until`: the state file's `cooldowns` list.

    Entries: {"scope": "offering"|"subnet"|"market", "market", "instance_type", "location", "code", "until"}.
    """

    def __init__(self, entries=None, now=None):
        self.now = now or utcnow()
        self.entries = [dict(e) for e in entries or [] if (parse_time(e.get("until")) or self.now) > self.now]

    def add(self, scope, code, seconds, market=None, instance_type=None, location=None):
        until = isoformat(self.now + datetime.timedelta(seconds=seconds))
        key = (scope, market, instance_type, location)
        self.entries = [e for e in self.entries
                        if (e["scope"], e.get("market"), e.get("instance_type"), e.get("location")) != key]
        self.entries.append({"scope": scope, "market": market, "instance_type": instance_type,
                             "location": location, "code": code, "until": until})

    def blocks(self, offering):
        for entry in self.entries:
            if entry["scope"] == "market" and entry["market"] == offering.market:
                return entry
            if entry["scope"] == "subnet" and entry["location"] == offering.location:
                return entry
            if entry["scope"] == "offering" and (entry["market"], entry["instance_type"], entry["location"]) == \
                    (offering.market, offering.instance_type, offering.location):
                return entry
        return None

    def market_off(self, market):
        return next((e for e in self.entries if e["scope"] == "market" and e["market"] == market), None)


class LaunchResult:
    def __init__(self):
        self.entries = []
        self.errors = []  # {"market", "instance_type", "zone", "subnet_id", "code", "message"}
        self.reused = []  # stopped fallbacks started again instead of an On-Demand launch

    @property
    def ids(self):
        return [entry["id"] for entry in self.entries]

    def codes(self, market=None):
        return {e["code"] for e in self.errors if market is None or e["market"] == market}


def template_data(pool_name, pool_id, launch):
    """LaunchTemplateData for a pool-owned template made from init's options."""
    volume_tags = dict(launch.get("tags") or {}, **{ec2.POOL_TAG: pool_name, ec2.POOL_ID_TAG: pool_id})
    data = {"ImageId": launch["image_id"],
            # IMDSv2 only: the drain worker on the instance reads Spot notices with session tokens.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "volume", "Tags": ec2.tag_list(volume_tags)}]}
    if launch.get("security_group_ids"):
        data["SecurityGroupIds"] = list(launch["security_group_ids"])
    if launch.get("key_name"):
        data["KeyName"] = launch["key_name"]
    profile = launch.get("iam_instance_profile")
    if profile:
        data["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
    if launch.get("user_data"):
        data["UserData"] = base64.b64encode(launch["user_data"].encode()).decode()
    return data


def user_template_exists(client, template):
    """Whether EC2 knows the launch template {"LaunchTemplateId"|"LaunchTemplateName", ...} names."""
    if template.get("LaunchTemplateId"):
        return ec2.find_launch_template_by_id(client, template["LaunchTemplateId"]) is not None
    return ec2.find_launch_template(client, template.get("LaunchTemplateName")) is not None


def ensure_template(client, pool_name, pool_id, launch, made=None):
    """The launch template fleets launch from: {"LaunchTemplateId"|"LaunchTemplateName", "Version", "owned"}.

    A user's launch template is used as given, once EC2 confirms it exists. From `image_id` and the other
    options, the pool makes its own template `ec2spot-<pool>-<pool id>` (tagged with the pool's name and id),
    and a new version of it when those options change (`launch["template"]` holds what was used last); if that
    template was deleted outside the pool, it is made again. terminate_pool deletes it. The id of a template made
    here is appended to `made` (a list), for a caller that must remove it again when it fails before recording it."""
    if launch.get("launch_template") and not launch.get("image_id"):
        template = dict(launch["launch_template"])
        template.setdefault("Version", "$Default")
        if not user_template_exists(client, template):
            raise InvalidRequest(
                "launch template %s does not exist (any more) in this region: create it again, or run "
                "ec2spot.pool.spot_pool_init for pool '%s' with an existing launch_template (or image_id)"
                % (template.get("LaunchTemplateId") or template.get("LaunchTemplateName"), pool_name),
                error_code="InvalidLaunchTemplateId.NotFound")
        return dict(template, owned=False)
    if not launch.get("image_id"):
        raise InvalidRequest("one of image_id and launch_template is required")
    if not pool_id:
        raise InvalidRequest("pool '%s' has no pool id: its template cannot be named" % pool_name)
    data = template_data(pool_name, pool_id, launch)
    # Recorded as the template's "spec" (state file) and its ec2spot:spec tag: names kept, they are the contract.
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    previous = launch.get("template") or {}
    existing = None
    if previous.get("owned") and previous.get("LaunchTemplateId"):
        # By id: the template the pool recorded (a pool made before pool ids has one without the id in its name).
        existing = ec2.find_launch_template_by_id(client, previous["LaunchTemplateId"])
    if existing is None:
        # By this pool's own name: made by a run that crashed before recording it. No other pool has this name.
        existing = ec2.find_launch_template(client, identity.template_name(pool_name, pool_id))
    if existing is None:
        created = ec2.create_launch_template(client, identity.template_name(pool_name, pool_id), data,
                                             {ec2.POOL_TAG: pool_name, ec2.POOL_ID_TAG: pool_id,
                                              "ec2spot:spec": digest})
        if made is not None:
            made.append(created["LaunchTemplateId"])
        return {"LaunchTemplateId": created["LaunchTemplateId"], "Version": str(created["LatestVersionNumber"]),
                "owned": True, "spec": digest}
    if previous.get("LaunchTemplateId") == existing["LaunchTemplateId"] and previous.get("spec") == digest:
        return previous
    version = ec2.create_launch_template_version(client, existing["LaunchTemplateId"], data)
    return {"LaunchTemplateId": existing["LaunchTemplateId"], "Version": str(version["VersionNumber"]),
            "owned": True, "spec": digest}


class Launcher:
    """Launches pool instances with one pool's launch settings (`launch`, the state file's `launch`)."""

    def __init__(self, client, pool_name, launch, cooldowns=None, before_call=None, pool_id=None, reusable=None):
        self.client = client
        self.pool_name = pool_name
        self.pool_id = pool_id
        # Stopped fallbacks of this pool to start before launching On-Demand (identity.reusable_fallbacks).
        self.reusable = list(reusable or [])
        self.launch = launch
        self.cooldowns = cooldowns or Cooldowns()
        self.cooldown_seconds = launch.get("cooldown_seconds", COOLDOWN_SECONDS)
        self.fallback_on = frozenset(launch.get("fallback_on") or DEFAULT_FALLBACK_ON)
        # Called with (token, request) before each CreateFleet, so the caller can record the token first: a
        # crash between the call and the state write is then replayed (same token, same answer), not repeated.
        self.before_call = before_call or (lambda token, request: None)
        # Tokens whose request is settled: answered, or refused by EC2. Others stay pending to be replayed.
        self.settled = []

    def launch_instances(self, count, extra_spot=0):
        """Launch `count` instances (Spot, then On-Demand for the rest if allowed), plus up to `extra_spot` more
        Spot ones (to replace fallbacks: never launched On-Demand)."""
        result = LaunchResult()
        if count + extra_spot <= 0:
            return result
        spot_offers = [o for o in offerings(self.launch, SPOT) if not self.cooldowns.blocks(o)]
        got_spot = 0
        if spot_offers:
            got_spot = self._fleet(SPOT, count + extra_spot, spot_offers, result)
        remaining = max(0, count - got_spot)
        # Spot "failed" when it answered with an error we fall back on, or when every Spot offering is cooling
        # down after such an error. Spot that simply has nothing to say (no offering configured) is no reason.
        recent = {e["code"] for e in self.cooldowns.entries if e.get("market") in (SPOT, None)}
        failures = result.codes(SPOT) | (recent if not spot_offers else set())
        # An interruption counts as the capacity error it is: that offering's Spot pool is being reclaimed.
        spot_failed = bool(failures & self.fallback_on) or INTERRUPTED in failures
        if remaining and self.launch.get("fallback", True) and spot_failed:
            remaining -= self.reuse_stopped(remaining, result)
            on_demand = [o for o in offerings(self.launch, ON_DEMAND) if not self.cooldowns.blocks(o)]
            if on_demand and remaining:
                self._fleet(ON_DEMAND, remaining, on_demand, result)
        if not result.entries and count > 0 and result.errors:
            raise LaunchError(
                "no instance could be launched for pool '%s': %s" % (self.pool_name, "; ".join(sorted(
                    "%s %s in %s: %s" % (e["market"], e["instance_type"], e["subnet_id"] or e["zone"], e["code"])
                    for e in result.errors))),
                launch_errors=result.errors,
            )
        return result

    def fleet_request(self, market, count, offers):
        kind = "spot" if market == SPOT else "fallback"
        tags = dict(self.launch.get("tags") or {})
        tags.setdefault("Name", "ec2spot-%s" % self.pool_name)
        tags[ec2.POOL_TAG] = self.pool_name
        if self.pool_id:
            tags[ec2.POOL_ID_TAG] = self.pool_id
        tags[ec2.TYPE_TAG] = kind
        template = {key: value for key, value in (self.launch.get("template") or {}).items()
                    if key in ("LaunchTemplateId", "LaunchTemplateName", "Version")}
        request = {
            "Type": "instant",
            "ClientToken": "ec2spot-%s" % uuid.uuid4().hex,
            "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": template,
                                       "Overrides": [o.override(n) for n, o in enumerate(offers)]}],
            "TargetCapacitySpecification": {"TotalTargetCapacity": count, "DefaultTargetCapacityType": market},
            # Instance tags only: an instant fleet tags what it launches. (No spot-instances-request tag: that
            # resource does not exist for On-Demand, and tagging it would fail the whole On-Demand launch.)
            "TagSpecifications": [{"ResourceType": "instance", "Tags": ec2.tag_list(tags)}],
        }
        if market == SPOT:
            request["TargetCapacitySpecification"]["SpotTargetCapacity"] = count
            request["SpotOptions"] = {"AllocationStrategy": self.launch.get("allocation_strategy")
                                      or ALLOCATION_STRATEGY, "InstanceInterruptionBehavior": "terminate"}
        else:
            request["TargetCapacitySpecification"]["OnDemandTargetCapacity"] = count
            request["OnDemandOptions"] = {"AllocationStrategy": "prioritized"}  # the user's order of types
        return request

    def _reuse_offering(self, item):
        """The On-Demand offering a stopped fallback stands for, as the pool names its offerings."""
        if self.launch.get("subnet_ids"):
            return Offering(ON_DEMAND, item["instance_type"], subnet_id=item.get("subnet_id"))
        if self.launch.get("availability_zones"):
            return Offering(ON_DEMAND, item["instance_type"], zone=item.get("availability_zone"))
        return Offering(ON_DEMAND, item["instance_type"])

    def reuse_stopped(self, count, result):
        """Start up to `count` stopped fallbacks kept for reuse; returns how many. Their keep/lease marks go first:
        a start that then fails leaves a stopped instance in no pool, which the orphan sweep ends, whereas a
        started one still marked as kept would run unseen."""
        chosen = []
        for item in self.reusable:
            if len(chosen) == count:
                break
            offering = self._reuse_offering(item)
            if not self.cooldowns.blocks(offering):
                chosen.append((item, offering))
        if not chosen:
            return 0
        ids = [item["id"] for item, _offering in chosen]
        self.reusable = [item for item in self.reusable if item["id"] not in ids]
        ec2.delete_tags(self.client, ids, (ec2.RELEASED_TAG, ec2.LEASED_TAG, ec2.ORPHAN_TAG))
        try:
            ec2.start_instances(self.client, ids)
        except ec2.Ec2Error as exc:
            if not exc.refused:
                raise
            # Capacity or state errors: keep them for a later try, launch On-Demand instead now.
            ec2.create_tags(self.client, ids, {ec2.RELEASED_TAG: isoformat(utcnow())})
            result.errors.append(dict(chosen[0][1].as_dict(), code=exc.code, message=exc.message))
            return 0
        for item, offering in chosen:
            entry = entry_for(item["id"], offering)
            entry["availability_zone"] = item.get("availability_zone")
            entry["subnet_id"] = item.get("subnet_id")
            result.entries.append(entry)
            result.reused.append(item["id"])
        return len(chosen)

    def _fleet(self, market, count, offers, result):
        request = self.fleet_request(market, count, offers)
        self.before_call(request["ClientToken"], request)
        answer = self.create_fleet(request)
        return self.absorb(answer, result)

    def create_fleet(self, request):
        """CreateFleet with a settled-or-pending account of its token (see `settled`)."""
        try:
            answer = ec2.create_fleet(self.client, **request)
        except ec2.Ec2Error as exc:
            if exc.refused:
                self.settled.append(request["ClientToken"])
            raise
        self.settled.append(request["ClientToken"])
        return answer

    def absorb(self, answer, result):
        """Take a fleet answer (fresh, or replayed after a crash): entries for the instances, cool-downs for the
        errors. Returns how many instances it launched."""
        launched = 0
        for item in answer.get("Instances") or []:
            offering = _offering_of(item)
            for instance_id in item.get("InstanceIds") or []:
                result.entries.append(entry_for(instance_id, offering))
                launched += 1
        for error in answer.get("Errors") or []:
            offering = _offering_of(error)
            code = error.get("ErrorCode") or "Unknown"
            result.errors.append(dict(offering.as_dict(), code=code, message=error.get("ErrorMessage")))
            self._remember(offering, code)
        return launched

    def _remember(self, offering, code):
        seconds = self.cooldown_seconds
        if code in CAPACITY_ERRORS:
            self.cooldowns.add("offering", code, seconds, offering.market, offering.instance_type, offering.location)
        elif code in SUBNET_ERRORS:
            self.cooldowns.add("subnet", code, seconds, location=offering.location)
        elif code in ACCOUNT_LIMIT_ERRORS and offering.market == SPOT:
            self.cooldowns.add("market", code, seconds, market=SPOT)


def _offering_of(item):
    overrides = (item.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
    market = SPOT if item.get("Lifecycle") == "spot" else ON_DEMAND
    return Offering(market, overrides.get("InstanceType") or item.get("InstanceType"),
                    overrides.get("AvailabilityZone"), overrides.get("SubnetId"))


def entry_for(instance_id, offering):
    """The pool entry of an instance this launcher just launched in `offering` (not ready yet)."""
    return new_entry(instance_id, entries.SPOT if offering.market == SPOT else entries.FALLBACK,
                     offering.instance_type, offering.zone, offering.subnet_id, isoformat(utcnow()))


def validate_launch(client, launch):
    """Check zones, subnets, instance types and the launch template against EC2 before anything is launched."""
    if launch.get("allocation_strategy") and launch["allocation_strategy"] not in ALLOCATION_STRATEGIES:
        raise InvalidRequest("allocation_strategy must be one of %s" % ", ".join(ALLOCATION_STRATEGIES))
    template = launch.get("launch_template")
    if template and not launch.get("image_id"):
        if not (template.get("LaunchTemplateId") or template.get("LaunchTemplateName")):
            raise InvalidRequest("launch_template needs an id or a name")
        if not user_template_exists(client, template):
            raise InvalidRequest("launch_template %s does not exist in region %s; create it first, or give "
                                 "image_id instead"
                                 % (template.get("LaunchTemplateId") or template.get("LaunchTemplateName"),
                                    launch.get("region") or "?"),
                                 error_code="InvalidLaunchTemplateId.NotFound")
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


def account_limit_problem(client, quotas_client, launch, count, warn):
    """Why `count` more instances of `launch` surely cannot fit the account's vCPU quotas, or None when they may.

    Each instance type counts against the quota of its family and market (quotas.quota_for): Spot, and with
    fallback On-Demand too. A quota that cannot be read (no permission, a partition or endpoint without it, a family
    without a known quota) is passed to `warn` and does not block. No Service Quotas client: no check."""
    if count <= 0 or quotas_client is None:
        return None
    choices = [(itype, spot) for itype in launch["instance_types"]
               for spot in ((True, False) if launch.get("fallback", True) else (True,))]
    limits, errors = _read_quotas(quotas_client, choices)
    verdict = quotas.Fit(None, quotas.unknown(choices, limits, errors))
    if not verdict.unknown:
        vcpus, used = _vcpus_in_use(client, choices, set(limits))
        verdict = quotas.fit(count, choices, limits, vcpus, used)
    if verdict.unknown:
        warn("the account's vCPU quotas could not all be read (%s); launching without checking them"
             % "; ".join(verdict.unknown))
    return verdict.problem


def _read_quotas(quotas_client, choices):
    """({code: vCPUs} of the quotas of `choices` that could be read, {code: error code} of those that could not).
    Any failure leaves the quota unknown (AccessDenied; NoSuchResource in a partition or an emulator without it):
    the check is advisory. The default quota (GetAWSDefaultServiceQuota) is no stand-in: the account's applied
    quota can be higher, and a refusal must be sure."""
    limits, errors = {}, {}
    for code in sorted({quota.code for quota in (quotas.quota_for(*choice) for choice in choices) if quota}):
        try:
            limits[code] = ec2.get_service_quota(quotas_client, code)
        except ec2.Ec2Error as exc:
            errors[code] = exc.code
    return limits, errors


def _vcpus_in_use(client, choices, codes):
    """({instance type: vCPUs}, {quota code: vCPUs of the running and pending instances counted against it}) for
    the quotas `codes`, over every instance of the region (the pool's and any other)."""
    live = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    counted = []
    for item in ec2.describe_instances(client, filters=live):
        quota = quotas.quota_for(item["InstanceType"], item.get("InstanceLifecycle") == "spot")
        if quota and quota.code in codes:
            counted.append((item["InstanceType"], quota.code))
    types = sorted({itype for itype, _spot in choices} | {itype for itype, _code in counted})
    vcpus = {item["InstanceType"]: item["VCpuInfo"]["DefaultVCpus"]
             for item in ec2.describe_instance_types(client, types)}
    used = {}
    for itype, code in counted:
        used[code] = used.get(code, 0) + vcpus.get(itype, 0)
    return vcpus, used
