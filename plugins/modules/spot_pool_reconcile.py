#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: spot_pool_reconcile
short_description: Make a warm pool of EC2 Spot instances whole, for a schedule
version_added: 0.2.0
description:
  - Runs one bounded refill pass over an existing pool, the same pass the refill job that
    M(ec2spot.pool.spot_pool_get) starts runs. It fills in the addresses of new instances, drops instances EC2 no
    longer runs, launches what is missing (Spot first, then the pool's stopped fallbacks, then On-Demand, as
    M(ec2spot.pool.spot_pool_init) set it up), ends expired leases (a Spot instance is terminated, a fallback stopped
    or terminated per the pool's C(fallback_action)), marks orphans (instances with the pool's tags in neither the
    pool nor a lease) and terminates them once the mark is older than the pool's C(orphan_grace), and replaces idle
    fallbacks by Spot instances.
  - Made to run from a schedule (a systemd timer, a CI cron job), so that a pool nobody calls
    M(ec2spot.pool.spot_pool_get) on still ends its expired leases and sweeps its orphans.
  - With O(wait=true), passes are repeated, one second apart, until every slot holds a ready instance, or the
    module fails after O(wait_timeout) seconds (what was done so far stays done).
  - A pass holds the pool's refill lock, as the refill job does, so the two never run at once. When the refill job
    holds it, the module without O(wait) does nothing and returns at once with RV(refill_running=true) and no
    failure, since the job does the same work; the running job is never stopped. With O(wait=true) it waits for the
    job to finish (within O(wait_timeout)), then runs its own passes. The lock is let go between passes, so
    M(ec2spot.pool.spot_pool_init) and M(ec2spot.pool.spot_pool_terminate) never wait long for it.
  - The module never starts the refill job, so a schedule leaves no process behind.
  - A pool that does not exist is an error, and nothing is created for it (no state file, lock file or directory).
author:
  - ec2spot.pool contributors (!UNKNOWN)
options:
  wait:
    description: Repeat the pass until every slot of the pool holds an instance that runs and has an address.
    type: bool
    default: false
  wait_timeout:
    description:
      - How long O(wait=true) waits, in seconds (for a running refill job, then for the pool to be whole).
        C(0) or more.
    type: int
    default: 300
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
      - Reads the pool and asks EC2 for its instances (one DescribeInstances), and returns what a pass would do in
        RV(plan). It writes, launches, tags, stops and terminates nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - A pass over a whole pool with no expired lease and no orphan changes nothing. Orphans and expired leases
        are ended as time passes, so a run later with the same arguments may change the pool.
notes:
  - "The EC2 actions a pass needs: C(ec2:DescribeInstances), C(ec2:CreateFleet), C(ec2:RunInstances),
    C(ec2:CreateTags), C(ec2:StartInstances), C(ec2:StopInstances), C(ec2:TerminateInstances),
    C(ec2:DescribeLaunchTemplates), C(ec2:CreateLaunchTemplate) and C(iam:PassRole) when the pool launches with an
    instance profile. Check mode needs only C(ec2:DescribeInstances)."
"""

EXAMPLES = r"""
- name: One pass over the CI pool (from a systemd timer or a CI schedule)
  ec2spot.pool.spot_pool_reconcile:
    pool_name: ci
  delegate_to: localhost
  register: reconciled

- name: Make the pool whole, waiting up to ten minutes
  ec2spot.pool.spot_pool_reconcile:
    pool_name: ci
    wait: true
    wait_timeout: 600
  delegate_to: localhost

- name: What would a pass do?
  ec2spot.pool.spot_pool_reconcile:
    pool_name: ci
  check_mode: true
  delegate_to: localhost
  register: reconcile_plan

- name: Show the plan
  ansible.builtin.debug:
    msg: "would launch {{ reconcile_plan.plan.launch }}, end {{ reconcile_plan.plan.end_expired | length }} expired"
"""

RETURN = r"""
msg:
  description: What was done, in one line (or why nothing was).
  returned: always
  type: str
  sample: "pool 'ci': 1 pass, 3 ready of 3"
passes:
  description: How many passes ran (0 in check mode, or when the refill job was running and O(wait=false)).
  returned: always
  type: int
  sample: 1
refill_running:
  description:
    - Whether the pool's refill job held the refill lock. Without O(wait), the module then did nothing (the job
      does the same work); in check mode it only says so.
  returned: always
  type: bool
  sample: false
whole:
  description: Whether every slot of the pool holds an instance that runs and has an address.
  returned: always
  type: bool
  sample: true
counts:
  description: Ready, pending, leased, Spot and fallback counts, and the target, after the passes.
  returned: always
  type: dict
  sample: {target: 3, ready: 3, pending: 0, leased: 1, spot: 3, fallback: 0}
pool_id:
  description: The pool's id (tagged as C(ec2spot:pool-id) on its instances).
  returned: always
  type: str
  sample: 3f9c0a7b5e21d864
