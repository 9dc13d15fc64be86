#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: spot_pool_release
short_description: End a lease of a pool instance
version_added: 0.1.0
description:
  - Ends the lease of an instance handed out by M(ec2spot.pool.spot_pool_get) and removes it from the pool's
    leases. A Spot instance is terminated (a fresh one replaces it in the pool); an On-Demand fallback is
    stopped and kept for reuse, or terminated, per the pool's C(fallback_action) (see
    M(ec2spot.pool.spot_pool_init)) unless O(fallback_action) says otherwise.
  - It ends only the lease its caller names. With O(lease_id) (the token M(ec2spot.pool.spot_pool_get)
    returned) it ends that lease and nothing else; when that lease is no longer held (a retried cleanup step,
    an expired lease, or an instance leased again to someone else since) it changes nothing. Pass both
    O(instance_id) and O(lease_id) in automation.
  - An empty or omitted O(instance_id) with no O(lease_id) releases nothing (C(changed=false)), so an
    always-run cleanup step is safe when the hand-out failed. O(instance_id=latest) releases the pool's most
    recent lease, whoever holds it.
  - An O(instance_id) the pool has not leased (without O(lease_id)) is an error, and nothing is changed.
author:
  - ec2spot.pool contributors (!UNKNOWN)
options:
  instance_id:
    description:
      - The leased instance to release, or C(latest) for the pool's most recent lease.
      - Empty or omitted (and no O(lease_id)) means there is nothing to release.
    type: str
  lease_id:
    description:
      - The lease to end, as returned by M(ec2spot.pool.spot_pool_get) (RV(ec2spot.pool.spot_pool_get#module:lease_id)).
      - A lease that is no longer held is not an error; nothing is changed.
    type: str
  fallback_action:
    description:
      - What to do with an On-Demand fallback instance.
      - V(stop) stops it, tags it C(ec2spot:released-at) and keeps it for the pool to start again; V(terminate)
        terminates it.
      - When omitted, the pool's own C(fallback_action) (the one M(ec2spot.pool.spot_pool_init) set, which the
        refill also follows for expired leases and retired fallbacks).
    type: str
    choices: [stop, terminate]
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
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - With O(lease_id), a second run changes nothing. Releasing the same O(instance_id) without O(lease_id)
        twice fails the second time (it is no longer leased); O(instance_id=latest) releases the next most
        recent lease on each run.
"""

EXAMPLES = r"""
- name: Release the instance this job got (safe to run again, and when the get failed)
  ec2spot.pool.spot_pool_release:
    pool_name: ci
    instance_id: "{{ runner.instance_id | default('') }}"
    lease_id: "{{ runner.lease_id | default('') }}"
  delegate_to: localhost

- name: Release the most recent lease, whoever holds it, terminating it even if it is an On-Demand fallback
  ec2spot.pool.spot_pool_release:
    pool_name: ci
    instance_id: latest
    fallback_action: terminate
  delegate_to: localhost
"""

RETURN = r"""
instance_id:
  description: The instance released, or null when nothing was released.
  returned: always
  type: str
  sample: i-0123456789abcdef0
type:
  description: C(spot) or C(fallback).
  returned: when a lease was released
  type: str
  sample: spot
action:
  description: C(terminate), C(stop), or C(none) when nothing was released.
  returned: always
  type: str
  sample: terminate
msg:
  description: Why nothing was released.
  returned: when nothing was released
  type: str
  sample: "nothing released from pool 'ci': lease 3f2a... is not held any more"
counts:
  description: The pool's counts after the release.
  returned: always
  type: dict
  sample: {target: 3, ready: 3, pending: 0, leased: 0, spot: 3, fallback: 0}
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import defaults
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import ec2_client
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import fail
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import aws_pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import pool_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import release_instance


def main():
    argument_spec = dict(
        pool_argument_spec(),
        instance_id=dict(type="str"),
        lease_id=dict(type="str", no_log=False),
        fallback_action=dict(type="str", choices=list(defaults.FALLBACK_ACTIONS)),  # None: the pool's own setting
    )
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = release_instance(aws_pool_store(module), ec2_client(module), module.params["instance_id"],
                                  module.params["fallback_action"], check_mode=module.check_mode,
                                  lease_id=module.params["lease_id"])
    except PoolError as error:
        fail(module, error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
