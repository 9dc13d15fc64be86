"""The launcher against the moto server, with genuine EC2 errors injected by the fault proxy."""

from __future__ import annotations

import json
import time

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import ec2
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import LaunchError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import Cooldowns
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import Launcher
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import account_limit_problem
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import ensure_template
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import offerings
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import validate_launch
from tests.support.moto import AMI

POOL_ID = "0123456789abcdef"
SPOT_VCPU_QUOTA, ON_DEMAND_VCPU_QUOTA = "L-34B43A08", "L-1216C47A"  # the standard families' (see test_quotas.py)


@pytest.fixture
def client(proxy_client):
    return proxy_client


def launch(**overrides):
    """A pool's launch settings (the state file's `launch`), as init records them."""
    return dict({"image_id": AMI, "instance_types": ["t3.micro"], "availability_zones": ["us-east-1a", "us-east-1b"],
                 "tags": {"team": "ci"}, "fallback": True}, **overrides)


def described(client, ids):
    return {item["InstanceId"]: item for item in ec2.describe_instances(client, ids)}


def fleet_markets(fault_proxy):
    """The market of every CreateFleet sent, in order."""
    return [r.params["TargetCapacitySpecification.DefaultTargetCapacityType"]
            for r in fault_proxy.records("CreateFleet")]


def test_offerings_prefer_the_first_type_in_every_zone():
    got = [(o.market, o.instance_type, o.location) for o in offerings(
        launch(instance_types=["t3.micro", "t3a.micro"]), "spot")]
    assert got == [("spot", "t3.micro", "us-east-1a"), ("spot", "t3.micro", "us-east-1b"),
                   ("spot", "t3a.micro", "us-east-1a"), ("spot", "t3a.micro", "us-east-1b")]
    assert [o.location for o in offerings(launch(subnet_ids=["subnet-1"]), "spot")] == ["subnet-1"]


def prepared(client, pool="ci", **overrides):
    """Launch settings with the pool's template made, as the launcher gets them."""
    pool_launch = launch(**overrides)
    pool_launch["template"] = ensure_template(client, pool, POOL_ID, pool_launch)
    return pool_launch


def test_one_spot_fleet_over_every_offering_tagged_at_launch(client, fault_proxy):
    result = Launcher(client, "ci", prepared(client, instance_types=["t3.micro", "t3a.micro"])).launch_instances(3)
    assert len(result.entries) == 3 and not result.errors
    assert fault_proxy.count("CreateFleet") == 1
    request = fault_proxy.records("CreateFleet")[0].params
    assert request["Type"] == "instant" and request["SpotOptions.AllocationStrategy"] == "price-capacity-optimized"
    assert {(o.instance_type, o.availability_zone) for _record, o in fault_proxy.offering_requests()} >= {
        ("t3.micro", "us-east-1a"), ("t3.micro", "us-east-1b"), ("t3a.micro", "us-east-1a")}
    for instance in described(client, result.ids).values():
        tags = ec2.tag_dict(instance["Tags"])
        assert instance.get("InstanceLifecycle") == "spot"
        assert tags["ec2spot:pool"] == "ci" and tags["ec2spot:type"] == "spot" and tags["team"] == "ci"
    # Tags travel with the launch, never as a second CreateTags call that could fail apart.
    assert fault_proxy.count("CreateTags") == 0
    assert all(entry["ip"] is None and entry["type"] == "spot" for entry in result.entries)


def test_the_client_token_is_handed_out_before_the_call(client, fault_proxy):
    seen = []
    Launcher(client, "ci", prepared(client), before_call=lambda token, request: seen.append(
        (token, fault_proxy.count("CreateFleet")))).launch_instances(1)
    assert seen and seen[0][1] == 0
    assert fault_proxy.records("CreateFleet")[0].params["ClientToken"] == seen[0][0]


