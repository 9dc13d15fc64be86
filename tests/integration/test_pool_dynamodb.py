"""store=dynamodb on one controller, through ansible-playbook and ad-hoc module runs against moto (EC2 and DynamoDB
on one endpoint): the whole cycle (init makes the table, get hands out and its refill job tops the pool up,
release, reconcile, info, terminate deletes every item of the pool), a file pool moved into a table with
rebuild, and bad input (a missing table with create_table=false, a table of another key schema, AccessDenied, no
region, pool_file with store=dynamodb): each a clear error, and nothing changed (table items, instances).
"""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from tests.integration.conftest import AMI, LAUNCH_ACTIONS, debug_msgs, task_result
from tests.integration.healing import wait_refill_done
from tests.support.ansible import run_module
from tests.support.moto import REGION


def dynamodb_client(url):
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=url)


@pytest.fixture
def dynamo_pool(make_pool, ec2, aws_env):
    """A pool in its own DynamoDB table on the plain moto server."""
    return make_pool(ec2, aws_env, table="pool-" + uuid.uuid4().hex[:12], dynamodb=dynamodb_client(aws_env["AWS_URL"]))


@pytest.fixture
def faulty_dynamo_pool(make_pool, fault_env, fault_proxy):
    """A pool in its own table whose every AWS call (EC2 and DynamoDB, modules and refill job) goes through the
    fault proxy; the test's own clients talk to moto directly."""
    upstream = fault_proxy.upstream.url
    harness = make_pool(boto3.client("ec2", region_name=REGION, endpoint_url=upstream), fault_env,
                        table="pool-" + uuid.uuid4().hex[:12], dynamodb=dynamodb_client(upstream))
    harness.proxy = fault_proxy
    return harness


def tables(pool):
    return sorted(pool.dynamodb.list_tables()["TableNames"])


def assert_refused(rc, result, *words):
    assert rc != 0 and result.get("failed"), result
    for word in words:
        assert word in result["msg"], (word, result["msg"])
    return result["msg"]


