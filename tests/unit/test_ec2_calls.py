"""Every thin EC2 call in ec2.py goes through _ec2_call: throttling retried, botocore errors turned into Ec2Error.

A call left without it raises raw botocore errors that the operations do not catch (a merge once dropped the
decorator of find_launch_template_by_id this way)."""

from __future__ import annotations

import inspect

import botocore.exceptions
import pytest

from ansible_collections.amazon.aws.plugins.module_utils import cloud
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import ec2

# Functions that take a client but make no call of their own: they call a wrapped one.
COMPOSED = {"describe_pool_instances"}


def unwrapped_calls():
    return [
        name for name, func in inspect.getmembers(ec2, inspect.isfunction)
        if func.__module__ == ec2.__name__ and name not in COMPOSED
        and list(inspect.signature(func).parameters)[:1] in (["client"], ["quotas_client"])
        and not hasattr(func, "__wrapped__")
    ]


def test_every_call_that_takes_a_client_is_wrapped():
    assert unwrapped_calls() == []


def test_the_check_sees_an_unwrapped_call(monkeypatch):
    def bare(client, template_id):
        return client.describe_launch_templates(LaunchTemplateIds=[template_id])

    bare.__module__ = ec2.__name__
    monkeypatch.setattr(ec2, "bare", bare, raising=False)
    assert unwrapped_calls() == ["bare"]


# -- what ec2.py takes from amazon.aws, with plain values (no moto) ---------------------------------------------
def client_error(code, status=400):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "said EC2"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "DescribeAvailabilityZones")


class AnswersAfter:
    """A client whose describe_availability_zones fails with `codes` in turn, then answers."""

    def __init__(self, *codes):
        self.codes = list(codes)
        self.calls = 0

    def describe_availability_zones(self, **_params):
        self.calls += 1
        if self.codes:
            raise client_error(self.codes.pop(0), 503)
        return {"AvailabilityZones": [{"ZoneName": "us-east-1a"}]}


@pytest.fixture
def pauses(monkeypatch):
    """The retry's pauses, recorded instead of slept: [(the bound the jitter drew under, the pause)]. amazon.aws's
    backoff draws each pause with random.uniform(0, bound) before an attempt and sleeps it after a retryable error,
    both read from its cloud module."""
    bounds, slept = [], []

    class Random:
        @staticmethod
        def uniform(low, high):
            assert low == 0.0
            bounds.append(high)
            return high / 2

    class Time:
        @staticmethod
        def sleep(seconds):
            slept.append((bounds[-1], seconds))

    monkeypatch.setattr(cloud, "random", Random)
    monkeypatch.setattr(cloud, "time", Time)
    return slept


def test_throttling_is_retried_at_most_four_times_in_all_with_jittered_capped_pauses(pauses):
    client = AnswersAfter(*["RequestLimitExceeded"] * 10)
    with pytest.raises(ec2.Ec2Error) as err:
        ec2.describe_availability_zones(client)
    assert err.value.code == "RequestLimitExceeded" and err.value.operation == "DescribeAvailabilityZones"
    assert client.calls == 4
    # Drawn at random under 1, 2 and 4 s (the pause is the draw): a throttled account sees no storm from us.
    assert pauses == [(1, 0.5), (2, 1.0), (4, 2.0)]


def test_passing_errors_are_retried_until_ec2_answers(pauses):
    client = AnswersAfter("RequestLimitExceeded", "InternalError", "Unavailable")
    assert ec2.describe_availability_zones(client) == [{"ZoneName": "us-east-1a"}]
    assert client.calls == 4 and len(pauses) == 3


def test_other_errors_are_not_retried(pauses):
    client = AnswersAfter("UnauthorizedOperation")
    with pytest.raises(ec2.Ec2Error) as err:
        ec2.describe_availability_zones(client)
    assert (err.value.code, client.calls, pauses) == ("UnauthorizedOperation", 1, [])


class Templates:
    """A client whose launch template calls fail with `code` (or answer with none)."""

    def __init__(self, code=None):
        self.code = code

    def _answer(self):
        if self.code:
            raise client_error(self.code)
        return {"LaunchTemplates": []}

    def describe_launch_templates(self, **_params):
        return self._answer()

    def delete_launch_template(self, **_params):
        return self._answer()


@pytest.mark.parametrize("code", ["InvalidLaunchTemplateName.NotFoundException",
                                  "InvalidLaunchTemplateName.MalformedException"])
def test_a_template_ec2_does_not_know_by_name_is_none(code):
    assert ec2.find_launch_template(Templates(code), "ec2spot-p-0123") is None


@pytest.mark.parametrize("code", ["InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateId.Malformed"])
def test_a_template_ec2_does_not_know_by_id_is_none_and_deleting_it_is_done(code):
    assert ec2.find_launch_template_by_id(Templates(code), "lt-0123") is None
    assert ec2.delete_launch_template(Templates(code), "lt-0123") is None


def test_other_template_errors_are_raised_as_ec2_errors(pauses):
    for call in (lambda client: ec2.find_launch_template(client, "n"),
                 lambda client: ec2.find_launch_template_by_id(client, "lt-0123"),
                 lambda client: ec2.delete_launch_template(client, "lt-0123")):
        with pytest.raises(ec2.Ec2Error) as err:
            call(Templates("UnauthorizedOperation"))
        assert err.value.code == "UnauthorizedOperation" and err.value.refused


def test_tags_go_to_ec2_sorted_by_key_and_as_text():
    assert ec2.tag_list({"team": "ci", "Name": "web", 2026: True, "ec2spot:pool": "p"}) == [
        {"Key": "2026", "Value": "True"}, {"Key": "Name", "Value": "web"}, {"Key": "ec2spot:pool", "Value": "p"},
        {"Key": "team", "Value": "ci"}]
    assert ec2.tag_list({}) == []


def test_tags_from_ec2_are_a_dict():
    assert ec2.tag_dict([{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "1"}]) == {"a": "1", "b": "2"}
    assert ec2.tag_dict(None) == {} and ec2.tag_dict([]) == {}
