"""The launcher against the moto server, with genuine EC2 errors injected by the fault proxy."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import ec2
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.connection import BOTOCORE_CONFIG
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import LaunchError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import Launcher
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import offerings
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.launcher import validate_launch
from tests.support.moto import REGION

AMI = "ami-12c6146b"


@pytest.fixture
def client(fault_proxy):
    return boto3.client("ec2", region_name=REGION, endpoint_url=fault_proxy.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(**BOTOCORE_CONFIG))


def launch(**overrides):
    spec = {"image_id": AMI, "instance_types": ["t3.micro"], "availability_zones": ["us-east-1a", "us-east-1b"],
            "tags": {"team": "ci"}, "fallback": True}
    spec.update(overrides)
    return spec


def described(client, ids):
    return {item["InstanceId"]: item for item in ec2.describe_instances(client, ids)}


def test_offerings_prefer_the_first_type_in_every_zone():
    got = [(o.market, o.instance_type, o.location) for o in offerings(
        launch(instance_types=["t3.micro", "t3a.micro"]), "spot")]
    assert got == [("spot", "t3.micro", "us-east-1a"), ("spot", "t3.micro", "us-east-1b"),
                   ("spot", "t3a.micro", "us-east-1a"), ("spot", "t3a.micro", "us-east-1b")]
    assert [o.location for o in offerings(launch(subnet_ids=["subnet-1"]), "spot")] == ["subnet-1"]


def test_spot_instances_are_spread_over_zones_and_tagged_at_launch(client, fault_proxy):
    result = Launcher(client, "ci", launch()).launch_instances(3)
    assert len(result.entries) == 3 and not result.errors
    instances = described(client, result.ids)
    assert sorted(i["Placement"]["AvailabilityZone"] for i in instances.values()) == \
        ["us-east-1a", "us-east-1a", "us-east-1b"]
    for instance in instances.values():
        tags = ec2.tag_dict(instance["Tags"])
        assert instance.get("InstanceLifecycle") == "spot"
        assert tags["ec2spot:pool"] == "ci" and tags["ec2spot:type"] == "spot" and tags["team"] == "ci"
    # Tags travel with the launch (TagSpecifications), never as a second CreateTags call that could fail apart.
    assert fault_proxy.count("CreateTags") == 0
    assert all(entry["ip"] is None and entry["type"] == "spot" for entry in result.entries)


def test_a_dry_spot_offering_moves_on_to_the_next(client, fault_proxy):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot", instance_type="t3.micro",
                              availability_zone="us-east-1a")
    result = Launcher(client, "ci", launch()).launch_instances(2)
    assert [e["type"] for e in result.entries] == ["spot", "spot"]
    assert {e["availability_zone"] for e in result.entries} == {"us-east-1b"}
    assert [(o.location, code) for o, code, _ in result.errors] == [("us-east-1a", "InsufficientInstanceCapacity")]
    # Asked once: our retry layer does not retry capacity errors (botocore's would, five times, on HTTP 500).
    assert fault_proxy.count("RunInstances", {"Placement.AvailabilityZone": "us-east-1a"}) == 1


def test_on_demand_fallback_only_when_spot_fails(client, fault_proxy):
    fault_proxy.fail("RunInstances", "InsufficientInstanceCapacity",
                     params={"InstanceMarketOptions.MarketType": "spot"})
    result = Launcher(client, "ci", launch()).launch_instances(2)
    assert [e["type"] for e in result.entries] == ["fallback", "fallback"]
    for instance in described(client, result.ids).values():
        assert "InstanceLifecycle" not in instance
        assert ec2.tag_dict(instance["Tags"])["ec2spot:type"] == "fallback"
    on_demand_requests = [r for r in fault_proxy.records("RunInstances")
                          if "InstanceMarketOptions.MarketType" not in r.params]
    assert on_demand_requests


def test_an_account_limit_stops_trying_spot_offerings(client, fault_proxy):
    fault_proxy.fail("RunInstances", "MaxSpotInstanceCountExceeded",
                     params={"InstanceMarketOptions.MarketType": "spot"})
    result = Launcher(client, "ci", launch(instance_types=["t3.micro", "t3a.micro"])).launch_instances(1)
    assert result.spot_disabled == "MaxSpotInstanceCountExceeded"
    assert fault_proxy.count("RunInstances", {"InstanceMarketOptions.MarketType": "spot"}) == 1
    assert [e["type"] for e in result.entries] == ["fallback"]


def test_without_fallback_a_spot_drought_is_a_launch_error(client, fault_proxy):
    fault_proxy.fail("RunInstances", "InsufficientInstanceCapacity",
                     params={"InstanceMarketOptions.MarketType": "spot"})
    with pytest.raises(LaunchError) as err:
        Launcher(client, "ci", launch(fallback=False)).launch_instances(2)
    assert "InsufficientInstanceCapacity" in err.value.message
    assert len(err.value.details["launch_errors"]) == 2
    assert ec2.describe_pool_instances(client, "ci") == []


def test_other_errors_fail_loudly_without_fallback(client, fault_proxy):
    fault_proxy.fail("RunInstances", "UnauthorizedOperation")
    with pytest.raises(ec2.Ec2Error) as err:
        Launcher(client, "ci", launch()).launch_instances(1)
    assert err.value.code == "UnauthorizedOperation"
    assert fault_proxy.count("RunInstances") == 1


def test_throttling_is_retried_with_backoff_then_succeeds(client, fault_proxy):
    fault_proxy.fail("RunInstances", "RequestLimitExceeded", times=2)
    result = Launcher(client, "ci", launch()).launch_instances(1)
    assert len(result.entries) == 1
    assert fault_proxy.count("RunInstances") == 3


def test_run_params_of_both_markets():
    launcher = Launcher(None, "ci", launch(security_group_ids=["sg-1"], key_name="k", iam_instance_profile="arn:x",
                                           user_data="#!/bin/sh"))
    spot, on_demand = offerings(launcher.launch, "spot")[0], offerings(launcher.launch, "on-demand")[0]
    params = launcher.run_params(spot, 2)
    assert params["InstanceMarketOptions"]["MarketType"] == "spot"
    assert params["Placement"] == {"AvailabilityZone": "us-east-1a"} and params["MaxCount"] == 2
    assert params["IamInstanceProfile"] == {"Arn": "arn:x"} and params["SecurityGroupIds"] == ["sg-1"]
    assert params["ClientToken"] != launcher.run_params(spot, 2)["ClientToken"]
    assert "InstanceMarketOptions" not in launcher.run_params(on_demand, 1)
    tags = ec2.tag_dict(launcher.run_params(on_demand, 1)["TagSpecifications"][0]["Tags"])
    assert tags["ec2spot:type"] == "fallback" and tags["Name"] == "ec2spot-ci"


def test_validation_names_the_bad_value(client):
    with pytest.raises(InvalidRequest, match="unknown availability zone.*us-east-1z"):
        validate_launch(client, launch(availability_zones=["us-east-1a", "us-east-1z"]))
    with pytest.raises(InvalidRequest, match="instance_types.*t9.nope"):
        validate_launch(client, launch(instance_types=["t3.micro", "t9.nope"]))
    validate_launch(client, launch())