# -- the whole cycle ----------------------------------------------------------------------------------------------
def test_whole_cycle_on_a_dynamodb_table(dynamo_pool):
    pool = dynamo_pool
    assert tables(pool) == []

    # init: makes the table (on-demand), launches, and keeps the pool in it; no pool file on this controller.
    run = pool.init(size=2)
    assert run.rc == 0, run.stdout[-3000:]
    init = task_result(run, "spot_pool_init")
    assert init["counts"] == {"target": 2, "ready": 2, "pending": 0, "leased": 0, "spot": 2, "fallback": 0}
    assert tables(pool) == [pool.table]
    described = pool.dynamodb.describe_table(TableName=pool.table)["Table"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [key["AttributeName"] for key in described["KeySchema"]] == ["pool", "item"]
    assert not pool.state_file.exists()
    state = pool.state()
    assert sorted(entry["id"] for entry in state["instances"]) == sorted(init["launched"])
    keys = [item["item"]["S"] for item in pool.table_items()]
    assert sorted(keys) == sorted(["pool", "refill-lease"] + ["inst#" + i for i in init["launched"]])

    # get: one lease in the table; the refill job it starts tops the pool up to 2 ready again.
    run = pool.playbook("get_instance.yml")
    assert run.rc == 0, run.stdout[-3000:]
    got = task_result(run, "spot_pool_get")
    assert got["instance_id"] in init["launched"] and got["refill"]["started"] is True
    leased = {item["item"]["S"]: item for item in pool.table_items()}["inst#" + got["instance_id"]]
    assert leased["status"]["S"] == "leased" and leased["lease_id"]["S"] == got["lease_id"]
    state = wait_refill_done(pool, timeout=60)
    try:
        assert [lease["id"] for lease in state["leases"]] == [got["instance_id"]]
        assert len([entry for entry in state["instances"] if entry["ip"]]) == 2, "topped up to the target"
    except AssertionError:
        raise AssertionError(pool.refill_log.read_text()) from None
    replacement = sorted({entry["id"] for entry in state["instances"]} - set(init["launched"]))
    assert len(replacement) == 1
    assert pool.refill_log.exists(), "the job logs on the controller that runs it"

    # release (instance and lease id, as a CI step gets them): terminated, and its item gone from the table.
    run = pool.playbook("release_instance.yml", spot_pool_instance_id=got["instance_id"],
                        spot_pool_lease_id=got["lease_id"])
    assert run.rc == 0, run.stdout[-3000:]
    assert debug_msgs(run) == [f"{got['instance_id']}: terminate"]
    assert pool.instance(got["instance_id"])["State"]["Name"] in ("shutting-down", "terminated")
    assert "inst#" + got["instance_id"] not in [item["item"]["S"] for item in pool.table_items()]

    # reconcile: the pool is whole; one pass, nothing to do.
    run = pool.playbook("reconcile_pool.yml")
    assert run.rc == 0, run.stdout[-3000:]
    reconciled = task_result(run, "spot_pool_reconcile")
    assert reconciled["whole"] is True and reconciled["passes"] == 1 and reconciled["launched"] == []

    # info: reads the table.
    info = pool.info()
    assert info["exists"] is True and info["path"] == f"dynamodb table {pool.table}, pool {pool.pool_name}"
    assert info["counts"] == {"target": 2, "ready": 2, "pending": 0, "leased": 0, "spot": 2, "fallback": 0}
    assert info["refill"]["running"] is False and info["refill"]["last_error"] is None

    # terminate: every instance ended, every item of the pool deleted (the refill lease too); the table stays.
    other = [{"pool": {"S": "another-pool"}, "item": {"S": "pool"}, "body": {"S": "{}"}, "version": {"N": "1"}}]
    pool.dynamodb.put_item(TableName=pool.table, Item=other[0])
    run = pool.playbook("terminate_all.yml")
    assert run.rc == 0, run.stdout[-3000:]
    terminate = task_result(run, "spot_pool_terminate")
    assert terminate["changed"] is True
    assert pool.tagged_instances() == []
    assert pool.table_items() == []
    assert pool.table_items(any_pool=True) == other, "another pool's items are left alone"
    assert pool.refill_pids() == []


def test_a_file_pool_moves_into_a_table_with_its_lease(make_pool, ec2, aws_env):
    file_pool = make_pool(ec2, aws_env, pool_name="moving")
    assert file_pool.init(size=2).rc == 0
    rc, got = file_pool.module("spot_pool_get", refill=False)
    assert rc == 0, got
    # The lease is known to EC2 by its tag once a refill pass ran (the rebuild reads the tags).
    rc, passed = file_pool.module("spot_pool_reconcile")
    assert rc == 0 and passed["leases_tagged"] == [got["instance_id"]], passed
    before = file_pool.state()

    table = "pool-" + uuid.uuid4().hex[:12]
    shared = make_pool(ec2, aws_env, pool_name="moving", table=table, dynamodb=dynamodb_client(aws_env["AWS_URL"]))
    # The table has no pool 'moving': the rebuild takes the file pool's instances only when it is named.
    run = shared.init(size=2, spot_pool_rebuild=True)
    assert run.rc != 0 and "rebuild it with pool_id=<id>" in task_result(run, "spot_pool_init")["msg"]
    assert shared.table_items() == []
    run = shared.init(size=2, spot_pool_rebuild=True, spot_pool_id=before["pool_id"])
    assert run.rc == 0, run.stdout[-3000:]
    moved = shared.state()
    assert moved["pool_id"] == before["pool_id"]
    assert [lease["id"] for lease in moved["leases"]] == [got["instance_id"]]
    assert sorted(entry["id"] for entry in moved["instances"]) == sorted(e["id"] for e in before["instances"])
    assert task_result(run, "spot_pool_init")["launched"] == [], "the same instances, nothing launched"

    # The file is then removed by hand (README), never terminated: the table's pool releases the lease.
    file_pool.state_file.unlink()
    rc, released = shared.module("spot_pool_release", instance_id=got["instance_id"])
    assert rc == 0 and released["instance_id"] == got["instance_id"], released
    assert shared.instance(got["instance_id"])["State"]["Name"] in ("shutting-down", "terminated")
    assert shared.state()["leases"] == []


# -- bad input: a clear error, nothing changed ----------------------------------------------------------------------
def test_a_missing_table_with_create_table_off_is_refused(dynamo_pool):
    pool = dynamo_pool
    run = pool.init(size=1, spot_pool_create_table=False)
    result = task_result(run, "spot_pool_init")
    assert_refused(run.rc, result, pool.table, "does not exist", "create_table")
    assert tables(pool) == [] and pool.tagged_instances(any_pool=True) == []
    # get and info name the table and the fix too, and create nothing.
    assert_refused(*pool.module("spot_pool_get"), pool.table, "does not exist", "spot_pool_init")
    assert_refused(*pool.module("spot_pool_info"), pool.table, "does not exist")
    assert tables(pool) == [] and not pool.state_dir.exists()


def test_a_table_of_another_key_schema_is_refused(dynamo_pool):
    pool = dynamo_pool
    pool.dynamodb.create_table(TableName=pool.table, BillingMode="PAY_PER_REQUEST",
                               KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                               AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    theirs = {"id": {"S": "someone else's"}, "data": {"S": "x"}}
    pool.dynamodb.put_item(TableName=pool.table, Item=theirs)
    run = pool.init(size=1)
    assert_refused(run.rc, task_result(run, "spot_pool_init"), pool.table, "another key schema", "dynamodb_table")
    assert pool.dynamodb.scan(TableName=pool.table)["Items"] == [theirs]
    assert pool.tagged_instances(any_pool=True) == []
    pool.table = None  # nothing of a pool to end in it


def test_a_damaged_pool_is_refused_naming_rebuild_and_init_rebuild_makes_it_again_from_ec2s_tags(dynamo_pool):
    """An instance item whose body is not JSON: every module refuses it by table and item, naming rebuild: true;
    init with rebuild: true then makes the pool of the instances EC2 tags as its own, launching none twice."""
    pool = dynamo_pool
    assert pool.init(size=2).rc == 0
    members = sorted(instance["InstanceId"] for instance in pool.tagged_instances())
    assert len(members) == 2
    key = "inst#" + members[0]
    item = pool.dynamodb.get_item(TableName=pool.table, Key={"pool": {"S": pool.pool_name}, "item": {"S": key}})
    pool.dynamodb.put_item(TableName=pool.table, Item=dict(item["Item"], body={"S": "{not json"}))
    damaged = pool.table_items()

    assert_refused(*pool.module("spot_pool_info"), pool.table, key, "body is not JSON", "rebuild: true")
    assert_refused(*pool.module("spot_pool_get"), pool.table, key, "rebuild: true")
    run = pool.init(size=2)
    assert_refused(run.rc, task_result(run, "spot_pool_init"), pool.table, key, "rebuild: true")
    assert pool.table_items() == damaged, "refused: nothing changed"

    run = pool.init(size=2, spot_pool_rebuild=True)
    assert run.rc == 0, run.stdout[-3000:]
    rebuilt = task_result(run, "spot_pool_init")
    assert rebuilt["launched"] == [] and rebuilt["counts"]["ready"] == 2, rebuilt
    assert sorted(instance["InstanceId"] for instance in pool.tagged_instances()) == members, "none launched twice"
    assert sorted(entry["id"] for entry in pool.info()["pool"]) == members
    copy = json.loads(open(rebuilt["moved_aside"], encoding="utf-8").read())
    assert {"S": "{not json"} in [entry["body"] for entry in copy["items"]], "the damaged item is kept in the copy"


def test_access_denied_names_the_table_and_the_permission(faulty_dynamo_pool):
    pool, proxy = faulty_dynamo_pool, faulty_dynamo_pool.proxy
    assert pool.init(size=1).rc == 0
    before = pool.table_items()

    proxy.fail("DescribeTable", "AccessDeniedException")
    run = pool.init(size=2)
    assert_refused(run.rc, task_result(run, "spot_pool_init"), pool.table, "dynamodb:DescribeTable")
    proxy.clear_rules()
    proxy.fail("Query", "AccessDeniedException")
    assert_refused(*pool.module("spot_pool_get"), pool.table, "dynamodb:Query")
    proxy.clear_rules()
    assert pool.table_items() == before
    assert proxy.count(LAUNCH_ACTIONS) == 1, "only the first init launched"
    assert len(pool.tagged_instances()) == 1


@pytest.mark.parametrize("module", ["spot_pool_get", "spot_pool_init", "spot_pool_info"])
def test_store_dynamodb_without_a_region_is_refused(dynamo_pool, aws_env, monkeypatch, tmp_path, module):
    pool = dynamo_pool
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    env = {key: value for key, value in pool.env.items() if "REGION" not in key}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "no-config"), HOME=str(tmp_path))  # no profile's region either
    args = {"state_dir": str(pool.state_dir), "pool_name": pool.pool_name, **pool.store_args}
    if module == "spot_pool_init":
        args["image_id"] = AMI
    assert_refused(*run_module(module, args, env=env), "region", "AWS_REGION")
    assert tables(pool) == [] and pool.tagged_instances(any_pool=True) == []
    assert not pool.state_dir.exists()


