# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# This module_utils file is PRIVATE to the ec2spot.pool collection: its names and behaviour may change in any
# release. Do not import it from other collections, playbooks or standalone modules; use amazon.aws instead.
"""How the pool reaches EC2: module options, the detached refill's environment, and boto3 clients.

`spot_pool_get` must hand out an instance in about the time Ansible needs to start a module, and importing boto3
(which amazon.aws's AnsibleAWSModule does at import time) costs too much of that (retry.py says how much, once). So
`get` declares the same connection options with a plain AnsibleModule and makes its one EC2 call as a signed request
without a boto3 client (ec2query.py). `connection_argument_spec()` mirrors amazon.aws's `aws_argument_spec()`; a
unit test compares the two so they cannot drift apart. Every other module uses AnsibleAWSModule directly.
(`debug_botocore_endpoint_logs` is accepted by `get` for module_defaults' sake, and has no effect there.)
"""

from __future__ import annotations

import os

from ansible.module_utils.basic import env_fallback

from ..domain.defaults import DEFAULT_TABLE
from ..domain.defaults import STORE
from ..domain.defaults import STORES
from ..domain.errors import InvalidRequest
from ..domain.errors import PoolError

# Option name -> environment variable that boto3 reads, for the detached refill job. Credentials travel only
# through the child's environment: never on a command line (visible in ps) and never in the state file.
_ENV_FOR_OPTION = (
    ("access_key", "AWS_ACCESS_KEY_ID"),
    ("secret_key", "AWS_SECRET_ACCESS_KEY"),
    ("session_token", "AWS_SESSION_TOKEN"),
    ("profile", "AWS_PROFILE"),
    ("aws_ca_bundle", "AWS_CA_BUNDLE"),
)
# Environment variables of the controller that must not leak into the child as a second, conflicting source.
_CLEARED_FOR_CHILD = ("AWS_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_DEFAULT_PROFILE", "EC2_URL", "AWS_URL")

# One retry layer, ours (retry.py's rule; ec2.py: AWSRetry.jittered_backoff, capped): botocore would otherwise retry
# every HTTP 500 on its own, and EC2 answers InsufficientInstanceCapacity with a 500, so a dry offering would be
# asked up to five times before the launcher could move on, and throttling would be retried by two layers at once.
BOTOCORE_CONFIG = {"retries": {"mode": "standard", "total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 30}

ENDPOINT_ENV = "EC2SPOT_ENDPOINT_URL"
VERIFY_ENV = "EC2SPOT_VALIDATE_CERTS"


def connection_argument_spec():
    """The connection options of every amazon.aws module (see module docstring for why it is restated)."""
    return dict(
        access_key=dict(aliases=["aws_access_key_id", "aws_access_key"],
                        fallback=(env_fallback, ["AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY"]), no_log=False),
        secret_key=dict(aliases=["aws_secret_access_key", "aws_secret_key"],
                        fallback=(env_fallback, ["AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY"]), no_log=True),
        session_token=dict(aliases=["aws_session_token"], fallback=(env_fallback, ["AWS_SESSION_TOKEN"]), no_log=True),
        profile=dict(aliases=["aws_profile"], fallback=(env_fallback, ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"])),
        endpoint_url=dict(aliases=["aws_endpoint_url"], fallback=(env_fallback, ["AWS_URL"])),
        validate_certs=dict(type="bool", default=True),
        aws_ca_bundle=dict(type="path", fallback=(env_fallback, ["AWS_CA_BUNDLE"])),
        aws_config=dict(type="dict"),
        debug_botocore_endpoint_logs=dict(type="bool", default=False,
                                          fallback=(env_fallback, ["ANSIBLE_DEBUG_BOTOCORE_LOGS"])),
        region=dict(aliases=["aws_region"], fallback=(env_fallback, ["AWS_REGION", "AWS_DEFAULT_REGION"])),
    )


def pool_argument_spec():
    """Options every module of this collection has (documented by the ec2spot.pool.pool doc fragment)."""
    return dict(
        pool_name=dict(type="str", default="default"),
        state_dir=dict(type="path"),
        pool_file=dict(type="path"),
        store=dict(type="str", choices=list(STORES), default=STORE),
        dynamodb_table=dict(type="str", default=DEFAULT_TABLE),
    )


def no_region(what="store=dynamodb"):
    """The error of a DynamoDB store without a region (raised before any call: nothing is changed)."""
    return InvalidRequest("%s needs a region: set the region option (for every module at once: module_defaults "
                          "for group/ec2spot.pool.spot), or the AWS_REGION environment variable" % what)


def child_environment(params, region, base=None):
    """Environment for the detached refill: the controller's, with the module's connection options applied."""
    env = dict(os.environ if base is None else base)
    for name in _CLEARED_FOR_CHILD:
        env.pop(name, None)
    if params.get("profile") and not params.get("access_key"):
        # The module authenticates with a profile: keys in the controller's environment would take precedence
        # in boto3, so the child would use other credentials than the module did.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
    for option, variable in _ENV_FOR_OPTION:
        if params.get(option):
            env[variable] = params[option]
    if region:
        env["AWS_DEFAULT_REGION"] = region
        env["AWS_REGION"] = region
    if params.get("endpoint_url"):
        env[ENDPOINT_ENV] = params["endpoint_url"]
    env[VERIFY_ENV] = "1" if params.get("validate_certs", True) else "0"
    return env


def client_from_environment(service="ec2", environ=None):
    """A client for the refill job, configured only from its environment (see child_environment), with the
    collection's retry settings (BOTOCORE_CONFIG). Region and credentials come from the environment as botocore
    reads them; boto3 is imported here, when called, never on the hand-out path."""
    # pylint: disable=import-outside-toplevel
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    environ = os.environ if environ is None else environ
    verify = environ.get("AWS_CA_BUNDLE") or environ.get(VERIFY_ENV, "1") != "0"
    config = Config(user_agent_extra="ec2spot.pool-refill", **BOTOCORE_CONFIG)
    try:
        return boto3.session.Session().client(service, endpoint_url=environ.get(ENDPOINT_ENV) or None,
                                              verify=verify, config=config)
    except botocore.exceptions.BotoCoreError as exc:
        raise PoolError("cannot connect to %s: %s" % ("EC2" if service == "ec2" else service, exc))