def test_a_dry_offering_cools_down_and_the_others_fill_in(client, fault_proxy):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot", instance_type="t3.micro",
                              availability_zone="us-east-1a")
    cooldowns = Cooldowns()
    result = Launcher(client, "ci", prepared(client), cooldowns).launch_instances(2)
    assert [e["type"] for e in result.entries] == ["spot", "spot"]
    assert {e["availability_zone"] for e in result.entries} == {"us-east-1b"}
    assert [(e["scope"], e["location"], e["code"]) for e in cooldowns.entries] == [
        ("offering", "us-east-1a", "InsufficientInstanceCapacity")]
    # During the cool-down the offering is not even asked.
    since = time.time()
    Launcher(client, "ci", prepared(client), cooldowns).launch_instances(1)
    assert fault_proxy.offering_requests(availability_zone="us-east-1a", since=since) == []


def test_on_demand_fallback_only_for_what_spot_could_not_supply(client, fault_proxy):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    result = Launcher(client, "ci", prepared(client)).launch_instances(2)
    assert [e["type"] for e in result.entries] == ["fallback", "fallback"]
    for instance in described(client, result.ids).values():
        assert "InstanceLifecycle" not in instance
        assert ec2.tag_dict(instance["Tags"])["ec2spot:type"] == "fallback"
    on_demand = [r for r in fault_proxy.records("CreateFleet")
                 if r.params["TargetCapacitySpecification.DefaultTargetCapacityType"] == "on-demand"][0]
    # Never a spot-instances-request tag on an On-Demand launch.
    assert "spot-instances-request" not in json.dumps(on_demand.params)


def test_an_account_limit_turns_spot_off_and_goes_on_demand_at_once(client, fault_proxy):
    fault_proxy.fail_offering("MaxSpotInstanceCountExceeded", market="spot")
    cooldowns = Cooldowns()
    result = Launcher(client, "ci", prepared(client, instance_types=["t3.micro", "t3a.micro"]),
                      cooldowns).launch_instances(1)
    assert [e["type"] for e in result.entries] == ["fallback"]
    assert cooldowns.market_off("spot")["code"] == "MaxSpotInstanceCountExceeded"
    since = time.time()
    again = Launcher(client, "ci", prepared(client), cooldowns).launch_instances(1)
    assert [e["type"] for e in again.entries] == ["fallback"]
    assert fault_proxy.offering_requests(market="spot", since=since) == []


def test_a_full_subnet_cools_down_the_subnet(client, ec2, fault_proxy):
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]
               for cidr, zone in (("10.9.1.0/24", "us-east-1a"), ("10.9.2.0/24", "us-east-1b"))]
    fault_proxy.fail_offering("InsufficientFreeAddressesInSubnet", subnet_id=subnets[0])
    cooldowns = Cooldowns()
    pool_launch = prepared(client, availability_zones=None, subnet_ids=subnets)
    result = Launcher(client, "ci", pool_launch, cooldowns).launch_instances(1)
    assert len(result.entries) == 1
    assert [(e["scope"], e["location"]) for e in cooldowns.entries] == [("subnet", subnets[0])]
    assert all(cooldowns.blocks(o) for o in offerings(pool_launch, "on-demand") if o.subnet_id == subnets[0])


def test_without_fallback_a_spot_drought_is_a_launch_error(client, fault_proxy):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    with pytest.raises(LaunchError) as err:
        Launcher(client, "ci", prepared(client, fallback=False)).launch_instances(2)
    assert "InsufficientInstanceCapacity" in err.value.message
    assert fleet_markets(fault_proxy) == ["spot"]
    assert ec2.describe_pool_instances(client, "ci") == []


def test_errors_not_in_fallback_on_do_not_fall_back(client, fault_proxy):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    with pytest.raises(LaunchError) as err:
        Launcher(client, "ci", prepared(client, fallback_on=["VcpuLimitExceeded"])).launch_instances(1)
    assert "InsufficientInstanceCapacity" in err.value.message
    # The Spot fleet was asked, and no On-Demand fleet after it.
    assert fleet_markets(fault_proxy) == ["spot"]


