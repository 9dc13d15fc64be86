"""Every thin EC2 call in ec2.py goes through _ec2_call: throttling retried, botocore errors turned into Ec2Error.

A call left without it raises raw botocore errors that the operations do not catch (a merge once dropped the
decorator of find_launch_template_by_id this way)."""

from __future__ import annotations

import inspect

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import ec2

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
