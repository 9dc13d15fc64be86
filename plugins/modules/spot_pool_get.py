#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: spot_pool_get
short_description: Hand out a ready instance of the pool at once
version_added: 0.1.0
description:
  - Takes the first instance of the pool that runs and has an address, records it as leased, and returns its
    address. It never waits for a launch (unless O(wait_timeout) allows it).
  - Then starts the pool's refill job, a detached process that launches a replacement and fills in its address
    while the play goes on. At most one refill job runs per pool. A job that stopped on an error is started again
    by the next get. If the job cannot be started (for example the disk is full), the get still succeeds, with a
    warning and C(error) in RV(refill).
  - With O(verify=true) (the default), EC2 is asked about the instance this get is about to hand out (one
    DescribeInstances of that one id), so an instance EC2 reports as not running is never handed out. When it is
    dead, it is dropped from the pool and the pool's other ready instances are checked in one more call. What
    EC2 said is recorded even when the get then fails.
  - That check is a signed EC2 Query API request (it loads no EC2 service model, which costs a boto3 client about
    a quarter of a second on every get). With keys given as O(access_key)/O(secret_key)/O(session_token) or by
    E(AWS_ACCESS_KEY_ID)/E(AWS_SECRET_ACCESS_KEY)/E(AWS_SESSION_TOKEN) and no O(profile), a region from
    O(region) or E(AWS_REGION)/E(AWS_DEFAULT_REGION), and no proxy, it is signed with the collection's own
    Signature Version 4 code and sent with the Python standard library, without importing botocore; otherwise
    (a profile, keys from config files, SSO, container or instance roles, a region from a config file, a proxy)
    with botocore's signer, credential resolution and HTTP session. Either way it is made with the
    same connection options as every amazon.aws module (of O(aws_config), C(proxies), C(connect_timeout) and
    C(read_timeout) apply; the defaults are the environment's proxies, 5 s and 15 s). Throttling and passing server errors are retried up to
    3 times with jittered, capped pauses; an authentication error, missing credentials or an unreachable
    endpoint fail the get with a message saying so, and change nothing.
  - Fails when no instance is ready; the message gives the ready, pending and leased counts, the instances it
    dropped, the refill job's last error if it has one, and whether it (re)started the refill job, which it
    does in that case too. A failed get leaves no lease behind (the lease is its last write).
  - This module declares the amazon.aws connection options itself instead of using AnsibleAWSModule, so that
    the hand-out path does not import boto3. With O(store=dynamodb) the hand-out is one strongly consistent read
    of the table and one conditional write of one instance's item (two controllers never get the same
    instance), made with a light DynamoDB client (no boto3) from the same connection options, signed and sent
    as the EC2 check is.
author:
  - ec2spot.pool contributors (!UNKNOWN)
