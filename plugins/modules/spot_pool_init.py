#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: spot_pool_init
short_description: Create or resize a warm pool of EC2 Spot instances
version_added: 0.1.0
description:
  - Launches EC2 instances until the pool holds O(size) of them with one instant EC2 Fleet for Spot over every
    combination of O(instance_types) and O(availability_zones) (or O(subnet_ids)), and one for On-Demand
    instances (C(type=fallback)) only for what Spot could not supply, after an error listed in O(fallback_on),
    when O(fallback=true).
  - Offerings that failed for lack of capacity, or whose instances were interrupted, are not asked again for
    O(cooldown) seconds; the refill job later replaces fallbacks by Spot instances.
  - Fleets launch from O(launch_template), or from a launch template C(ec2spot-<pool_name>) that the pool makes
    from O(image_id) and the other options (deleted by M(ec2spot.pool.spot_pool_terminate)).
  - Every pool has a pool id (RV(pool_id), 16 hex digits) made when it is created and kept in its state. Every
    instance is tagged at launch with C(ec2spot:pool=<pool_name>), C(ec2spot:pool-id=<pool id>) and
    C(ec2spot:type=spot|fallback), so the pool can always be found from EC2, and with O(tags). The pool's own launch
    template is named C(ec2spot-<pool_name>-<pool id>) and carries the same tags. The refill's orphan sweep,
    M(ec2spot.pool.spot_pool_terminate) and O(rebuild) only ever touch instances of the pool's id.
  - The state directory (or, for a new pool, the directories above where it will be made) is checked before
    anything is made in EC2. A launch template a new pool's init made is deleted again when the run fails before
    the pool is written.
  - Creating a pool (no state file yet) fails, before anything is written or launched, when another live pool in the
    region already uses O(pool_name) (instances or a launch template tagged with the name and another pool id, or
    running instances of a pool made before pool ids). The message names the other pool's id and instance count.
    Controllers that want one pool share one store (on one controller, the same state file; across controllers,
    the same DynamoDB table, O(store=dynamodb)); others choose another name.
  - A pool that another init created while this one ran (two controllers at once) is not taken over. This run
    fails, having launched and written nothing, and the other one's pool stands; run it again to apply its
    options. The same holds when this run sees the other one's instances in EC2 before its pool in the store, as
    the store is read again before another pool of the name is reported.
  - A pool created before pool ids (a state file without C(pool_id)) adopts an id at its next init or refill, and the
    instances its state file lists, and its launch template, are tagged with it. Instances with the pool's name that
    the file does not list are never adopted or swept; end them by hand.
  - When Spot cannot supply an instance and a fallback is needed, a stopped fallback that the pool kept for reuse
    (released with C(fallback_action=stop), of an instance type and zone the pool still asks for) is started again
    before a new On-Demand instance is launched.
  - With O(wait=true) the module returns once every instance runs and has an address, or fails after
    O(wait_timeout) seconds (instances launched so far stay in the pool).
  - Running it again with the same options changes nothing when the pool is whole; a smaller O(size) terminates
    idle instances (fallbacks first); a new launch specification applies to instances launched from then on.
  - A refill job of the pool that is running is stopped first; this module does its work. With
    O(store=dynamodb) a job on another controller is asked to stop through the table (a stop request on the pool's
    refill lease) and is waited for about 25 s. One that does not answer (its controller is gone) fails the module,
    changing nothing, with a message that says when its lease expires (see M(ec2spot.pool.spot_pool_terminate)).
author:
  - ec2spot.pool contributors (!UNKNOWN)
