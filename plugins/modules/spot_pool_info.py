#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: spot_pool_info
short_description: Show a pool without changing it
version_added: 0.1.0
description:
  - Returns the pool's idle instances, its leases, counts and the state of its refill job, as the state file
    says. With O(verify=true), also asks EC2 for the state of every instance (one DescribeInstances call).
  - Writes and creates nothing, not even a lock file or the state directory of a pool that does not exist.
  - Says whether a stopped refill job will start again by itself and, when it will not, what to fix
    (C(will_restart) and C(fix) in RV(refill)).
author:
  - ec2spot.pool contributors (!UNKNOWN)
options:
  verify:
    description: Ask EC2 for the state of every instance and list those no longer running in RV(dead).
    type: bool
    default: false
extends_documentation_fragment:
  - ec2spot.pool.pool
  - ec2spot.pool.attributes
  - ec2spot.pool.attributes.info_module
  - ec2spot.pool.attributes.action_group
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
"""

EXAMPLES = r"""
- name: How is the CI pool doing?
  ec2spot.pool.spot_pool_info:
    pool_name: ci
    verify: true
  delegate_to: localhost
  register: pool

- name: Show it
  ansible.builtin.debug:
    msg: "{{ pool.counts.ready }} ready, {{ pool.counts.leased }} leased, refill running: {{ pool.refill.running }}"
"""

RETURN = r"""
exists:
  description: Whether the pool exists (has a state file, or with O(store=dynamodb) a pool item in the table).
  returned: always
  type: bool
  sample: true
path:
  description:
    - The pool's state file, or with O(store=dynamodb) C(dynamodb table <table>, pool <pool_name>).
  returned: always
  type: str
  sample: /home/ci/.local/state/ec2spot/default.json
pool_id:
  description: The pool's id, tagged as C(ec2spot:pool-id) on its instances and launch template (null when none).
  returned: always
  type: str
  sample: 3f9c0a7b5e21d864
kept_fallbacks:
  description:
    - Stopped fallbacks the pool keeps to start again before it launches a new On-Demand instance, as the last
      refill pass saw them (a fallback released since shows after the next pass).
    - M(ec2spot.pool.spot_pool_terminate) terminates them with the pool.
  returned: always
  type: list
  elements: dict
  sample: [{id: i-0fedcba9876543210, instance_type: t3.micro, availability_zone: us-east-1a,
            released_at: "2026-11-22T10:00:00Z"}]
target_size:
  description: How many idle instances the pool keeps.
  returned: always
  type: int
  sample: 3
launch:
  description: The launch specification given to M(ec2spot.pool.spot_pool_init) (no credentials).
  returned: always
  type: dict
  sample: {image_id: ami-0123456789abcdef0, instance_types: [t3.micro], availability_zones: [us-east-1a]}
pool:
  description: Idle instances; with O(verify=true) each has C(ec2_state).
  returned: always
  type: list
  elements: dict
  sample: [{id: i-0123456789abcdef0, ip: 203.0.113.10, type: spot, instance_type: t3.micro}]
leases:
  description: Leased instances; C(expired) is true once C(expires_at) has passed (the next refill ends it).
  returned: always
  type: list
  elements: dict
  sample: [{id: i-0fedcba9876543210, ip: 203.0.113.11, type: spot, leased_at: "2026-11-22T10:00:00Z"}]
counts:
  description: Ready, pending, leased, Spot and fallback counts, and the target.
  returned: always
  type: dict
  sample: {target: 3, ready: 2, pending: 1, leased: 1, spot: 3, fallback: 0}
refill:
  description:
    - The refill job, its last run and its last error (C(last_error), with AWS's error code in C(last_error_code)).
    - C(will_restart) says whether the pool recovers without anyone acting. It is true when the job has no error
      or a passing one (throttling, capacity, EC2 unreachable, a run that gave up); the next
      M(ec2spot.pool.spot_pool_get) starts the job again. It is false when the job stopped on an error that it
      would meet again (authorisation, a deleted launch template, invalid launch options, a crash). C(fix) then
      says what to do, and to run M(ec2spot.pool.spot_pool_init) afterwards to start the job again.
    - A job that was killed before it could record why it stopped is reported with C(pid=null) and a
      C(last_error) that says so. With store=dynamodb, a job that may not write the table records why it stopped
      on its refill lease instead, and C(last_error) gives that reason, the host the job ran on and its log there;
      a job that died holding the lease (killed, its controller gone) is reported as ended without recording why.
  returned: always
  type: dict
  sample: {running: false, pid: null, started_at: "2026-11-22T10:00:01Z", finished_at: "2026-11-22T10:00:02Z",
           verified_at: "2026-11-22T09:58:09Z",
           last_error: "CreateFleet failed: You are not authorized to perform this operation. (UnauthorizedOperation)",
           last_error_code: UnauthorizedOperation, last_error_permanent: true, will_restart: false,
           fix: "give the credentials the pool runs with ... then run ec2spot.pool.spot_pool_init ...",
           log: /home/ci/.local/state/ec2spot/default.json.refill.log}
cooldowns:
  description: Offerings, subnets or markets the refill does not ask until C(until), and the error why.
  returned: always
  type: list
  elements: dict
  sample: [{scope: offering, market: spot, instance_type: t3.micro, location: us-east-1a,
            code: InsufficientInstanceCapacity, until: "2026-11-22T10:03:00Z"}]
pending_launches:
  description: ClientTokens of fleet requests whose answer the state file has not taken in yet (replayed by the
    next refill pass).
  returned: always
  type: list
  elements: str
  sample: []
dead:
  description: Instances of the pool that EC2 says no longer run.
  returned: when O(verify=true)
  type: list
  elements: str
  sample: []
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import ec2_client
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import fail
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import aws_pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import pool_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import pool_info


def main():
    argument_spec = dict(pool_argument_spec(), verify=dict(type="bool", default=False))
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = pool_info(aws_pool_store(module), lambda: ec2_client(module), verify=module.params["verify"])
    except PoolError as error:
        fail(module, error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