def test_pool_file_with_store_dynamodb_is_refused(dynamo_pool, tmp_path):
    pool = dynamo_pool
    pool_file = tmp_path / "mine.json"
    for module, args in (("spot_pool_init", {"image_id": AMI}), ("spot_pool_get", {}), ("spot_pool_terminate", {})):
        assert_refused(*pool.module(module, pool_file=str(pool_file), **args), "pool_file", "store=dynamodb")
    assert tables(pool) == [] and pool.tagged_instances(any_pool=True) == []
    assert not pool_file.exists() and not pool.state_dir.exists()


def test_check_mode_init_creates_no_table(dynamo_pool):
    pool = dynamo_pool
    run = pool.init(size=2, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    result = task_result(run, "spot_pool_init")
    assert result["changed"] is True and result["would_launch"] == 2
    assert tables(pool) == [] and pool.tagged_instances(any_pool=True) == []


def test_check_mode_and_info_change_nothing_in_the_table(dynamo_pool):
    pool = dynamo_pool
    assert pool.init(size=1).rc == 0
    before = pool.table_items()
    for playbook in ("reconcile_pool.yml", "release_instance.yml", "terminate_all.yml"):
        run = pool.playbook(playbook, check=True, spot_pool_instance_id="latest")
        assert run.rc == 0, (playbook, run.stdout[-3000:])
    rc, got = pool.module("spot_pool_get", check=True)
    assert rc == 0 and got["changed"] is True, got
    assert pool.info()["exists"] is True
    assert pool.table_items() == before and len(before) == 3  # pool, inst#, refill-lease
    assert pool.refill_pids() == [], "check mode starts no job"
    # Another pool name in the same table: it does not exist, and reading it creates nothing.
    rc, other = pool.module("spot_pool_info", pool_name="not-there")
    assert rc == 0 and other["exists"] is False and other["counts"]["target"] == 0, other
    assert pool.table_items(any_pool=True) == before


def test_an_empty_dynamodb_table_is_refused_not_the_default_table(make_pool, ec2, aws_env):
    """`-e spot_pool_dynamodb_table=` (an unset CI variable) ended the pool of that name in the default table."""
    pool = make_pool(ec2, aws_env, pool_name="empty-" + uuid.uuid4().hex[:8], table="ec2spot-pool",
                     dynamodb=dynamodb_client(aws_env["AWS_URL"]))
    assert pool.init(size=1).rc == 0
    before, instances = pool.table_items(), pool.tagged_instances()
    for check in (True, False):
        run = pool.playbook("terminate_all.yml", check=check, spot_pool_dynamodb_table="")
        assert_refused(run.rc, task_result(run, "spot_pool_terminate"), "dynamodb_table is empty")
    assert_refused(*pool.module("spot_pool_get", dynamodb_table=""), "dynamodb_table is empty")
    assert pool.table_items() == before and pool.tagged_instances() == instances


def test_an_init_whose_write_fails_removes_the_template_it_made(faulty_dynamo_pool):
    """The template a new pool's init makes is removed again when the pool is not written: left behind, it made
    every later init of the name fail as "already used by another pool (0 instances)"."""
    pool, proxy = faulty_dynamo_pool, faulty_dynamo_pool.proxy
    proxy.fail("TransactWriteItems", "AccessDeniedException")
    run = pool.init(size=1)
    assert_refused(run.rc, task_result(run, "spot_pool_init"), pool.table)
    proxy.clear_rules()
    assert pool.ec2.describe_launch_templates()["LaunchTemplates"] == []
    # No pool written (the refill lease that init took and released to write it may stay, expired: it is no pool).
    assert [item["item"]["S"] for item in pool.table_items()] in ([], ["refill-lease"]) and pool.state() is None
    assert pool.tagged_instances(any_pool=True) == []
    run = pool.init(size=1)
    assert run.rc == 0, run.stdout[-3000:]
    assert len(task_result(run, "spot_pool_init")["launched"]) == 1
