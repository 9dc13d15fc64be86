"""The signed DescribeInstances that spot_pool_get makes: its request, its answer, its errors and retries."""

from __future__ import annotations

import sys

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import ec2query
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.ec2query import InstanceStates
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.ec2query import QueryError
from tests.support.moto import AMI
from tests.support.moto import REGION
from tests.support.moto import use_profile_only

ANSWER = b"""<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <reservationSet><item><reservationId>r-0a</reservationId><instancesSet>
    <item><instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState>
      <tagSet><item><key>name</key><value>x</value></item></tagSet></item>
    <item><instanceId>i-2</instanceId><instanceState><code>48</code><name>terminated</name></instanceState></item>
  </instancesSet></item></reservationSet>
</DescribeInstancesResponse>"""
ERROR = (b"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>AuthFailure</Code>"
         b"<Message>AWS was not able to validate the provided access credentials</Message></Error></Errors>"
         b"<RequestID>r-2</RequestID></Response>")


def test_the_request_asks_by_filter_so_an_unknown_id_is_simply_absent():
    assert ec2query.request_body(["i-1", "i-2"]) == (
        "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=instance-id&Filter.1.Value.1=i-1"
        "&Filter.1.Value.2=i-2")


def test_answers_and_errors_are_read_from_the_xml():
    assert ec2query.parse_states(ANSWER) == {"i-1": "running", "i-2": "terminated"}
    assert ec2query.parse_error(ERROR) == ("AuthFailure", "AWS was not able to validate the provided access credentials")
    with pytest.raises(QueryError, match="MalformedResponse"):
        ec2query.parse_states(b"<html>")


def test_the_endpoint_is_the_option_then_the_environment_then_the_region():
    assert ec2query.endpoint_for("eu-west-1", None, {}) == "https://ec2.eu-west-1.amazonaws.com"
    assert ec2query.endpoint_for("cn-north-1", None, {}) == "https://ec2.cn-north-1.amazonaws.com.cn"
    assert ec2query.endpoint_for("eu-west-1", None, {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_EC2": "http://b"}) \
        == "http://b"
    assert ec2query.endpoint_for("eu-west-1", "http://c", {"AWS_ENDPOINT_URL_EC2": "http://b"}) == "http://c"
    with pytest.raises(QueryError, match="no AWS region set"):
        ec2query.endpoint_for(None, None, {})


def test_it_loads_no_ec2_service_model(aws_env, ec2):
    """The point of the module: nothing of boto3 and no service model on the get's path."""
    instance = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    loaded = set(sys.modules)
    states = InstanceStates({"region": REGION, "endpoint_url": aws_env["AWS_URL"], "access_key": "testing",
                             "secret_key": "testing"})
    assert states([instance, "i-00000000000000000"]) == {instance: "running"}
    new = set(sys.modules) - loaded
    assert not {name for name in new if name.startswith(("boto3", "botocore.client", "botocore.loaders"))}, new


@pytest.fixture
def proxied_states(fault_proxy):
    pauses = []
    states = InstanceStates({"region": REGION, "endpoint_url": fault_proxy.url, "access_key": "testing",
                             "secret_key": "testing"}, sleep=pauses.append)
    return states, fault_proxy, pauses


def test_throttling_is_retried_with_capped_attempts(proxied_states, ec2):
    states, proxy, pauses = proxied_states
    instance = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    proxy.fail("DescribeInstances", "RequestLimitExceeded", times=2)
    assert states([instance]) == {instance: "running"}
    assert proxy.count("DescribeInstances") == 3 and len(pauses) == 2 and all(0 <= p <= 1.0 for p in pauses)
    proxy.fail("DescribeInstances", "RequestLimitExceeded")
    with pytest.raises(QueryError, match=r"\(RequestLimitExceeded\)"):
        states([instance])
    assert proxy.count("DescribeInstances") == 3 + 3  # 3 attempts in all (retry.HAND_OUT), as the docs say


@pytest.mark.parametrize("code", ["AuthFailure", "UnauthorizedOperation"])
def test_an_auth_error_is_not_retried_and_says_what_to_check(proxied_states, code):
    states, proxy, pauses = proxied_states
    proxy.fail("DescribeInstances", code)
    with pytest.raises(QueryError, match=r"\(%s\); check the credentials" % code):
        states(["i-1"])
    assert proxy.count("DescribeInstances") == 1 and pauses == []


def test_no_credentials_is_a_clear_error(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(QueryError, match="no AWS credentials found"):
        InstanceStates({"region": REGION, "endpoint_url": "http://127.0.0.1:9"})(["i-1"])


def test_a_profile_gives_the_keys_and_the_region(monkeypatch, tmp_path, aws_env, ec2):
    instance = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    use_profile_only(monkeypatch, tmp_path)
    assert InstanceStates({"profile": "ci", "endpoint_url": aws_env["AWS_URL"]})([instance]) == {instance: "running"}


def test_a_bad_profile_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(QueryError, match=r"DescribeInstances failed: .*no-such-profile.*\(ProfileNotFound\)"):
        InstanceStates({"profile": "no-such-profile", "region": REGION, "endpoint_url": "http://127.0.0.1:9"})(["i-1"])