options:
  address:
    description: Which address to return as RV(ip).
    type: str
    choices: [public, private]
    default: public
  verify:
    description:
      - Ask EC2 about the instance before handing it out, and hand out only one that EC2 reports as running.
      - With C(false), the pool file is trusted as it is and EC2 is not called at all (the fastest get; it may
        hand out an instance that died since the refill job last checked the pool).
    type: bool
    default: true
  verify_max_age:
    description:
      - Skip the EC2 check when the refill job checked the whole pool less than this many seconds ago. A value
        above C(0) trades the guarantee of O(verify) for speed; within that window a get may hand out an
        instance that died after the check.
      - C(0) checks on every get.
      - Negative values are refused.
    type: int
    default: 0
  wait_timeout:
    description:
      - Seconds to wait for an instance to become ready when none is. C(0) fails at once. Negative values are
        refused.
    type: int
    default: 0
  refill:
    description: Start the refill job after the hand-out (or when no instance is ready).
    type: bool
    default: true
  lease_ttl:
    description:
      - Seconds after which the lease expires (returned as RV(expires_at)); the refill job then ends the
        instance (a Spot one is terminated, a fallback stopped or terminated per the pool's C(fallback_action)).
        So a lease whose holder died or never learned the instance id does not keep an instance forever.
      - Give a value above the longest job you run on an instance.
      - C(0) means the lease never expires; it then lasts until M(ec2spot.pool.spot_pool_release) or
        M(ec2spot.pool.spot_pool_terminate) ends it. Negative values are refused.
    type: int
    default: 86400
extends_documentation_fragment:
  - ec2spot.pool.pool
  - ec2spot.pool.attributes
  - ec2spot.pool.attributes.action_group
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
attributes:
  check_mode:
    support: full
    details:
      - Reports the instance that would be handed out, without leasing it or starting the refill job.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Every run hands out another instance.
"""

EXAMPLES = r"""
- name: Get an instance for this CI job
  ec2spot.pool.spot_pool_get:
    pool_name: ci
    lease_ttl: 3600
  delegate_to: localhost
  register: runner

- name: Use it
  ansible.builtin.debug:
    msg: "Run the job on {{ runner.ip }} ({{ runner.type }} {{ runner.instance_type }} in {{ runner.availability_zone }})"

- name: Return the private address; trust a pool the refill checked in the last minute (faster, see verify_max_age)
  ec2spot.pool.spot_pool_get:
    pool_name: ci
    address: private
    verify_max_age: 60
  delegate_to: localhost
"""

RETURN = r"""
ip:
  description: The address chosen by O(address).
  returned: success
  type: str
  sample: 203.0.113.10
public_ip:
  description: The public address, if the instance has one.
  returned: success
  type: str
  sample: 203.0.113.10
private_ip:
  description: The private address.
  returned: success
  type: str
  sample: 10.0.0.10
instance_id:
  description: The instance handed out; pass it to M(ec2spot.pool.spot_pool_release).
  returned: success
  type: str
  sample: i-0123456789abcdef0
lease_id:
  description:
    - A random token for this lease. Pass it to M(ec2spot.pool.spot_pool_release) with RV(instance_id); the
      release then ends this lease and nothing else, however often it runs.
  returned: success
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015
type:
  description: C(spot), or C(fallback) for an On-Demand instance launched when Spot failed.
  returned: success
  type: str
  sample: spot
availability_zone:
  description: Zone of the instance.
  returned: success
  type: str
  sample: us-east-1a
instance_type:
  description: Instance type.
  returned: success
  type: str
  sample: t3.micro
leased_at:
  description: When the lease started (UTC).
  returned: success
  type: str
  sample: "2026-11-22T10:00:00Z"
expires_at:
  description: When the lease expires (UTC); C(null) when O(lease_ttl=0).
  returned: success
  type: str
  sample: "2026-11-22T11:00:00Z"
verified:
  description: Whether EC2 was asked about the instance before this hand-out (see O(verify), O(verify_max_age)).
  returned: success
  type: bool
  sample: false
dropped:
  description: Instances dropped from the pool because EC2 said they no longer run (this get asked about them).
  returned: success
  type: list
  elements: str
  sample: []
counts:
  description: The pool's counts after the hand-out.
  returned: always
  type: dict
  sample: {target: 3, ready: 2, pending: 0, leased: 1, spot: 2, fallback: 0}
refill:
  description:
    - Whether this run started the refill job (C(started=false) when one was already running).
    - C(error) says why the job could not be started, when it could not; the lease stands all the same.
    - C(last_error) (store=dynamodb) says how the previous job ended when it could not record that in the pool
      itself (no permission to write the table, killed), naming the host and its log there; also in C(warnings).
  returned: success
  type: dict
  sample: {started: true, pid: 12345}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import fail
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import child_environment
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import connection_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import pool_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.ec2query import InstanceStates
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_LEASE_TTL
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import get_instance
# Not used here: it makes Ansible ship the refill job's code, which this module starts (see refill_payload.py).
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill_payload  # noqa: F401 pylint: disable=unused-import


def main():
    argument_spec = dict(
        connection_argument_spec(),
        **pool_argument_spec(),
        address=dict(type="str", choices=["public", "private"], default="public"),
        verify=dict(type="bool", default=True),
        verify_max_age=dict(type="int", default=0),
        wait_timeout=dict(type="int", default=0),
        refill=dict(type="bool", default=True),
        lease_ttl=dict(type="int", default=DEFAULT_LEASE_TTL, no_log=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        result = get_instance(
            pool_store(params), InstanceStates(params), address=params["address"],
            verify=params["verify"], verify_max_age=params["verify_max_age"], lease_ttl=params["lease_ttl"],
            wait_timeout=params["wait_timeout"], refill=params["refill"],
            refill_env=child_environment(params, params["region"]), check_mode=module.check_mode,
        )
    except PoolError as error:
        fail(module, error)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
