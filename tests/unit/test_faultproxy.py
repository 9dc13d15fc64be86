"""The fault proxy: real HTTP on 127.0.0.1 between boto3 and the session's moto server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.faultproxy import FaultProxy, status_for
from tests.support.moto import REGION, MotoServer

NO_RETRIES = Config(retries={"total_max_attempts": 1})


def ec2_client(url: str, config: Config | None = None):
    return boto3.client("ec2", region_name=REGION, endpoint_url=url, config=config,
                        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing")


@pytest.fixture
def via_proxy(fault_proxy):
    """A boto3 client that goes through the proxy and does not retry, so each call is one request."""
    return ec2_client(fault_proxy.url, NO_RETRIES)


@pytest.fixture
def direct(moto_server):
    """A boto3 client that talks to moto itself: what really exists, with no proxy in the way."""
    return ec2_client(moto_server.url)


_AMI: list[str] = []


def image_id(client) -> str:
    """An AMI moto always has; looked up once because DescribeImages lists hundreds and takes ~0.5 s."""
    if not _AMI:
        _AMI.append(client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
    return _AMI[0]


def subnet_in(client, zone: str) -> str:
    subnets = client.describe_subnets(Filters=[{"Name": "availability-zone", "Values": [zone]}])["Subnets"]
    return subnets[0]["SubnetId"]


def instances(client) -> list[dict]:
    return [i for r in client.describe_instances()["Reservations"] for i in r["Instances"]]


def run_one(client, **kwargs):
    return client.run_instances(ImageId=image_id(client), MinCount=1, MaxCount=1, **kwargs)["Instances"][0]


# -- forwarding ----------------------------------------------------------------------------------------------------


def test_run_and_describe_instances_pass_through_to_moto(fault_proxy, via_proxy, direct):
    launched = run_one(via_proxy, InstanceType="t3.micro", InstanceMarketOptions={"MarketType": "spot"})

    seen = {i["InstanceId"]: i for i in instances(via_proxy)}
    assert launched["InstanceId"] in seen
    assert [i["InstanceId"] for i in instances(direct)] == [launched["InstanceId"]]
    assert direct.describe_instances(InstanceIds=[launched["InstanceId"]])["Reservations"][0]["Instances"][0][
        "InstanceLifecycle"] == "spot"
    run = fault_proxy.records("RunInstances")
    assert len(run) == 1 and run[0].outcome == "forwarded" and run[0].status == 200
    assert run[0].instance_ids == [launched["InstanceId"]]
    assert run[0].params["InstanceType"] == "t3.micro"
    assert fault_proxy.count("DescribeInstances") == 1


def test_run_instances_launches_max_count_as_aws_does_where_moto_launches_min_count(
        fault_proxy, via_proxy, direct):
    by_moto = direct.run_instances(ImageId=image_id(direct), MinCount=1, MaxCount=3)["Instances"]
    by_proxy = via_proxy.run_instances(ImageId=image_id(via_proxy), MinCount=1, MaxCount=3)["Instances"]
    assert len(by_moto) == 1  # moto's gap: when this fails, moto has caught up and the rewrite can go
    assert len(by_proxy) == 3
    assert fault_proxy.records("RunInstances")[0].params["MinCount"] == "1"  # recorded as the caller sent it


# -- genuine errors ------------------------------------------------------------------------------------------------

CODES = [
    ("InsufficientInstanceCapacity", 500), ("MaxSpotInstanceCountExceeded", 400), ("VcpuLimitExceeded", 400),
    ("SpotMaxPriceTooLow", 400), ("InvalidParameterValue", 400), ("UnauthorizedOperation", 403),
    ("AuthFailure", 401), ("RequestLimitExceeded", 503), ("InternalError", 500), ("Unavailable", 503),
    ("InsufficientFreeAddressesInSubnet", 400), ("UnfulfillableCapacity", 400), ("MaxFleetCountExceeded", 400),
    ("Throttling", 400),
]


@pytest.mark.parametrize(("code", "status"), CODES)
def test_each_error_code_reaches_boto3_with_the_status_aws_uses(fault_proxy, via_proxy, direct, code, status):
    fault_proxy.fail("RunInstances", code)

    with pytest.raises(ClientError) as caught:
        run_one(via_proxy)

    error = caught.value.response
    assert error["Error"]["Code"] == code
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status == status_for(code)
    assert error["Error"]["Message"]
    assert error["ResponseMetadata"]["RequestId"]
    assert instances(direct) == []  # the request never reached moto
    assert fault_proxy.records("RunInstances")[0].outcome == "injected"


def test_injected_error_is_ec2_query_xml_on_the_wire(fault_proxy):
    fault_proxy.fail("RunInstances", "InsufficientInstanceCapacity", message="no capacity in {availability_zone}")
    request = urllib.request.Request(fault_proxy.url + "/", method="POST",
                                     data=b"Action=RunInstances&Version=2016-11-15&ImageId=ami-1&MinCount=1&MaxCount=1",
                                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    answer = caught.value
    root = ET.fromstring(answer.read())
    assert answer.code == 500
    assert answer.headers.get_all("Server") == ["AmazonEC2"]
    assert answer.headers["Content-Type"].startswith("text/xml")
    assert root.tag == "Response"
    assert root.findtext("Errors/Error/Code") == "InsufficientInstanceCapacity"
    assert root.findtext("Errors/Error/Message") == "no capacity in {availability_zone}"  # a request rule has no offering
    assert len(root.findtext("RequestID")) == 36


def test_botocore_retries_5xx_capacity_errors_but_not_account_limits(fault_proxy):
    """What botocore (default legacy retry mode) does with each class: it retries 500/503 answers itself, so
    a launcher that must move on after InsufficientInstanceCapacity has to turn retries down."""
    default_retries = ec2_client(fault_proxy.url)
    ami = image_id(default_retries)
    fault_proxy.fail("RunInstances", "InsufficientInstanceCapacity", times=1)
    default_retries.run_instances(ImageId=ami, MinCount=1, MaxCount=1)  # retried, second attempt passes
    assert [r.outcome for r in fault_proxy.records("RunInstances")] == ["injected", "forwarded"]

    fault_proxy.clear_records()
    fault_proxy.fail("RunInstances", "RequestLimitExceeded", times=1)
    default_retries.run_instances(ImageId=ami, MinCount=1, MaxCount=1)
    assert [r.error_code for r in fault_proxy.records("RunInstances")] == ["RequestLimitExceeded", None]

    fault_proxy.clear_records()
    fault_proxy.fail("RunInstances", "MaxSpotInstanceCountExceeded", times=1)
    with pytest.raises(ClientError):
        default_retries.run_instances(ImageId=ami, MinCount=1, MaxCount=1)
    assert fault_proxy.count("RunInstances") == 1


def test_times_limits_how_often_a_rule_fires(fault_proxy, via_proxy):
    rule = fault_proxy.fail("DescribeInstances", "RequestLimitExceeded", times=2)

    outcomes = []
    for _attempt in range(4):
        try:
            via_proxy.describe_instances()
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    assert outcomes == ["RequestLimitExceeded", "RequestLimitExceeded", "ok", "ok"]
    assert rule.fired == 2 and rule.exhausted


def test_a_rule_removed_while_running_stops_firing(fault_proxy, via_proxy):
    rule = fault_proxy.fail("DescribeInstances", "Unavailable")
    with pytest.raises(ClientError):
        via_proxy.describe_instances()
    assert fault_proxy.remove_rule(rule)
    via_proxy.describe_instances()
    assert [r.outcome for r in fault_proxy.records("DescribeInstances")] == ["injected", "forwarded"]


def test_params_match_a_spot_launch_and_let_on_demand_pass(fault_proxy, via_proxy, direct):
    fault_proxy.fail("RunInstances", "InsufficientInstanceCapacity",
                     params={"InstanceMarketOptions.MarketType": "spot", "InstanceType": ["t3.micro", "t3.small"]})

    with pytest.raises(ClientError) as caught:
        run_one(via_proxy, InstanceType="t3.micro", InstanceMarketOptions={"MarketType": "spot"})
    assert caught.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    on_demand = run_one(via_proxy, InstanceType="t3.micro")
    other_type = run_one(via_proxy, InstanceType="m5.large", InstanceMarketOptions={"MarketType": "spot"})

    assert {i["InstanceId"] for i in instances(direct)} == {on_demand["InstanceId"], other_type["InstanceId"]}


def test_a_predicate_can_match_a_parameter(fault_proxy, via_proxy):
    fault_proxy.fail("RunInstances", "InvalidParameterValue", params={"MaxCount": lambda v: int(v) > 2})
    with pytest.raises(ClientError):
        via_proxy.run_instances(ImageId=image_id(via_proxy), MinCount=1, MaxCount=3)
    via_proxy.run_instances(ImageId=image_id(via_proxy), MinCount=1, MaxCount=2)


def test_offering_rule_fails_run_instances_for_that_type_and_zone_only(fault_proxy, via_proxy, direct):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot", instance_type="t3.micro",
                              availability_zone="us-east-1a")
    spot = {"MarketType": "spot"}

    with pytest.raises(ClientError) as by_zone:
        run_one(via_proxy, InstanceType="t3.micro", InstanceMarketOptions=spot,
                Placement={"AvailabilityZone": "us-east-1a"})
    with pytest.raises(ClientError):  # the zone is found from the subnet, as AWS would
        run_one(via_proxy, InstanceType="t3.micro", InstanceMarketOptions=spot, SubnetId=subnet_in(direct, "us-east-1a"))
    other_zone = run_one(via_proxy, InstanceType="t3.micro", InstanceMarketOptions=spot,
                         Placement={"AvailabilityZone": "us-east-1b"})
    on_demand = run_one(via_proxy, InstanceType="t3.micro", Placement={"AvailabilityZone": "us-east-1a"})

    message = by_zone.value.response["Error"]["Message"]
    assert "t3.micro" in message and "(us-east-1a)" in message
    assert by_zone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert {i["InstanceId"] for i in instances(direct)} == {other_zone["InstanceId"], on_demand["InstanceId"]}
    failed = fault_proxy.offering_requests(market="spot", instance_type="t3.micro", availability_zone="us-east-1a")
    assert [record.outcome for record, _offering in failed] == ["injected", "injected"]


def test_run_instances_gets_what_a_finite_offering_has_down_to_min_count(fault_proxy, via_proxy, direct):
    limit = fault_proxy.limit_offering(2, market="spot", availability_zone="us-east-1a")
    spot_in_a = {"InstanceMarketOptions": {"MarketType": "spot"}, "Placement": {"AvailabilityZone": "us-east-1a"}}

    with pytest.raises(ClientError) as all_or_nothing:
        via_proxy.run_instances(ImageId=image_id(via_proxy), MinCount=3, MaxCount=3, **spot_in_a)
    assert all_or_nothing.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert limit.capacity == 2  # a refused launch takes nothing
    partial = via_proxy.run_instances(ImageId=image_id(via_proxy), MinCount=1, MaxCount=3, **spot_in_a)
    assert len(partial["Instances"]) == 2 and limit.capacity == 0
    with pytest.raises(ClientError):
        run_one(via_proxy, **spot_in_a)
    run_one(via_proxy, InstanceMarketOptions={"MarketType": "spot"}, Placement={"AvailabilityZone": "us-east-1b"})

    assert len(instances(direct)) == 3
    assert [r.outcome for r in fault_proxy.records("RunInstances")] == ["injected", "forwarded", "injected",
                                                                        "forwarded"]


def test_instance_type_from_a_launch_template_is_matched(fault_proxy, via_proxy):
    template = via_proxy.create_launch_template(LaunchTemplateName="lt", LaunchTemplateData={
        "ImageId": image_id(via_proxy), "InstanceType": "c5.large"})["LaunchTemplate"]
    fault_proxy.fail_offering("VcpuLimitExceeded", instance_type="c5.large")
    with pytest.raises(ClientError) as caught:
        via_proxy.run_instances(MinCount=1, MaxCount=1, LaunchTemplate={
            "LaunchTemplateId": template["LaunchTemplateId"], "Version": "$Latest"})
    assert caught.value.response["Error"]["Code"] == "VcpuLimitExceeded"


# -- slow answers --------------------------------------------------------------------------------------------------


def test_delay_slows_only_the_matching_action(fault_proxy, via_proxy):
    fault_proxy.slow("DescribeInstances", 1.0)

    started = time.monotonic()
    via_proxy.describe_instances()
    slow = time.monotonic() - started
    started = time.monotonic()
    via_proxy.describe_availability_zones()
    fast = time.monotonic() - started

    assert slow >= 1.0 and fast < 0.9
    record = fault_proxy.records("DescribeInstances")[0]
    assert record.outcome == "forwarded" and record.delay == 1.0 and record.duration >= 1.0


def test_delay_then_error(fault_proxy, via_proxy):
    fault_proxy.fail("DescribeInstances", "RequestLimitExceeded", delay=0.5, times=1)
    started = time.monotonic()
    with pytest.raises(ClientError) as caught:
        via_proxy.describe_instances()
    assert time.monotonic() - started >= 0.5
    assert caught.value.response["Error"]["Code"] == "RequestLimitExceeded"


def test_a_delay_longer_than_the_client_timeout_times_the_client_out(fault_proxy):
    impatient = ec2_client(fault_proxy.url, Config(read_timeout=0.5, retries={"total_max_attempts": 1}))
    fault_proxy.slow("DescribeInstances", 2.0)
    with pytest.raises(Exception) as caught:
        impatient.describe_instances()
    assert "timeout" in type(caught.value).__name__.lower() or "timed out" in str(caught.value)


# -- CreateFleet ---------------------------------------------------------------------------------------------------


@pytest.fixture
def template_id(via_proxy):
    return via_proxy.create_launch_template(LaunchTemplateName="pool", LaunchTemplateData={
        "ImageId": image_id(via_proxy), "InstanceType": "t3.nano"})["LaunchTemplate"]["LaunchTemplateId"]


def create_fleet(client, template_id, overrides, capacity=2, market="spot", strategy="price-capacity-optimized",
                 **extra):
    options = {"SpotOptions": {"AllocationStrategy": strategy}} if market == "spot" else {}
    return client.create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[{"LaunchTemplateSpecification": {"LaunchTemplateId": template_id, "Version": "$Latest"},
                                "Overrides": overrides}],
        TargetCapacitySpecification={"TotalTargetCapacity": capacity, "DefaultTargetCapacityType": market},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "ec2spot:pool", "Value": "t"}]}],
        **options, **extra)


def test_fleet_reports_failed_overrides_and_launches_the_rest_in_moto(fault_proxy, via_proxy, direct, template_id):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot", instance_type="t3.micro",
                              availability_zone="us-east-1a")
    subnet_b = subnet_in(direct, "us-east-1b")

    answer = create_fleet(via_proxy, template_id, [
        {"InstanceType": "t3.micro", "AvailabilityZone": "us-east-1a"},
        {"InstanceType": "t3.small", "SubnetId": subnet_b},
        {"InstanceType": "t3.medium", "AvailabilityZone": "us-east-1c"},
    ])

    [error] = answer["Errors"]
    assert error["ErrorCode"] == "InsufficientInstanceCapacity" and error["Lifecycle"] == "spot"
    assert error["LaunchTemplateAndOverrides"]["Overrides"] == {"InstanceType": "t3.micro",
                                                                "AvailabilityZone": "us-east-1a"}
    assert error["LaunchTemplateAndOverrides"]["LaunchTemplateSpecification"]["LaunchTemplateId"] == template_id
    assert "t3.micro" in error["ErrorMessage"]
    [launched] = answer["Instances"]
    assert launched["Lifecycle"] == "spot" and launched["InstanceType"] == "t3.small"
    assert launched["LaunchTemplateAndOverrides"]["Overrides"]["SubnetId"] == subnet_b
    assert len(launched["InstanceIds"]) == 2
    real = {i["InstanceId"]: i for i in instances(direct)}
    assert set(real) == set(launched["InstanceIds"])
    for instance in real.values():
        assert instance["InstanceType"] == "t3.small"
        assert instance["Placement"]["AvailabilityZone"] == "us-east-1b"
        assert instance["InstanceLifecycle"] == "spot"
        assert {"Key": "ec2spot:pool", "Value": "t"} in instance["Tags"]
    assert [f["FleetId"] for f in direct.describe_fleets()["Fleets"]] == [answer["FleetId"]]
    record = fault_proxy.records("CreateFleet")[0]
    assert record.outcome == "fleet" and len(record.offerings) == 3
    assert [e.code for e in record.fleet_errors] == ["InsufficientInstanceCapacity"]
    # the third override was never needed, so a cool-down test can tell "asked for" from "failed"
    assert len(fault_proxy.offering_requests(instance_type="t3.medium")) == 1


def test_fleet_honours_the_zone_of_an_override(fault_proxy, via_proxy, direct, template_id):
    answer = create_fleet(via_proxy, template_id, [{"InstanceType": "t3.micro", "AvailabilityZone": "us-east-1c"}],
                          capacity=1)
    assert answer["Errors"] == []
    [instance] = instances(direct)
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1c"


def test_fleet_with_every_spot_override_failed_launches_nothing_then_on_demand_works(
        fault_proxy, via_proxy, direct, template_id):
    fault_proxy.fail_offering("MaxSpotInstanceCountExceeded", market="spot")
    overrides = [{"InstanceType": "t3.micro", "AvailabilityZone": "us-east-1a"},
                 {"InstanceType": "t3.small", "AvailabilityZone": "us-east-1b"}]

    spot = create_fleet(via_proxy, template_id, overrides)
    assert [e["ErrorCode"] for e in spot["Errors"]] == ["MaxSpotInstanceCountExceeded"] * 2
    assert spot.get("Instances", []) == [] and instances(direct) == []

    on_demand = create_fleet(via_proxy, template_id, overrides, market="on-demand")
    assert on_demand["Errors"] == []
    [launched] = on_demand["Instances"]
    assert launched["Lifecycle"] == "on-demand" and launched["InstanceType"] == "t3.micro"
    assert all("InstanceLifecycle" not in i for i in instances(direct))


def test_fleet_rule_times_counts_per_override(fault_proxy, via_proxy, template_id):
    rule = fault_proxy.fail_offering("InsufficientInstanceCapacity", instance_type="t3.micro", times=1)
    first = create_fleet(via_proxy, template_id, [{"InstanceType": "t3.micro"}, {"InstanceType": "t3.small"}],
                         capacity=1)
    second = create_fleet(via_proxy, template_id, [{"InstanceType": "t3.micro"}, {"InstanceType": "t3.small"}],
                          capacity=1)
    assert [i["InstanceType"] for i in first["Instances"]] == ["t3.small"]
    assert [i["InstanceType"] for i in second["Instances"]] == ["t3.micro"] and second["Errors"] == []
    assert rule.exhausted


def test_diversified_fleet_spreads_over_surviving_overrides(fault_proxy, via_proxy, direct, template_id):
    fault_proxy.fail_offering("InsufficientInstanceCapacity", availability_zone="us-east-1b")
    answer = create_fleet(via_proxy, template_id, [
        {"InstanceType": "t3.micro", "AvailabilityZone": zone} for zone in ("us-east-1a", "us-east-1b", "us-east-1c")
    ], capacity=4, strategy="diversified")
    assert len(answer["Errors"]) == 1
    zones = sorted(i["Placement"]["AvailabilityZone"] for i in instances(direct))
    assert zones == ["us-east-1a", "us-east-1a", "us-east-1c", "us-east-1c"]


def test_fleet_with_a_bad_template_fails_like_moto_does(fault_proxy, via_proxy, direct):
    with pytest.raises(ClientError):
        create_fleet(via_proxy, "lt-0000000000000000", [{"InstanceType": "t3.micro"}])
    assert instances(direct) == []


def test_fleet_takes_what_a_finite_offering_has_and_the_rest_from_the_next(
        fault_proxy, via_proxy, direct, template_id):
    limit = fault_proxy.limit_offering(1, market="spot", instance_type="t3.micro", availability_zone="us-east-1a")
    answer = create_fleet(via_proxy, template_id, [
        {"InstanceType": "t3.micro", "AvailabilityZone": "us-east-1a"},
        {"InstanceType": "t3.small", "AvailabilityZone": "us-east-1b"},
    ], capacity=3)

    assert [(e["LaunchTemplateAndOverrides"]["Overrides"]["InstanceType"], e["ErrorCode"])
            for e in answer["Errors"]] == [("t3.micro", "InsufficientInstanceCapacity")]
    assert {i["InstanceType"]: len(i["InstanceIds"]) for i in answer["Instances"]} == {"t3.micro": 1, "t3.small": 2}
    assert sorted((i["InstanceType"], i["Placement"]["AvailabilityZone"]) for i in instances(direct)) == [
        ("t3.micro", "us-east-1a"), ("t3.small", "us-east-1b"), ("t3.small", "us-east-1b")]
    assert limit.capacity == 0


def test_whole_fleet_request_errors_are_request_rules(fault_proxy, via_proxy, template_id):
    fault_proxy.fail("CreateFleet", "RequestLimitExceeded", times=1)
    with pytest.raises(ClientError) as caught:
        create_fleet(via_proxy, template_id, [{"InstanceType": "t3.micro"}])
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


# -- ClientToken ---------------------------------------------------------------------------------------------------


def test_a_repeated_client_token_gets_the_first_fleet_again(fault_proxy, via_proxy, direct, template_id):
    overrides = [{"InstanceType": "t3.micro", "AvailabilityZone": "us-east-1a"}]
    first = create_fleet(via_proxy, template_id, overrides, ClientToken="refill-1")
    again = create_fleet(via_proxy, template_id, overrides, ClientToken="refill-1")

    assert again["FleetId"] == first["FleetId"] and again["Instances"] == first["Instances"]
    assert len(instances(direct)) == 2
    assert [r.outcome for r in fault_proxy.records("CreateFleet")] == ["fleet", "replayed"]
    with pytest.raises(ClientError) as caught:
        create_fleet(via_proxy, template_id, overrides, capacity=3, ClientToken="refill-1")
    assert caught.value.response["Error"]["Code"] == "IdempotentParameterMismatch"
    assert len(instances(direct)) == 2


def test_a_failed_launch_does_not_bind_its_client_token(fault_proxy, via_proxy, direct):
    fault_proxy.fail("RunInstances", "InternalError", times=1)
    with pytest.raises(ClientError):
        run_one(via_proxy, ClientToken="tok")
    first = run_one(via_proxy, ClientToken="tok")
    again = run_one(via_proxy, ClientToken="tok")
    assert first["InstanceId"] == again["InstanceId"]
    assert len(instances(direct)) == 1


# -- records, control API, other processes -------------------------------------------------------------------------


def test_records_count_calls_per_offering(fault_proxy, via_proxy):
    marker = time.time()
    for zone in ("us-east-1a", "us-east-1a", "us-east-1b"):
        run_one(via_proxy, InstanceType="t3.micro", InstanceMarketOptions={"MarketType": "spot"},
                Placement={"AvailabilityZone": zone})
    assert len(fault_proxy.offering_requests(market="spot", availability_zone="us-east-1a", since=marker)) == 2
    assert len(fault_proxy.offering_requests(market="on-demand")) == 0
    assert fault_proxy.count("RunInstances", params={"Placement.AvailabilityZone": "us-east-1b"}) == 1


def control(proxy: FaultProxy, method: str, route: str, data: dict | None = None):
    req = urllib.request.Request(proxy.url + "/__faults__" + route, method=method,
                                 data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_another_process_sets_rules_and_is_proxied(fault_proxy):
    """A child process (like the refill job or the demo) configures a fault over HTTP and then meets it."""
    script = (
        "import json, urllib.request, boto3, botocore.config, botocore.exceptions, os\n"
        "url = os.environ['AWS_ENDPOINT_URL']\n"
        "req = urllib.request.Request(url + '/__faults__/offerings', method='POST', data=json.dumps({\n"
        "    'code': 'InsufficientInstanceCapacity', 'market': 'spot', 'instance_type': ['t3.micro']}).encode())\n"
        "print(json.load(urllib.request.urlopen(req))['id'])\n"
        "ec2 = boto3.client('ec2', config=botocore.config.Config(retries={'total_max_attempts': 1}))\n"
        "ami = ec2.describe_images()['Images'][0]['ImageId']\n"
        "try:\n"
        "    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType='t3.micro',\n"
        "                      InstanceMarketOptions={'MarketType': 'spot'})\n"
        "except botocore.exceptions.ClientError as exc:\n"
        "    print(exc.response['Error']['Code'], exc.response['ResponseMetadata']['HTTPStatusCode'])\n"
    )
    env = dict(os.environ, **fault_proxy.env())
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    rule_id, outcome = done.stdout.splitlines()
    assert outcome == "InsufficientInstanceCapacity 500"

    status, state = control(fault_proxy, "GET", "")
    assert status == 200 and [r["id"] for r in state["rules"]] == [int(rule_id)]
    assert [r["action"] for r in state["records"]] == ["DescribeImages", "RunInstances"]
    assert state["records"][1]["offerings"][0]["instance_type"] == "t3.micro"
    assert control(fault_proxy, "DELETE", f"/rules/{rule_id}") == (200, {"removed": True})
    assert fault_proxy.rules() == []


def test_control_api_request_rules_and_reset(fault_proxy, via_proxy):
    status, limit = control(fault_proxy, "POST", "/offerings", {"capacity": 1, "instance_type": "t3.micro"})
    assert status == 201 and limit["capacity"] == 1 and limit["code"] == "InsufficientInstanceCapacity"
    run_one(via_proxy, InstanceType="t3.micro")
    with pytest.raises(ClientError):
        run_one(via_proxy, InstanceType="t3.micro")
    status, rule = control(fault_proxy, "POST", "/rules", {"action": "DescribeInstances", "code": "AuthFailure",
                                                           "params": {"Version": ["2016-11-15"]}, "times": 1})
    assert status == 201 and rule["times"] == 1
    with pytest.raises(ClientError) as caught:
        via_proxy.describe_instances()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    status, records = control(fault_proxy, "GET", "/records?outcome=injected&action=DescribeInstances")
    assert [r["error_code"] for r in records] == ["AuthFailure"]
    assert control(fault_proxy, "POST", "/reset", {}) == (200, {"reset": True})
    assert fault_proxy.records() == [] and fault_proxy.rules() == []
    with pytest.raises(urllib.error.HTTPError) as bad:
        control(fault_proxy, "POST", "/rules", {"action": "DescribeInstances"})  # neither code nor delay
    assert bad.value.code == 400


def test_fault_env_points_at_the_proxy(fault_env, fault_proxy):
    assert fault_env["AWS_ENDPOINT_URL"] == fault_proxy.url == os.environ["AWS_URL"]
    boto3.client("ec2").describe_instances()
    assert fault_proxy.count("DescribeInstances") == 1


def test_concurrent_requests_are_all_recorded(fault_proxy, via_proxy):
    fault_proxy.slow("DescribeInstances", 0.3)
    errors = []
    clients = [ec2_client(fault_proxy.url, NO_RETRIES) for _caller in range(8)]  # built first: that is slow on 2 cores

    def call(client):
        try:
            client.describe_instances()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(client,)) for client in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = fault_proxy.records("DescribeInstances")
    assert len(records) == 8
    # Served in parallel, not one after another: some requests were in the proxy at the same time (each one is
    # held 0.3 s, so a proxy serving one at a time would show no overlap at all). Judged from the proxy's own
    # records, not the wall clock, so a busy machine cannot fail it.
    intervals = sorted((r.started, r.started + r.duration) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:])), intervals


# -- lifecycle -----------------------------------------------------------------------------------------------------


def test_proxy_and_server_stop_cleanly(tmp_path):
    before = set(threading.enumerate())
    server = MotoServer(log_path=tmp_path / "moto.log").start()
    proxy = FaultProxy(server).start()
    client = ec2_client(proxy.url, NO_RETRIES)
    client.describe_instances()  # leaves an idle keep-alive connection in botocore's pool
    proxy.slow("DescribeAvailabilityZones", 30)
    in_flight = threading.Thread(target=lambda: pytest.raises(Exception, client.describe_availability_zones))
    in_flight.start()
    time.sleep(0.3)

    started = time.monotonic()
    proxy.stop()
    server.stop()
    in_flight.join(timeout=10)

    assert time.monotonic() - started < 10  # the delayed request did not hold the stop for 30 s
    assert not in_flight.is_alive()
    assert set(threading.enumerate()) - before == set()
    assert server.proc is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    proxy.stop()  # a second stop is harmless


def test_a_launch_whose_caller_is_killed_still_happens_and_its_token_replays(fault_proxy, direct, template_id):
    """The crash window of a launch: the caller dies while CreateFleet is on the wire. AWS still launches; the
    caller's successor, retrying with the ClientToken it wrote down first, must get those instances back."""
    fault_proxy.slow("CreateFleet", 1.0, times=1)
    script = (
        "import boto3, botocore.config\n"
        "ec2 = boto3.client('ec2', config=botocore.config.Config(retries={'total_max_attempts': 1}))\n"
        f"ec2.create_fleet(Type='instant', ClientToken='crash-1', LaunchTemplateConfigs=[{{\n"
        f"    'LaunchTemplateSpecification': {{'LaunchTemplateId': '{template_id}', 'Version': '$Latest'}},\n"
        "    'Overrides': [{'InstanceType': 't3.micro', 'AvailabilityZone': 'us-east-1a'}]}],\n"
        "    TargetCapacitySpecification={'TotalTargetCapacity': 2, 'DefaultTargetCapacityType': 'spot'})\n"
        "print('answered')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, **fault_proxy.env()),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fault_proxy.wait_for("CreateFleet", timeout=30)
        child.kill()
    finally:
        out, _err = child.communicate(timeout=30)
    assert child.returncode == -9 and b"answered" not in out

    [lost] = fault_proxy.wait_for("CreateFleet", done=True, timeout=30)
    assert lost.outcome == "fleet" and len(lost.instance_ids) == 2
    assert sorted(i["InstanceId"] for i in instances(direct)) == sorted(lost.instance_ids)

    successor = ec2_client(fault_proxy.url, NO_RETRIES)
    again = successor.create_fleet(  # the very request the killed process sent
        Type="instant", ClientToken="crash-1",
        LaunchTemplateConfigs=[{"LaunchTemplateSpecification": {"LaunchTemplateId": template_id,
                                                                "Version": "$Latest"},
                                "Overrides": [{"InstanceType": "t3.micro", "AvailabilityZone": "us-east-1a"}]}],
        TargetCapacitySpecification={"TotalTargetCapacity": 2, "DefaultTargetCapacityType": "spot"})
    assert sorted(again["Instances"][0]["InstanceIds"]) == sorted(lost.instance_ids)
    assert len(instances(direct)) == 2
    assert fault_proxy.records("CreateFleet")[-1].outcome == "replayed"


def test_wait_for_times_out_with_a_clear_message(fault_proxy):
    with pytest.raises(TimeoutError, match="0 of 1 CreateFleet"):
        fault_proxy.wait_for("CreateFleet", timeout=0.2)


def test_a_failure_inside_the_proxy_is_an_internal_error_and_recorded(fault_proxy, via_proxy, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("a bug in the proxy")

    monkeypatch.setattr(fault_proxy, "_launch_or_forward", broken)
    with pytest.raises(ClientError) as caught:
        via_proxy.describe_instances()
    assert caught.value.response["Error"]["Code"] == "InternalError"
    assert "a bug in the proxy" in caught.value.response["Error"]["Message"]
    assert fault_proxy.records("DescribeInstances")[0].outcome == "proxy-error"
    assert "KeyError" in capsys.readouterr().err


def test_an_injected_dynamodb_error_is_json_on_the_wire_and_reaches_boto3_with_its_code(fault_proxy):
    """DynamoDB speaks JSON, not EC2's XML: botocore must read the injected code (not a parse failure)."""
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=fault_proxy.url, config=NO_RETRIES,
                            aws_access_key_id="testing", aws_secret_access_key="testing")
    fault_proxy.fail("ListTables", "AccessDeniedException", times=1)
    with pytest.raises(ClientError) as caught:
        dynamodb.list_tables()
    assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "not authorized" in caught.value.response["Error"]["Message"]
    assert "TableNames" in dynamodb.list_tables()  # the rule fired once; then moto answers
    assert [record.error_code for record in fault_proxy.records("ListTables")] == ["AccessDeniedException", None]


def test_a_dynamodb_request_is_recorded_with_its_json_document(fault_proxy, via_proxy):
    """A DynamoDB request's parameters are its JSON body (no form parameters): the record keeps it, so a test can
    tell which item a conditional write was for; an EC2 request has none."""
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=fault_proxy.url, config=NO_RETRIES,
                            aws_access_key_id="testing", aws_secret_access_key="testing")
    fault_proxy.fail("GetItem", "ResourceNotFoundException", times=1)
    with pytest.raises(ClientError):
        dynamodb.get_item(TableName="t-of-test", Key={"pool": {"S": "p"}, "item": {"S": "pool"}}, ConsistentRead=True)
    via_proxy.describe_instances()
    [get] = fault_proxy.records("GetItem")
    assert get.document == {"TableName": "t-of-test", "Key": {"pool": {"S": "p"}, "item": {"S": "pool"}},
                            "ConsistentRead": True}
    assert get.as_dict()["document"] == get.document
    assert fault_proxy.records("DescribeInstances")[0].document is None


def test_the_proxy_answers_an_ec2_quota_it_was_given_and_moto_the_rest(fault_proxy):
    """moto's Service Quotas knows no EC2 quota: a quota set on the proxy is answered as AWS answers it, another
    code still gets moto's NoSuchResourceException, and reset() forgets the quota."""
    quotas = boto3.client("service-quotas", region_name=REGION, endpoint_url=fault_proxy.url, config=NO_RETRIES,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    fault_proxy.set_service_quota("L-34B43A08", 4, "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests")
    quota = quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-34B43A08")["Quota"]
    assert (quota["QuotaCode"], quota["Value"], quota["QuotaName"]) == (
        "L-34B43A08", 4.0, "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests")
    with pytest.raises(ClientError, match="NoSuchResourceException"):
        quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-1216C47A")
    fault_proxy.reset()
    with pytest.raises(ClientError, match="NoSuchResourceException"):
        quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-34B43A08")
