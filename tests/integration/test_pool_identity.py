"""Two controllers, one pool name, one account: each pool has its own id, and neither one's refill
sweep, terminate nor template handling touches the other's instances; creating a pool whose name another live pool
uses fails before anything is written or launched.

Each controller is a PoolHarness with its own state directory, both on one moto server.
"""

from __future__ import annotations

import time
import uuid

import boto3

from tests.integration.conftest import AMI, tags_of, task_result, wait_until
from tests.support.moto import REGION

ORPHAN_TAG = "ec2spot:orphan-since"
NAME = "ci2"


def _templates(ec2) -> list[str]:
    return sorted(t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"])


def test_creating_a_pool_whose_name_another_live_pool_uses_fails_and_changes_nothing(make_pool, ec2, aws_env):
    a = make_pool(ec2, aws_env, NAME)
    b = make_pool(ec2, aws_env, NAME)
    assert a.init(size=2).rc == 0
    instances, templates = sorted(i["InstanceId"] for i in a.tagged_instances(any_pool=True)), _templates(ec2)

    for check in (True, False):
        run = b.init(size=2, check=check)
        assert run.rc != 0, run.stdout[-3000:]
        msg = task_result(run, "spot_pool_init")["msg"]
        for part in (f"pool name '{NAME}' is already used", f"pool id {a.pool_id} (2 instances",
                     "one store shared by the controllers", "same state file"):
            assert part in msg, (part, msg)
    assert not b.state_dir.exists(), "nothing written for the refused pool"
    assert sorted(i["InstanceId"] for i in a.tagged_instances(any_pool=True)) == instances, "nothing launched"
    assert _templates(ec2) == templates


def test_two_pools_of_one_name_never_end_each_others_instances_or_template(make_pool, ec2, aws_env):
    grace = 2
    ec2.create_launch_template(LaunchTemplateName="team-b", LaunchTemplateData={"ImageId": AMI})
    a = make_pool(ec2, aws_env, NAME)
    b = make_pool(ec2, aws_env, NAME)
    # The check at creation cannot see a pool that launches later: B is created empty (from its own template), then A
    # is created, then B grows. From here on both pools of the name are live.
    b_init = {"spot_pool_launch_template": {"name": "team-b"}, "spot_pool_orphan_grace": grace}
    assert b.playbook("init_pool.yml", spot_pool_size=0, **b_init).rc == 0
    assert a.init(size=2).rc == 0
    rc, leased = a.module("spot_pool_get", refill=False)
    assert rc == 0, leased
    run = b.playbook("init_pool.yml", spot_pool_size=1, **b_init)
    assert run.rc == 0, run.stdout[-3000:]
    a_ids = sorted(e["id"] for e in a.state()["instances"] + a.state()["leases"])
    b_ids = sorted(e["id"] for e in b.state()["instances"])
    assert len(a_ids) == 2 and leased["instance_id"] in a_ids and len(b_ids) == 1
    a_template = a.state()["launch"]["template"]["LaunchTemplateId"]
    a_id, b_id = a.pool_id, b.pool_id

    # B's refill sweep, with a grace far shorter than A's instances' age: a pass marks orphans, a later one ends them.
    started = time.time()
    for passes in (1, 2):
        deadline = started + grace * passes
        wait_until(lambda: time.time() >= deadline, timeout=10, what="the orphan grace passed")  # noqa: B023
        run = b.playbook("init_pool.yml", spot_pool_size=1, **b_init)
        assert run.rc == 0, run.stdout[-3000:]
    for instance_id in a_ids:
        inst = a.instance(instance_id)
        assert inst["State"]["Name"] == "running" and ORPHAN_TAG not in tags_of(inst), (instance_id, tags_of(inst))

    # B's terminate_all.yml with defaults ends B and nothing of A.
    run = b.playbook("terminate_all.yml")
    assert run.rc == 0, run.stdout[-3000:]
    ended = task_result(run, "spot_pool_terminate")
    assert sorted(ended["terminated"]) == b_ids and ended["orphans"] == []
    assert [a.instance(i)["State"]["Name"] for i in a_ids] == ["running", "running"]
    assert ec2.describe_launch_templates(LaunchTemplateIds=[a_template])["LaunchTemplates"], "A's template is kept"

    # A can still launch from its template (were it gone, A's refill would fail with InvalidLaunchTemplateId.NotFound).
    run = a.init(size=2)
    assert run.rc == 0, run.stdout[-3000:]
    assert len(task_result(run, "spot_pool_init")["launched"]) == 1
    assert a.state()["leases"][0]["id"] == leased["instance_id"]
    assert a_id and b_id and a_id != b_id and ended["pool_id"] == b_id


def test_a_controller_without_the_pool_ends_nothing_of_another_controllers_pool_of_that_name(
        make_pool, ec2, aws_env):
    """A cleanup job on the wrong runner, or store=dynamodb with a table that is not the pool's: the store has no pool
    of the name, so nothing says that the pool EC2 shows by that name is this controller's. It ends nothing unless
    the pool's id is named (the recovery of a lost pool file), and says which ids carry the name."""
    a = make_pool(ec2, aws_env, NAME)
    assert a.init(size=2).rc == 0
    rc, leased = a.module("spot_pool_get", refill=False)
    assert rc == 0, leased
    rc, passed = a.module("spot_pool_reconcile")  # a refill pass tags the lease (ec2spot:leased-at)
    assert rc == 0 and passed["leases_tagged"] == [leased["instance_id"]], passed
    ids = sorted(i["InstanceId"] for i in a.tagged_instances(any_pool=True))
    templates, state = _templates(ec2), a.state_bytes()
    table = "pool-" + uuid.uuid4().hex[:12]
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=aws_env["AWS_URL"])
    dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "pool", "KeyType": "HASH"},
                                     {"AttributeName": "item", "KeyType": "RANGE"}],
                          AttributeDefinitions=[{"AttributeName": "pool", "AttributeType": "S"},
                                                {"AttributeName": "item", "AttributeType": "S"}])
    wrong_runner = make_pool(ec2, aws_env, NAME)
    other_table = make_pool(ec2, aws_env, NAME, table=table, dynamodb=dynamodb)

    for b in (wrong_runner, other_table):
        for check in (True, False):
            run = b.playbook("terminate_all.yml", check=check)
            assert run.rc != 0, run.stdout[-3000:]
            result = task_result(run, "spot_pool_terminate")
            for part in (f"there is no pool '{NAME}'", f"pool id {a.pool_id} ({len(ids)} instances, 1 leased)",
                         "nothing was changed", "pool_id=<id>"):
                assert part in result["msg"], (part, result["msg"])
            assert result["pool_ids"] == [a.pool_id], result
        assert not b.state_dir.exists() and b.table_items() == []
    assert sorted(i["InstanceId"] for i in a.tagged_instances(any_pool=True, states=("running",))) == ids
    assert _templates(ec2) == templates and a.state_bytes() == state

    # The recovery of a lost pool file: the pool named by its id ends, leased instance and template included.
    run = wrong_runner.playbook("terminate_all.yml", spot_pool_id=a.pool_id)
    assert run.rc == 0, run.stdout[-3000:]
    ended = task_result(run, "spot_pool_terminate")
    assert sorted(ended["terminated"]) == ids and ended["pool_id"] == a.pool_id
    assert a.tagged_instances(any_pool=True, states=("pending", "running")) == []
    assert _templates(ec2) == [t for t in templates if t != f"ec2spot-{NAME}-{a.pool_id}"] != templates
