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
  - Stops the pool's refill job, terminates every instance of the pool (idle or leased, Spot or fallback), the
    stopped fallbacks it kept for reuse (no pool is left to reuse them), and the pool's own launch template, and
    removes its state file and what the pool kept beside it (C(.lock), C(.refill.lock), C(.refill.log) and
    C(.refill.log.1), and the refill job's code copy once no other pool in the directory needs it and no refill
    job runs from it). With O(fallback_action=stop), fallbacks are stopped and kept instead.
  - With O(store=dynamodb) it deletes every item of the pool from the table (the refill lease too; the table and
    other pools' items stay) and this controller's refill log.
  - With O(store=dynamodb) the pool's refill job may run on another controller, where no signal reaches it. The
    module then writes a stop request on the pool's refill lease in the table; the job sees it within seconds (it
    renews its lease every 5 s), finishes its current pass and releases the lease, and the module goes on. A holder
    that does not answer within about 25 s (its controller was torn down; its lease lasts 300 s unless renewed) is
    not overridden, since a launch of it may still be in flight. The module then fails, changing nothing, with a
    message that says when the lease expires; run it again after that.
  - Only instances of this pool are touched, those its state file lists and those tagged with its pool id
    (C(ec2spot:pool-id)). Another pool that uses the same O(pool_name) (another controller's) carries another id
    and is never touched.
  - A pool that does not exist gets nothing created (no state directory, no lock file).
  - With O(include_orphans=true) it also finds, by the pool's tags, instances that are missing from the state file
    (for example launched by a refill job that was killed), so nothing is left running unseen.
  - When the store has no pool of O(pool_name) (a lost state file, a job on another controller, a O(dynamodb_table)
    that is not the pool's), nothing says which pool of that name is this one's, so nothing is ended unless
    O(pool_id) names it. Without O(pool_id) the module fails, changing nothing (check mode too), and lists the pool
    ids tagged with the name, with how many instances each has and how many of them are leased (as the tag
    C(ec2spot:leased-at), which the refill sets, shows it). Another controller's pool of the same name is never
    ended unless you name its id.
  - To end a pool whose state file was lost, name its O(pool_id) (shown by M(ec2spot.pool.spot_pool_info) and by
    this module's failure). Exactly that pool id's instances, idle and leased, and its launch template are ended.
  - A damaged state file of this pool (recognisably its own) is left in place for inspection; its instances are
    found by their tags, those of O(pool_id), or of the only pool id tagged with O(pool_name) (with several, the
    module fails and lists them). A file that is not recognisably this pool's counts as no pool.
author:
  - ec2spot.pool contributors (!UNKNOWN)
options:
  fallback_action:
    description:
      - What to do with the pool's On-Demand fallback instances.
      - V(terminate) ends them like every other instance of the pool, including the stopped fallbacks the pool
        kept for reuse.
      - V(stop) stops the running ones (tagged C(ec2spot:released-at), like every fallback a pool stops) and leaves
        the stopped ones stopped, to inspect their disks. They belong to no pool any more and nothing reuses them;
        they still carry C(ec2spot:pool-id), so a later run with O(pool_id) and O(fallback_action=terminate) ends
        them.
      - Unlike M(ec2spot.pool.spot_pool_release), whose default is the pool's own C(fallback_action), the default
        here is always V(terminate). A fallback is kept stopped so that its pool starts it again; after this
        module no pool is left to do that, so a stopped fallback would only go on costing its storage unseen.
    type: str
    choices: [stop, terminate]
    default: terminate
  include_orphans:
    description: Also end instances that carry the pool's tags (name and id) but are not in the state file.
    type: bool
    default: true
  pool_id:
    description:
      - The id of the pool to end (16 lower-case hex digits, see RV(pool_id)), when the store has no readable pool
        to say it. Required then, whenever instances tagged with O(pool_name) carry a pool id.
      - Must match the id of the pool in the store when there is one.
    type: str
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
- name: Tear down the CI pool
  ec2spot.pool.spot_pool_terminate:
    pool_name: ci
  delegate_to: localhost

- name: Tear down a pool whose state file was lost (its id is in the failure of a run without it)
  ec2spot.pool.spot_pool_terminate:
    pool_name: ci
    pool_id: 3f9c0a7b5e21d864
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
  description: Fallback instances stopped (only with O(fallback_action=stop)).
  returned: always
  type: list
  elements: str
  sample: []
orphans:
  description: Instances found only by the pool's tags (they were not in the state file).
  returned: always
  type: list
  elements: str
  sample: []
kept_fallbacks:
  description:
    - Stopped fallbacks the pool kept for reuse. Terminated with it (they are in RV(terminated) too), or left
      stopped with O(fallback_action=stop).
  returned: always
  type: list
  elements: str
  sample: [i-0fedcba9876543210]
pool_id:
  description: The id of the pool that was ended (null for a pool made before pool ids).
  returned: always
  type: str
  sample: 3f9c0a7b5e21d864
msg:
  description: What was ended, in one sentence.
  returned: always
  type: str
  sample: "pool 'ci' ended: 4 terminated, 0 stopped; 1 stopped fallback kept for reuse terminated with the pool"
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import defaults
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import ec2_client
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import fail
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import aws_pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import pool_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import terminate_pool


def main():
    argument_spec = dict(
        pool_argument_spec(),
        fallback_action=dict(type="str", choices=list(defaults.FALLBACK_ACTIONS), default="terminate"),
        include_orphans=dict(type="bool", default=True),
        pool_id=dict(type="str"),
    )
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result = terminate_pool(aws_pool_store(module), ec2_client(module), module.params["fallback_action"],
                                module.params["include_orphans"], check_mode=module.check_mode,
                                pool_id=module.params["pool_id"])
    except PoolError as error:
        fail(module, error)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