def test_other_errors_fail_loudly(client, fault_proxy):
    fault_proxy.fail("CreateFleet", "UnauthorizedOperation")
    with pytest.raises(ec2.Ec2Error) as err:
        Launcher(client, "ci", prepared(client)).launch_instances(1)
    assert err.value.code == "UnauthorizedOperation"
    assert fault_proxy.count("CreateFleet") == 1


def test_throttling_is_retried_with_backoff_then_succeeds(client, fault_proxy):
    fault_proxy.fail("CreateFleet", "RequestLimitExceeded", times=2)
    result = Launcher(client, "ci", prepared(client)).launch_instances(1)
    assert len(result.entries) == 1
    assert fault_proxy.count("CreateFleet") == 3


def test_extra_spot_for_replacements_is_never_launched_on_demand(client, fault_proxy):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    result = Launcher(client, "ci", prepared(client)).launch_instances(0, extra_spot=2)
    assert result.entries == []
    # One Spot fleet was sent (the replacements were asked for), and no On-Demand one.
    assert fleet_markets(fault_proxy) == ["spot"]


def test_the_pool_template_is_made_once_and_versioned_on_change(client):
    first = ensure_template(client, "ci", POOL_ID, launch())
    assert first["owned"] and first["Version"] == "1"
    assert ensure_template(client, "ci", POOL_ID, dict(launch(), template=first)) == first
    changed = ensure_template(client, "ci", POOL_ID, dict(launch(key_name="other"), template=first))
    assert changed["LaunchTemplateId"] == first["LaunchTemplateId"] and changed["Version"] == "2"
    data = client.describe_launch_template_versions(LaunchTemplateId=first["LaunchTemplateId"],
                                                    Versions=["1"])["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["ImageId"] == AMI and data["MetadataOptions"]["HttpTokens"] == "required"
    client.create_launch_template(LaunchTemplateName="theirs", LaunchTemplateData={"ImageId": AMI})
    user = ensure_template(client, "ci", POOL_ID,
                           {"launch_template": {"LaunchTemplateName": "theirs"}, "image_id": None})
    assert user == {"LaunchTemplateName": "theirs", "Version": "$Default", "owned": False}


def test_the_same_tags_in_another_order_make_no_new_template_version(client):
    first = ensure_template(client, "ci", POOL_ID, launch(tags={"team": "ci", "Name": "web"}))
    again = ensure_template(client, "ci", POOL_ID, dict(launch(tags={"Name": "web", "team": "ci"}), template=first))
    assert again == first


def test_validation_names_the_bad_value(client):
    with pytest.raises(InvalidRequest, match="unknown availability zone.*us-east-1z"):
        validate_launch(client, launch(availability_zones=["us-east-1a", "us-east-1z"]))
    with pytest.raises(InvalidRequest, match="instance_types.*t9.nope"):
        validate_launch(client, launch(instance_types=["t3.micro", "t9.nope"]))
    validate_launch(client, launch())


class FakeQuotas:
    """A Service Quotas client that answers from a dict (quota code -> vCPUs), or with an AWS error code."""

    def __init__(self, values=None, error=None):
        self.values = values or {}
        self.error = error
        self.asked = []

    def get_service_quota(self, ServiceCode, QuotaCode):  # boto3's parameter names
        import botocore.exceptions

        self.asked.append((ServiceCode, QuotaCode))
        if self.error:
            raise botocore.exceptions.ClientError({"Error": {"Code": self.error, "Message": "no"}}, "GetServiceQuota")
        return {"Quota": {"Value": float(self.values[QuotaCode])}}


def limit_problem(client, quotas, count, **overrides):
    warnings = []
    problem = account_limit_problem(client, quotas, launch(**overrides), count, warnings.append)
    return problem, warnings


def test_vcpu_quotas_refuse_only_what_cannot_fit_spot_and_on_demand_together(client):
    # t3.micro has 2 vCPUs. Spot 4 + On-Demand 6 vCPUs leave room for 5 instances, not 6.
    quotas = FakeQuotas({SPOT_VCPU_QUOTA: 4, ON_DEMAND_VCPU_QUOTA: 6})
    assert limit_problem(client, quotas, 5) == (None, [])
    problem = limit_problem(client, quotas, 6)[0]
    assert problem.startswith("6 more instance(s) do not fit the account's vCPU quotas: 'Running On-Demand Standard "
                              "(A, C, D, H, I, M, R, T, Z) instances' (L-1216C47A) 6 vCPUs, 0 in use: room for 3 "
                              "t3.micro (2 vCPUs); 'All Standard"), problem
    assert "quota increase" in problem
    # Without fallback only the Spot quota counts; running instances use it up, unrelated ones too.
    assert limit_problem(client, quotas, 3, fallback=False)[0].startswith("3 more instance(s) do not fit")
    client.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                         InstanceMarketOptions={"MarketType": "spot"})
    assert limit_problem(client, quotas, 1, fallback=False) == (None, [])
    assert limit_problem(client, quotas, 2, fallback=False)[0].endswith(
        "(L-34B43A08) 4 vCPUs, 2 in use: room for 1 t3.micro (2 vCPUs). Ask for a quota increase in Service Quotas, "
        "or choose a smaller size")
    # On-Demand instances and other families do not use the Spot standard quota.
    client.run_instances(ImageId=AMI, MinCount=3, MaxCount=3, InstanceType="t3.micro")
    client.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
                         InstanceMarketOptions={"MarketType": "spot"})
    assert limit_problem(client, quotas, 1, fallback=False) == (None, [])
    assert set(quotas.asked) == {("ec2", SPOT_VCPU_QUOTA), ("ec2", ON_DEMAND_VCPU_QUOTA)}