launched:
  description: Instances launched, or stopped fallbacks started again, to fill missing slots or replace fallbacks.
  returned: always
  type: list
  elements: str
  sample: [i-0123456789abcdef0]
reused:
  description: Stopped fallbacks started again (also in RV(launched)).
  returned: always
  type: list
  elements: str
  sample: []
replayed:
  description: Instances of fleet requests whose answer was lost, sent again with their ClientToken (nothing was
    launched twice).
  returned: always
  type: list
  elements: str
  sample: []
addressed:
  description: Instances of the pool whose addresses were filled in (ready to hand out now).
  returned: always
  type: list
  elements: str
  sample: [i-0123456789abcdef0]
dropped:
  description: Idle instances taken out of the pool because EC2 no longer runs them.
  returned: always
  type: list
  elements: str
  sample: [i-0fedcba9876543210]
interrupted:
  description: Idle Spot instances (also in RV(dropped)) that EC2 ended without the pool ending them; their
    offerings cool down.
  returned: always
  type: list
  elements: str
  sample: []
expired:
  description: Leases past their C(expires_at), ended (Spot terminated, fallbacks per the pool's C(fallback_action)).
  returned: always
  type: list
  elements: str
  sample: [i-0aaaaaaaaaaaaaaaa]
leases_tagged:
  description: Leased instances tagged C(ec2spot:leased-at), so that a rebuild from tags keeps their leases.
  returned: always
  type: list
  elements: str
  sample: []
orphans_marked:
  description: Instances with the pool's tags in neither the pool nor a lease, tagged C(ec2spot:orphan-since).
  returned: always
  type: list
  elements: str
  sample: []
orphans_terminated:
  description: Orphans terminated, their mark being older than the pool's C(orphan_grace).
  returned: always
  type: list
  elements: str
  sample: []
retired:
  description: Idle instances above the pool's size ended (fallbacks first, once their Spot replacements are ready).
  returned: always
  type: list
  elements: str
  sample: []
launch_errors:
  description: Errors EC2 gave for offerings it could not launch (those offerings cool down).
  returned: always
  type: list
  elements: dict
  sample: [{code: InsufficientInstanceCapacity, message: "There is no Spot capacity available"}]
plan:
  description: What one pass would do, without doing any of it.
  returned: in check mode
  type: dict
  sample: {replay: [], drop: [i-0fedcba9876543210], interrupted: [i-0fedcba9876543210], address: [],
           end_expired: [i-0aaaaaaaaaaaaaaaa], tag_leased: [], mark_orphans: [], end_orphans: [], launch: 2,
           replace_fallbacks: 0, reuse: [], fallback_action: stop}
  contains:
    replay:
      description: ClientTokens of fleet requests whose answer was lost, that the pass would send again.
      returned: always
      type: list
      elements: str
      sample: []
    drop:
      description: Idle instances that EC2 no longer runs, to take out of the pool.
      returned: always
      type: list
      elements: str
      sample: [i-0fedcba9876543210]
    interrupted:
      description: Those of RV(plan.drop) that are Spot instances EC2 ended by itself (their offerings cool down).
      returned: always
      type: list
      elements: str
      sample: []
    address:
      description: Idle instances whose addresses would be filled in.
      returned: always
      type: list
      elements: str
      sample: []
    end_expired:
      description: Leases past their C(expires_at), to end.
      returned: always
      type: list
      elements: str
      sample: [i-0aaaaaaaaaaaaaaaa]
    tag_leased:
      description: Leased instances to tag C(ec2spot:leased-at).
      returned: always
      type: list
      elements: str
      sample: []
    mark_orphans:
      description: Orphans to mark.
      returned: always
      type: list
      elements: str
      sample: []
    end_orphans:
      description: Marked orphans to terminate.
      returned: always
      type: list
      elements: str
      sample: []
    launch:
      description: How many instances to launch for missing slots (as if the requests in RV(plan.replay) launched
        nothing).
      returned: always
      type: int
      sample: 1
    replace_fallbacks:
      description: How many Spot instances to launch besides, to replace idle fallbacks.
      returned: always
      type: int
      sample: 0
    reuse:
      description: Stopped fallbacks that would be started again before any new On-Demand instance.
      returned: always
      type: list
      elements: str
      sample: []
    fallback_action:
      description: How a fallback whose lease expired, or that is retired, is ended (C(stop) or C(terminate)).
      returned: always
      type: str
      sample: stop
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import ec2_client
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import fail
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import aws_pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import pool_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_RECONCILE_WAIT_TIMEOUT
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import reconcile_pool


def main():
    argument_spec = dict(
        pool_argument_spec(),
        wait=dict(type="bool", default=False),
        wait_timeout=dict(type="int", default=DEFAULT_RECONCILE_WAIT_TIMEOUT),
    )
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        result = reconcile_pool(aws_pool_store(module), ec2_client(module), wait=params["wait"],
                                wait_timeout=params["wait_timeout"], check_mode=module.check_mode)
    except PoolError as error:
        fail(module, error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
