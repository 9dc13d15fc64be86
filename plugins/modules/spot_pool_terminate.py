#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: spot_pool_terminate
short_description: End a whole pool
version_added: 0.1.0
description:
  - Stops the pool's refill job, terminates every Spot instance of the pool (idle or leased), stops (or
    terminates, with O(fallback_action=terminate)) its On-Demand fallbacks, and removes its state file and what
    the pool kept beside it (C(.lock), C(.refill.lock), C(.refill.log) and C(.refill.log.1), and the refill
    job's code copy once no other pool in the directory needs it and no refill job runs from it).
  - A pool that does not exist gets nothing created (no state directory, no lock file).
  - With O(include_orphans=true) it also finds, by the tag C(ec2spot:pool=<pool_name>), instances that are
    missing from the state file (for example launched by a refill job that was killed), so nothing is left
    running unseen.
  - Works even when the state file is corrupt. The instances are then found by their tag, and the file is left in
    place for inspection.
author:
  - ec2spot.pool contributors (!UNKNOWN)
options:
  fallback_action:
    description: What to do with On-Demand fallback instances.
    type: str
    choices: [stop, terminate]
    default: stop
  include_orphans:
    description: Also end instances that carry the pool's tag but are not in the state file.
    type: bool
    default: true
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
      - Reports the instances that would be terminated and stopped.
  diff_mode:
    support: none
  idempotent:
    support: full
"""

EXAMPLES = r"""
- name: Tear down the CI pool, terminating fallbacks too
  ec2spot.pool.spot_pool_terminate:
    pool_name: ci
    fallback_action: terminate
  delegate_to: localhost
"""

RETURN = r"""
terminated:
  description: Instances terminated.
  returned: always
  type: list
  elements: str
  sample: [i-0123456789abcdef0]
stopped:
  description: Fallback instances stopped.
  returned: always
  type: list
  elements: str
  sample: []
orphans:
  description: Instances found only by the pool's tag (they were not in the state file).
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import ec2_client
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import fail
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.connection import pool_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.pool import terminate_pool


def main():
    argument_spec = dict(
        pool_argument_spec(),
        fallback_action=dict(type="str", choices=["stop", "terminate"], default="stop"),
        include_orphans=dict(type="bool", default=True),
    )
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = terminate_pool(pool_store(module.params), ec2_client(module), module.params["fallback_action"],
                                module.params["include_orphans"], check_mode=module.check_mode)
    except PoolError as error:
        fail(module, error)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