def test_a_limit_that_cannot_be_read_warns_and_does_not_block(client):
    problem, warnings = limit_problem(client, FakeQuotas(error="AccessDeniedException"), 25)
    assert problem is None
    assert warnings == [
        "the account's vCPU quotas could not all be read ('All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance "
        "Requests' (L-34B43A08) could not be read (AccessDeniedException); 'Running On-Demand Standard (A, C, D, H, "
        "I, M, R, T, Z) instances' (L-1216C47A) could not be read (AccessDeniedException)); launching without "
        "checking them"]


def test_without_a_quota_nothing_blocks_and_the_max_instances_attribute_is_not_asked(client, fault_proxy):
    # moto knows no EC2 quotas (NoSuchResourceException) and says max-instances 20: 21 are not refused.
    quotas = FakeQuotas(error="NoSuchResourceException")
    problem, warnings = limit_problem(client, quotas, 21)
    assert problem is None and "(L-34B43A08) could not be read (NoSuchResourceException)" in warnings[0], warnings
    assert fault_proxy.count("DescribeAccountAttributes") == 0
    # A family with a quota of its own is judged by that quota, not by the standard one.
    other = FakeQuotas({SPOT_VCPU_QUOTA: 0, ON_DEMAND_VCPU_QUOTA: 0, "L-B5D1601B": 0, "L-1945791B": 8})
    assert limit_problem(client, other, 2, instance_types=["inf1.xlarge"]) == (None, [])  # 4 vCPUs each
    assert limit_problem(client, other, 3, instance_types=["inf1.xlarge"])[0].startswith(
        "3 more instance(s) do not fit the account's vCPU quotas: 'Running On-Demand Inf instances' (L-1945791B)")
    assert {code for service, code in other.asked} == {"L-B5D1601B", "L-1945791B"}
    # A family without a known quota warns, and asks Service Quotas only for the others.
    problem, warnings = limit_problem(client, other, 50, instance_types=["t3.micro", "mac1.metal"])
    assert problem is None
    assert warnings == ["the account's vCPU quotas could not all be read (mac1.metal Spot: no vCPU quota known for "
                        "this instance family; mac1.metal On-Demand: no vCPU quota known for this instance family); "
                        "launching without checking them"]
    assert limit_problem(client, quotas, 0) == (None, [])
    assert limit_problem(client, None, 50) == (None, [])