options:
  size:
    description:
      - Number of idle instances the pool keeps ready. C(0) keeps an empty pool.
      - At most O(max_size). Before launching, what is missing is checked against the account's EC2 vCPU quotas
        in Service Quotas, the quota of each instance type's family (Standard, G and VT, P, X, F, Inf, DL, Trn, High
        Memory, HPC) for Spot and, with O(fallback), On-Demand, less the vCPUs the region's running and pending
        instances of those families use. A pool that surely cannot fit is refused, with the quotas and their
        codes named. A quota that cannot be read (no permission, a partition or endpoint without it, a family
        without a known quota) gives a warning and does not block.
    type: int
    default: 5
  max_size:
    description:
      - The largest O(size) accepted, a guard against typos (C(size=10000) for C(10)). Raise it for a larger pool.
    type: int
    default: 100
  image_id:
    description: AMI to launch. Exactly one of O(image_id) and O(launch_template) is required.
    type: str
  launch_template:
    description:
      - Launch template to launch from (holds the AMI, user data and the rest), used as it is.
      - It must exist; that is checked before the pool file is written.
    type: dict
    suboptions:
      id:
        description: Launch template ID.
        type: str
      name:
        description: Launch template name.
        type: str
      version:
        description: Version (a number, C($Latest) or C($Default)).
        type: str
  instance_types:
    description: Instance types in order of preference. Spot is tried for each before On-Demand is.
    type: list
    elements: str
    default: [t3.micro]
  availability_zones:
    description:
      - Zones to spread the pool over. Defaults to the region's default placement.
      - Mutually exclusive with O(subnet_ids).
    type: list
    elements: str
  subnet_ids:
    description: Subnets to spread the pool over (one zone each). Mutually exclusive with O(availability_zones).
    type: list
    elements: str
  security_group_ids:
    description: Security groups of the instances.
    type: list
    elements: str
  key_name:
    description: EC2 key pair name.
    type: str
  iam_instance_profile:
    description: Instance profile name or ARN.
    type: str
  user_data:
    description:
      - User data for the instances.
      - It is kept in the pool file (mode C(0600)) because every later launch needs it. Keep secrets out of it;
        use a launch template or a secret store for those.
    type: str
  tags:
    description:
      - Extra tags for the instances and their volumes.
      - Keys starting with C(ec2spot:) (in any case) are refused; that namespace holds the pool's own tags.
    type: dict
    default: {}
  fallback:
    description: Launch On-Demand instances for what Spot cannot supply (capacity or account limits).
    type: bool
    default: true
  allocation_strategy:
    description:
      - How the Spot fleet picks among the offerings (instance type x zone) that are not cooling down.
    type: str
    choices: [price-capacity-optimized, lowest-price, capacity-optimized]
    default: price-capacity-optimized
  fallback_on:
    description:
      - EC2 error codes of a Spot launch after which On-Demand fallbacks are launched.
      - Defaults to the capacity errors (C(InsufficientCapacityOnHost), C(InsufficientHostCapacity),
        C(InsufficientInstanceCapacity), C(InsufficientReservedInstanceCapacity), C(UnfulfillableCapacity),
        C(Unsupported)), the full subnet (C(InsufficientFreeAddressesInSubnet)) and the account limits
        (C(InstanceLimitExceeded), C(MaxFleetCountExceeded), C(MaxSpotInstanceCountExceeded), C(SpotMaxPriceTooLow),
        C(VcpuLimitExceeded)).
    type: list
    elements: str
  fallback_action:
    description:
      - What the refill does with an idle fallback once a Spot instance has replaced it, and with a leased
        fallback whose lease expired.
      - V(stop) keeps it stopped and tagged C(ec2spot:released-at); the pool starts it again the next time it
        needs a fallback (see RV(ec2spot.pool.spot_pool_info#module:kept_fallbacks)), and
        M(ec2spot.pool.spot_pool_terminate) terminates it with the pool.
    type: str
    choices: [stop, terminate]
    default: stop
  cooldown:
    description:
      - Seconds an offering is not asked again after a capacity error or an interruption of one of its
        instances; also how long Spot stays off after an account limit. C(0) or more.
    type: int
    default: 180
  orphan_grace:
    description:
      - Seconds before an instance with the pool tag that is in neither the pool nor a lease is marked as an
        orphan, and again before a marked orphan is terminated. Leased and just-launched instances are never
        touched. C(0) or more.
    type: int
    default: 600
  rebuild:
    description:
      - Rebuild a lost or damaged state file from the pool's tags. Leased instances are recognised by the tag
        C(ec2spot:leased-at) that the refill job sets.
      - The instances adopted are those of O(pool_id). Without it, a damaged file of this pool adopts the only pool
        id found on instances tagged with O(pool_name) (with several, the module fails and lists them). A lost file
        (no pool in the store) or a file that is not recognisably this pool's (O(force_rebuild)) adopts nothing
        unless O(pool_id) names the pool; nothing says which pool of that name was this store's (it may be another
        controller's). The module then fails, changing nothing, and lists the pool ids tagged with the name, with
        their instance and lease counts.
      - Only a file that is recognisably this pool's (a JSON object with the pool's C(pool_name) and the state
        C(version)) whose fields are damaged is moved aside, to C(<pool_file>.corrupt-<time>), never overwritten.
        Any other file at the path (not JSON, another pool's, a newer version's, perhaps a file of yours that
        O(pool_file) names by mistake) is an error, and nothing is moved or written; see O(force_rebuild).
      - A link, or a file or directory that another user owns or may write to, is never moved.
      - With O(store=dynamodb), the table's pool is built from the tags in the same way, leases kept. That is
        the way to move a pool from its file into a table (the README says how).
      - With O(store=dynamodb), items of the pool that the store does not understand (the error names them) are
        handled as a damaged file is. The pool's items are first copied, as they are, to
        C(<state_dir>/dynamodb-<table>-<pool>.corrupt-<time>.json). Damaged items that said C(idle) are deleted;
        any other damaged instance item becomes a lease (it may be a job's), never handed out until released.
        Leases whose items are intact are kept as they were.
    type: bool
    default: false
  create_table:
    description:
      - With O(store=dynamodb), create the table O(dynamodb_table) when it does not exist (on-demand billing;
        the module waits until it is active). Off, a missing table is an error, and nothing is changed.
      - A table with another key schema is always an error (it is someone else's table), as is a missing
        DynamoDB permission (the message names the table and the permission).
      - Check mode never creates the table. Has no effect with O(store=file).
    type: bool
    default: true
  force_rebuild:
    description:
      - Like O(rebuild), and also moves aside a file that is not recognisably this pool's. Only for a pool file
        you know to be damaged beyond recognition (for example a torn or truncated write).
    type: bool
    default: false
  pool_id:
    description:
      - The pool's id (16 lower-case hex digits, as RV(pool_id) and M(ec2spot.pool.spot_pool_info) show it).
      - Leave it out normally; a new pool gets a random one.
      - With O(rebuild=true), names the pool to rebuild; needed when the store has no pool (a lost file, or a file
        pool moved into a table), and when instances of several pools carry O(pool_name).
      - Must match the id in an existing state file.
    type: str
  wait:
    description: Wait until every instance runs and has an address.
    type: bool
    default: true
  wait_timeout:
    description: How long O(wait) waits, in seconds. C(0) or more.
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
      - Validates the options against EC2 (zones, instance types, launch template, account limits) and reports
        what would be launched.
  diff_mode:
    support: none
  idempotent:
    support: full
"""

EXAMPLES = r"""
- name: A pool of three Spot instances across two zones, with On-Demand fallback
  ec2spot.pool.spot_pool_init:
    pool_name: ci
    size: 3
    image_id: ami-0123456789abcdef0
    instance_types: [t3.micro, t3a.micro]
    availability_zones: [us-east-1a, us-east-1b]
    tags:
      team: ci
  delegate_to: localhost

- name: Connection options for every pool module at once
  hosts: localhost
  module_defaults:
    group/ec2spot.pool.spot:
      region: eu-west-1
  tasks:
    - name: Launch from a launch template, without waiting for addresses
      ec2spot.pool.spot_pool_init:
        launch_template:
          name: ci-runner
          version: $Latest
        size: 5
        wait: false
"""

RETURN = r"""
launched:
  description: IDs of the instances launched by this run (including stopped fallbacks of the pool started again).
  returned: always
  type: list
  elements: str
  sample: [i-0123456789abcdef0]
terminated:
  description: IDs of idle instances terminated because O(size) got smaller.
  returned: always
  type: list
  elements: str
  sample: []
would_launch:
  description: In check mode, how many instances a real run would launch.
  returned: check mode
  type: int
  sample: 3
pool:
  description: The pool after the run.
  returned: always
  type: dict
  sample: {instances: [{id: i-0123456789abcdef0, ip: 203.0.113.10, type: spot}], leases: []}
  contains:
    instances:
      description: Idle instances; those with an C(ip) are ready to hand out.
      returned: always
      type: list
      elements: dict
      sample: [{id: i-0123456789abcdef0, ip: 203.0.113.10, private_ip: 10.0.0.10, type: spot,
                availability_zone: us-east-1a, instance_type: t3.micro, launched_at: "2026-11-22T10:00:00Z"}]
    leases:
      description: Instances handed out and not released yet.
      returned: always
      type: list
      elements: dict
      sample: []
counts:
  description: How many instances are ready, pending, leased, Spot and fallback, and the target.
  returned: always
  type: dict
  sample: {target: 3, ready: 3, pending: 0, leased: 0, spot: 3, fallback: 0}
cooldowns:
  description: Offerings, subnets or markets not asked again until C(until), and the error that put them there.
  returned: success
  type: list
  elements: dict
  sample: [{scope: offering, market: spot, instance_type: t3.micro, location: us-east-1a,
            code: InsufficientInstanceCapacity, until: "2026-11-22T10:03:00Z"}]
pool_id:
  description: The pool's id, tagged as C(ec2spot:pool-id) on its instances and its launch template.
  returned: always
  type: str
  sample: 3f9c0a7b5e21d864
moved_aside:
  description:
    - Where a damaged state file was moved by O(rebuild=true) or O(force_rebuild=true).
    - With O(store=dynamodb), the file the pool's items were copied to before the damaged ones were replaced.
  returned: when a damaged file was moved aside, or damaged items were replaced
  type: str
  sample: /home/ci/.local/state/ec2spot/ci.json.corrupt-20261122T100000Z
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import defaults
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import ec2_client
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import fail
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import aws_pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import BOTOCORE_CONFIG
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import child_environment
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import pool_argument_spec
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_INIT_WAIT_TIMEOUT
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import DEFAULT_MAX_SIZE
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import init_pool
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.operations import init_request
# Not used here: it makes Ansible ship the refill job's code, which this module starts (see refill_payload.py).
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill_payload  # noqa: F401 pylint: disable=unused-import


def main():
    argument_spec = dict(
        pool_argument_spec(),
        size=dict(type="int", default=5),
        max_size=dict(type="int", default=DEFAULT_MAX_SIZE),
        image_id=dict(type="str"),
        launch_template=dict(type="dict", options=dict(id=dict(type="str"), name=dict(type="str"),
                                                       version=dict(type="str"))),
        instance_types=dict(type="list", elements="str", default=["t3.micro"]),
        availability_zones=dict(type="list", elements="str"),
        subnet_ids=dict(type="list", elements="str"),
        security_group_ids=dict(type="list", elements="str"),
        key_name=dict(type="str"),
        iam_instance_profile=dict(type="str"),
        user_data=dict(type="str"),
        tags=dict(type="dict", default={}),
        fallback=dict(type="bool", default=True),
        allocation_strategy=dict(type="str", default=defaults.ALLOCATION_STRATEGY,
                                 choices=list(defaults.ALLOCATION_STRATEGIES)),
        fallback_on=dict(type="list", elements="str"),  # None: launcher.DEFAULT_FALLBACK_ON, see launch_settings
        fallback_action=dict(type="str", choices=list(defaults.FALLBACK_ACTIONS), default=defaults.FALLBACK_ACTION),
        cooldown=dict(type="int", default=defaults.COOLDOWN_SECONDS),
        orphan_grace=dict(type="int", default=defaults.ORPHAN_GRACE_SECONDS),
        rebuild=dict(type="bool", default=False),
        create_table=dict(type="bool", default=True),
        pool_id=dict(type="str"),
        force_rebuild=dict(type="bool", default=False),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=DEFAULT_INIT_WAIT_TIMEOUT),
    )
    module = AnsibleAWSModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_one_of=[("image_id", "launch_template")],
        mutually_exclusive=[("availability_zones", "subnet_ids"), ("image_id", "launch_template")],
    )
    try:
        result = init_pool(aws_pool_store(module), ec2_client(module),
                           init_request(module.params, module.region, module.check_mode),
                           refill_env=child_environment(module.params, module.region),
                           quotas_client=module.client("service-quotas", config=BOTOCORE_CONFIG))
    except PoolError as error:
        fail(module, error)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
