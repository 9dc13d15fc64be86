"""The module operations as plain functions: hand-out, release, terminate, info, init (refill off)."""

from __future__ import annotations

import errno
import os

import boto3
import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import filestore as ops_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import timefmt
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import NoReadyInstance
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import StateFileError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.ec2query import InstanceStates
from tests.support.moto import POOL_LAUNCH
from tests.support.moto import REGION

LAUNCH = POOL_LAUNCH


@pytest.fixture
def store(tmp_path):
    return FileStore(str(tmp_path / "state" / "p.json"), "p")


@pytest.fixture
def pool(store, client):
    result = ops.init_pool(store, client, ops.InitRequest(3, dict(LAUNCH), wait=True, wait_timeout=60))
    assert result["counts"]["ready"] == 3
    return store


def no_client(ids=None):
    raise AssertionError("this hand-out must not call EC2")


@pytest.fixture
def ec2_states(aws_env):
    """What spot_pool_get asks EC2 with: the signed DescribeInstances, here against the moto server."""
    return InstanceStates({"region": REGION, "endpoint_url": aws_env["AWS_URL"], "access_key": "testing",
                           "secret_key": "testing"})


def states(client, ids):
    return {i["InstanceId"]: i["State"]["Name"] for r in client.describe_instances(InstanceIds=ids)["Reservations"]
            for i in r["Instances"]}


def test_init_is_idempotent_and_check_mode_changes_nothing(store, client):
    planned = ops.init_pool(store, client, ops.InitRequest(2, dict(LAUNCH), check_mode=True))
    assert planned["changed"] and planned["would_launch"] == 2 and not store.exists()
    first = ops.init_pool(store, client, ops.InitRequest(2, dict(LAUNCH)))
    assert first["changed"] and len(first["launched"]) == 2
    again = ops.init_pool(store, client, ops.InitRequest(2, dict(LAUNCH)))
    assert not again["changed"] and again["launched"] == []
    smaller = ops.init_pool(store, client, ops.InitRequest(1, dict(LAUNCH)))
    assert smaller["changed"] and len(smaller["terminated"]) == 1
    assert states(client, smaller["terminated"]) == {smaller["terminated"][0]: "terminated"}
    with pytest.raises(InvalidRequest, match="size must be 0 or more"):
        ops.init_pool(store, client, ops.InitRequest(-1, dict(LAUNCH)))


def test_get_hands_out_without_calling_ec2_when_recently_verified_and_allowed(pool):
    before = pool.read()
    got = ops.get_instance(pool, no_client, refill=False, verify_max_age=60)
    assert got["instance_id"] == before["instances"][0]["id"] and got["ip"] == before["instances"][0]["ip"]
    assert got["verified"] is False and got["counts"]["leased"] == 1 and got["counts"]["ready"] == 2
    assert pool.read()["leases"][0]["id"] == got["instance_id"]


def test_get_in_check_mode_writes_nothing(pool, ec2_states):
    before = open(pool.path, "rb").read()
    got = ops.get_instance(pool, ec2_states, refill=False, check_mode=True)
    assert got["instance_id"] and open(pool.path, "rb").read() == before


def test_a_verifying_get_never_hands_out_a_dead_instance(pool, client, ec2_states):
    first = pool.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[first])
    got = ops.get_instance(pool, ec2_states, verify_max_age=0, refill=False)
    assert got["verified"] and got["dropped"] == [first] and got["instance_id"] != first
    assert first not in [e["id"] for e in pool.read()["instances"]]


def test_no_ready_instance_fails_with_counts_and_changes_nothing(pool):
    for _lease in range(3):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    before = open(pool.path, "rb").read()
    with pytest.raises(NoReadyInstance, match=r"pool 'p' has 0 ready of 3; 0 pending; 3 leased"):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    assert open(pool.path, "rb").read() == before


def test_get_from_a_pool_that_does_not_exist(store):
    with pytest.raises(NoReadyInstance, match="does not exist"):
        ops.get_instance(store, no_client, refill=False)


def test_lease_ttl_and_private_address(pool):
    got = ops.get_instance(pool, no_client, refill=False, verify=False, lease_ttl=600, address="private")
    assert got["ip"] == got["private_ip"] and got["expires_at"] > got["leased_at"]


def test_release_ends_the_lease_by_market(pool, client):
    with pool.transaction() as tx:  # make the second instance a fallback, as the launcher would have tagged it
        tx.state["instances"][1]["type"] = "fallback"
    spot = ops.get_instance(pool, no_client, refill=False, verify=False)
    fallback = ops.get_instance(pool, no_client, refill=False, verify=False)
    assert (spot["type"], fallback["type"]) == ("spot", "fallback")
    released = ops.release_instance(pool, client, "latest")  # the most recent lease, asked for explicitly
    assert (released["instance_id"], released["action"]) == (fallback["instance_id"], "stop")
    assert ops.release_instance(pool, client, spot["instance_id"])["action"] == "terminate"
    assert states(client, [spot["instance_id"], fallback["instance_id"]]) == {
        spot["instance_id"]: "terminated", fallback["instance_id"]: "stopped"}
    assert pool.read()["leases"] == []
    kept = client.describe_instances(InstanceIds=[fallback["instance_id"]])["Reservations"][0]["Instances"][0]
    assert "ec2spot:released-at" in {tag["Key"] for tag in kept["Tags"]}  # the orphan sweep leaves it alone
    nothing = ops.release_instance(pool, client, "latest")
    assert not nothing["changed"] and nothing["action"] == "none"
    with pytest.raises(InvalidRequest, match="i-0123 is not leased from pool 'p'"):
        ops.release_instance(pool, client, "i-0123")


def test_terminate_ends_everything_including_orphans_and_is_idempotent(pool, client):
    leased = ops.get_instance(pool, no_client, refill=False, verify=False)["instance_id"]
    orphan = client.run_instances(ImageId=LAUNCH["image_id"], MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "ec2spot:pool", "Value": "p"},
                                              {"Key": "ec2spot:pool-id", "Value": pool.read()["pool_id"]},
                                              {"Key": "ec2spot:type", "Value": "spot"}]}])["Instances"][0]["InstanceId"]
    planned = ops.terminate_pool(pool, client, check_mode=True)
    assert orphan in planned["orphans"] and pool.exists()
    done = ops.terminate_pool(pool, client)
    assert leased in done["terminated"] and orphan in done["terminated"] and len(done["terminated"]) == 4
    assert not pool.exists()
    assert set(states(client, done["terminated"]).values()) == {"terminated"}
    again = ops.terminate_pool(pool, client)
    assert not again["changed"] and again["terminated"] == []


def test_terminate_with_a_corrupt_file_finds_instances_by_tag_and_keeps_the_file(pool, client):
    ids = [e["id"] for e in pool.read()["instances"]]
    pool_id = pool.read()["pool_id"]
    with open(pool.path, "w") as handle:
        handle.write("{garbage")
    # Not recognisably this pool's file: it says nothing about which pool of the name is its own.
    with pytest.raises(InvalidRequest, match="is not this pool's readable state.*pool id %s .*end it with pool_id="
                                             % pool_id):
        ops.terminate_pool(pool, client)
    assert sorted(states(client, ids).values()) == ["running"] * 3
    done = ops.terminate_pool(pool, client, pool_id=pool_id)
    assert sorted(done["terminated"]) == sorted(ids)
    assert "not valid JSON" in done["warnings"][0]
    assert open(pool.path).read() == "{garbage"


def test_terminate_with_a_damaged_file_of_the_pool_ends_the_only_pool_of_its_name(pool, client):
    ids = [e["id"] for e in pool.read()["instances"]]
    damaged = '{"version": 1, "pool_name": "p", "instances": "lost", "leases": null}'
    with open(pool.path, "w") as handle:
        handle.write(damaged)
    done = ops.terminate_pool(pool, client)
    assert sorted(done["terminated"]) == sorted(ids)
    assert any("damaged state that cannot say its pool id" in warning for warning in done["warnings"])
    assert open(pool.path).read() == damaged


def test_info_reads_and_verifies_without_changing(pool, client):
    victim = pool.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[victim])
    before = open(pool.path, "rb").read()
    info = ops.pool_info(pool, lambda: client, verify=True)
    assert info["exists"] and info["counts"]["ready"] == 3 and info["dead"] == [victim]
    assert info["refill"]["running"] is False
    assert open(pool.path, "rb").read() == before
    assert ops.pool_info(FileStore(pool.path + ".none", "p"))["exists"] is False


def test_rebuild_from_tags_moves_a_corrupt_file_aside_and_knows_leases(pool, client):
    leased = ops.get_instance(pool, no_client, refill=False, verify=False)["instance_id"]
    client.create_tags(Resources=[leased], Tags=[{"Key": "ec2spot:leased-at", "Value": "2026-11-22T10:00:00Z"}])
    idle = sorted(e["id"] for e in pool.read()["instances"])
    damaged = '{"version": 1, "pool_name": "p", "instances": "lost", "leases": null}'
    with open(pool.path, "w") as handle:
        handle.write(damaged)
    with pytest.raises(StateFileError):
        ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH)))
    rebuilt = ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), rebuild=True))
    assert open(rebuilt["moved_aside"]).read() == damaged
    state = pool.read()
    assert [lease["id"] for lease in state["leases"]] == [leased]
    assert set(idle) <= {e["id"] for e in state["instances"]}
    assert len(state["instances"]) == 3  # the hand-out's slot was refilled


@pytest.mark.parametrize("content", [
    "{torn write",  # not JSON: nothing says it is a pool file
    "# my dotfile\nexport PATH=$HOME/bin:$PATH\n",
    '{"version": 1, "pool_name": "other", "instances": [], "leases": []}',  # another pool's
    '{"version": 2, "pool_name": "p"}',  # a newer collection's
])
def test_rebuild_moves_aside_only_this_pools_file_unless_forced(pool, client, content):
    directory = os.path.dirname(pool.path)
    pool_id = pool.read()["pool_id"]
    with open(pool.path, "w") as handle:
        handle.write(content)
    before = sorted(os.listdir(directory))
    # A file that is not recognisably this pool's says nothing about which pool of the name is its own.
    with pytest.raises(InvalidRequest, match="pool id %s \\(3 instances, 0 leased\\).*pool_id=" % pool_id):
        ops.terminate_pool(pool, client, check_mode=True)
    instances = sorted(ops.terminate_pool(pool, client, check_mode=True, pool_id=pool_id)["terminated"])
    assert len(instances) == 3
    with pytest.raises(StateFileError) as err:
        ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), rebuild=True))
    assert pool.path in err.value.message and "force_rebuild" in err.value.message, err.value.message
    assert open(pool.path).read() == content and sorted(os.listdir(directory)) == before  # nothing moved or written
    assert sorted(ops.terminate_pool(pool, client, check_mode=True, pool_id=pool_id)["terminated"]) == instances
    with pytest.raises(InvalidRequest, match="pool id %s .*rebuild it with pool_id=" % pool_id):
        ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), force_rebuild=True))
    assert open(pool.path).read() == content and sorted(os.listdir(directory)) == before

    rebuilt = ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), force_rebuild=True, pool_id=pool_id))
    assert open(rebuilt["moved_aside"]).read() == content
    assert pool.read()["pool_name"] == "p" and len(pool.read()["instances"]) == 3


def test_a_rebuild_never_moves_a_link_or_another_users_file(pool, client, tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    os.unlink(pool.path)
    os.symlink(target, pool.path)
    for force in (False, True):
        with pytest.raises(StateFileError, match="symbolic link"):
            ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), rebuild=True, force_rebuild=force))
        assert os.path.islink(pool.path) and target.read_text() == "keep me"


def test_terminate_deletes_the_pool_template(pool, client):
    template = pool.read()["launch"]["template"]
    assert template["owned"]
    ops.terminate_pool(pool, client)
    assert client.describe_launch_templates(Filters=[{"Name": "launch-template-name",
                                                      "Values": ["ec2spot-p"]}])["LaunchTemplates"] == []


def test_get_reports_a_failed_refill(pool):
    with pool.transaction() as tx:
        tx.state["refill"]["last_error"] = "CreateFleet failed: not authorized (UnauthorizedOperation)"
    got = ops.get_instance(pool, no_client, refill=False, verify=False)
    assert "UnauthorizedOperation" in got["warnings"][0]


@pytest.mark.parametrize("instance_id", [None, ""], ids=["omitted", "empty"])
def test_release_without_an_id_ends_nobody_s_lease(pool, client, instance_id):
    # The CI step whose get failed runs its always-run release with an empty id: another job's lease survives.
    other = ops.get_instance(pool, no_client, verify=False, refill=False)
    before = open(pool.path, "rb").read()
    nothing = ops.release_instance(pool, client, instance_id)
    assert nothing["changed"] is False and nothing["action"] == "none" and nothing["instance_id"] is None
    assert "no instance_id and no lease_id" in nothing["msg"] and "instance_id=latest" in nothing["msg"]
    assert open(pool.path, "rb").read() == before
    assert states(client, [other["instance_id"]]) == {other["instance_id"]: "running"}


def test_the_lease_to_release_is_a_lease_or_nothing_with_its_reason():
    """One answer type: the lease (a dict), or NothingToRelease saying why; contradictions are InvalidRequest."""
    first = {"id": "i-1", "lease_id": "l-1", "leased_at": "2026-11-22T10:00:00Z"}
    second = {"id": "i-2", "lease_id": "l-2", "leased_at": "2026-11-22T11:00:00Z"}
    state = {"instances": [], "leases": [second, first]}
    choose = ops.lease_to_release
    assert choose("p", state, "latest", None) is second
    assert choose("p", state, None, "l-1") is first and choose("p", state, "i-1", "l-1") is first
    assert choose("p", state, "i-2", None) is second
    for instance_id, lease_id, pool, why in (("latest", None, None, "the pool has no lease"),
                                             ("", None, state, "no instance_id and no lease_id given"),
                                             ("i-1", "l-9", state, "lease l-9 is not held any more (instance i-1")):
        with pytest.raises(ops.NothingToRelease) as nothing:
            choose("p", pool, instance_id, lease_id)
        assert str(nothing.value).startswith(why)
    for instance_id, lease_id, why in (("latest", "l-1", "exclude each other"), ("i-2", "l-1", "is of instance i-1"),
                                       ("i-9", None, "not leased from pool 'p'; its leases are: i-2, i-1")):
        with pytest.raises(InvalidRequest, match=why):
            choose("p", state, instance_id, lease_id)


def test_get_returns_a_lease_id_and_release_ends_only_that_lease(pool, client):
    mine = ops.get_instance(pool, no_client, verify=False, refill=False)
    other = ops.get_instance(pool, no_client, verify=False, refill=False)
    assert len(mine["lease_id"]) == 32 and mine["lease_id"] != other["lease_id"]
    assert {lease["lease_id"] for lease in pool.read()["leases"]} == {mine["lease_id"], other["lease_id"]}
    with pytest.raises(InvalidRequest, match="lease %s is of instance %s, not %s" % (
            mine["lease_id"], mine["instance_id"], other["instance_id"])):
        ops.release_instance(pool, client, other["instance_id"], lease_id=mine["lease_id"])
    with pytest.raises(InvalidRequest, match="instance_id=latest and lease_id exclude each other"):
        ops.release_instance(pool, client, "latest", lease_id=mine["lease_id"])
    done = ops.release_instance(pool, client, mine["instance_id"], lease_id=mine["lease_id"])
    assert done["changed"] and done["instance_id"] == mine["instance_id"]
    # The step is retried: its lease is gone, so nothing happens (no error, and the other lease stays).
    before = open(pool.path, "rb").read()
    again = ops.release_instance(pool, client, mine["instance_id"], lease_id=mine["lease_id"])
    assert again["changed"] is False and "is not held any more" in again["msg"]
    assert open(pool.path, "rb").read() == before
    # The lease id alone is enough.
    assert ops.release_instance(pool, client, lease_id=other["lease_id"])["instance_id"] == other["instance_id"]
    assert pool.read()["leases"] == []


def test_a_retried_release_does_not_end_the_instance_leased_again_to_someone_else(pool, client):
    with pool.transaction() as tx:
        tx.state["instances"][0]["type"] = "fallback"
    mine = ops.get_instance(pool, no_client, verify=False, refill=False)
    assert ops.release_instance(pool, client, mine["instance_id"], lease_id=mine["lease_id"])["action"] == "stop"
    # The stopped fallback is started again and handed to another job (as a pool that reuses fallbacks does).
    client.start_instances(InstanceIds=[mine["instance_id"]])
    with pool.transaction() as tx:
        tx.state["leases"].append(dict(mine, id=mine["instance_id"], lease_id="another-job", type="fallback"))
    before = open(pool.path, "rb").read()
    retried = ops.release_instance(pool, client, mine["instance_id"], lease_id=mine["lease_id"])
    assert retried["changed"] is False and retried["action"] == "none"
    assert open(pool.path, "rb").read() == before
    assert states(client, [mine["instance_id"]]) == {mine["instance_id"]: "running"}


@pytest.mark.parametrize("option, value", [("wait_timeout", -1), ("verify_max_age", -5)])
def test_get_refuses_negative_bounds_and_changes_nothing(pool, option, value):
    before = open(pool.path, "rb").read()
    with pytest.raises(InvalidRequest, match="%s must be 0 or more, got %d" % (option, value)):
        ops.get_instance(pool, no_client, verify=False, refill=False, **{option: value})
    assert open(pool.path, "rb").read() == before


@pytest.mark.parametrize("size, launch, options, expected", [
    (-1, {}, {}, "size must be 0 or more, got -1"),
    (2, {}, {"wait_timeout": -1}, "wait_timeout must be 0 or more, got -1"),
    (2, {"cooldown_seconds": -10}, {}, "cooldown must be 0 or more, got -10"),
    (2, {"orphan_grace_seconds": -1}, {}, "orphan_grace must be 0 or more, got -1"),
    (10000, {}, {}, "size 10000 is above max_size 100 (a guard against typos); set max_size to 10000 or more"),
    (150, {}, {"max_size": 120}, "size 150 is above max_size 120"),
    (1, {}, {"max_size": 0}, "max_size must be 1 or more, got 0"),
    (1, {"tags": {"team": "ci", "ec2spot:released-at": "x"}}, {}, "tags: ec2spot:released-at is in the collection's"),
    (1, {"tags": {"EC2SPOT:Pool": "x", "Ec2Spot:type": "spot"}}, {}, "tags: EC2SPOT:Pool, Ec2Spot:type are in"),
    (1, {"instance_types": []}, {}, "instance_types must name at least one instance type"),
], ids=["negative-size", "negative-wait-timeout", "negative-cooldown", "negative-orphan-grace", "size-typo",
        "above-raised-max-size", "zero-max-size", "reserved-tag", "reserved-tags-any-case", "no-instance-type"])
def test_init_request_checks_need_no_aws(size, launch, options, expected):
    with pytest.raises(InvalidRequest) as raised:
        ops.check_init_request(size, dict(LAUNCH, **launch), **options)
    assert expected in raised.value.message


def test_init_request_checks_accept_what_is_sane():
    ops.check_init_request(100, dict(LAUNCH, tags={"ec2spot": "x", "team:ec2spot:": "y"}, cooldown_seconds=0))
    ops.check_init_request(500, dict(LAUNCH), wait_timeout=0, max_size=500)


def test_init_request_is_the_modules_options_as_one_value():
    params = {"size": 3, "max_size": 10, "image_id": "ami-1", "instance_types": ["t3.micro"], "wait": False,
              "wait_timeout": 30, "rebuild": True, "force_rebuild": False, "pool_id": "a" * 16, "create_table": False,
              "tags": {"team": "ci"}, "cooldown": 60}
    request = ops.init_request(params, REGION, check_mode=True)
    assert request == ops.InitRequest(size=3, launch=ops.launch_settings(params, REGION), wait=False, wait_timeout=30,
                                      max_size=10, rebuild=True, force_rebuild=False, pool_id="a" * 16,
                                      create_table=False, check_mode=True)
    assert request.launch["tags"] == {"team": "ci"} and request.launch["region"] == REGION
    # What a caller leaves out is the module's default.
    assert ops.InitRequest(2, {}) == (2, {}, True, ops.DEFAULT_INIT_WAIT_TIMEOUT, ops.DEFAULT_MAX_SIZE, False, False,
                                      None, True, False)


def test_init_refuses_what_the_account_cannot_hold_before_writing_or_launching(store, proxy_client, fault_proxy):
    # Spot and On-Demand standard quotas of 20 vCPUs each hold 20 t3.micro (2 vCPUs), whatever max_size allows.
    fault_proxy.set_service_quota("L-34B43A08", 20)
    fault_proxy.set_service_quota("L-1216C47A", 20)
    quotas = boto3.client("service-quotas", region_name=REGION, endpoint_url=fault_proxy.url,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    with pytest.raises(InvalidRequest, match=r"pool 'p': 25 more instance\(s\) do not fit the account's vCPU "
                                             r"quotas: .*\(L-1216C47A\) 20 vCPUs, 0 in use: room for 10 t3.micro"):
        ops.init_pool(store, proxy_client, ops.InitRequest(25, dict(LAUNCH), max_size=200), quotas_client=quotas)
    assert not store.exists()
    assert proxy_client.describe_instances()["Reservations"] == []
    assert proxy_client.describe_launch_templates()["LaunchTemplates"] == []


@pytest.mark.parametrize("template", [{"LaunchTemplateName": "no-such-template"},
                                      {"LaunchTemplateId": "lt-0123456789abcdef0"}], ids=["name", "id"])
def test_init_refuses_a_launch_template_that_does_not_exist_before_writing(store, client, template):
    launch = dict(LAUNCH, image_id=None, launch_template=template)
    with pytest.raises(InvalidRequest, match="launch_template %s does not exist" % list(template.values())[0]):
        ops.init_pool(store, client, ops.InitRequest(1, launch))
    assert not store.exists()
    assert client.describe_instances()["Reservations"] == []


# -- a pool's identity is its id, not its name -------------------------------------------------------------------
def tags(client, instance_id):
    found = client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {tag["Key"]: tag["Value"] for tag in found.get("Tags", [])}


def named_stray(client, pool_id=None):
    """An instance tagged with the pool's name by someone else: another controller's pool, or an old one."""
    extra = [{"Key": "ec2spot:pool-id", "Value": pool_id}] if pool_id else []
    return client.run_instances(ImageId=LAUNCH["image_id"], MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "ec2spot:pool", "Value": "p"},
                                              {"Key": "ec2spot:type", "Value": "spot"}] + extra}],
    )["Instances"][0]["InstanceId"]


def test_a_second_pool_of_a_live_name_is_refused_before_anything_is_written(pool, client, tmp_path):
    pool_id = pool.read()["pool_id"]
    other = FileStore(str(tmp_path / "elsewhere" / "p.json"), "p")
    before = states(client, [e["id"] for e in pool.read()["instances"]])
    templates = client.describe_launch_templates()["LaunchTemplates"]
    for check_mode in (True, False):
        with pytest.raises(InvalidRequest) as caught:
            ops.init_pool(other, client, ops.InitRequest(2, dict(LAUNCH), check_mode=check_mode))
        message = caught.value.message
        assert "pool name 'p' is already used" in message and "pool id %s (3 instances" % pool_id in message
        assert "one store shared by the controllers" in message, message
    assert not os.path.exists(other.path) and not os.path.exists(os.path.dirname(other.path))
    assert client.describe_launch_templates()["LaunchTemplates"] == templates
    everything = [i["InstanceId"] for r in client.describe_instances()["Reservations"] for i in r["Instances"]]
    assert sorted(everything) == sorted(before) and set(before.values()) == {"running"}


class ReadBeforeTheWinner(FileStore):
    """The pool's file as an init sees it that read it just before another init wrote the pool: its first read
    finds nothing; by the time it asks EC2, the other init has written the pool and launched."""

    unread = True

    def read(self):
        if self.unread:
            self.unread = False
            return None
        return super().read()


def test_an_init_that_sees_the_instances_of_a_pool_made_meanwhile_says_so_and_launches_nothing(pool, client):
    pool_id = pool.read()["pool_id"]
    before = open(pool.path, "rb").read()
    instances = states(client, [e["id"] for e in pool.read()["instances"]])
    templates = client.describe_launch_templates()["LaunchTemplates"]
    for check_mode in (True, False):
        with pytest.raises(PoolError) as caught:
            ops.init_pool(ReadBeforeTheWinner(pool.path, "p"), client,
                          ops.InitRequest(2, dict(LAUNCH), check_mode=check_mode))
        message = caught.value.message
        assert ("pool 'p' was created by another spot_pool_init while this one ran (pool id %s, size 3, in %s)"
                % (pool_id, pool.path)) in message and "run it again to give the pool size 2" in message, message
        assert caught.value.details["pool_id"] == pool_id and caught.value.details["counts"]["ready"] == 3
    assert open(pool.path, "rb").read() == before
    assert client.describe_launch_templates()["LaunchTemplates"] == templates, "no template of its own is left"
    everything = [i["InstanceId"] for r in client.describe_instances()["Reservations"] for i in r["Instances"]]
    assert sorted(everything) == sorted(instances), "nothing launched"


def test_terminate_and_the_sweep_leave_another_pool_of_the_same_name_alone(pool, client, tmp_path):
    pool_id = pool.read()["pool_id"]
    theirs = named_stray(client, "f" * 16)
    with pool.transaction() as tx:
        tx.state["launch"]["orphan_grace_seconds"] = 0
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill  # pylint: disable=import-outside-toplevel

    for _pass in range(2):  # mark, then terminate: if it were ours
        result = refill.reconcile(pool, client)
        assert result.orphans_marked == [] and result.orphans_terminated == []
    assert "ec2spot:orphan-since" not in tags(client, theirs)
    done = ops.terminate_pool(pool, client)
    assert theirs not in done["terminated"] and len(done["terminated"]) == 3 and done["pool_id"] == pool_id
    assert states(client, [theirs]) == {theirs: "running"}
    client.terminate_instances(InstanceIds=[theirs])


def test_a_pool_made_before_pool_ids_adopts_one_for_what_its_state_lists_only(pool, client):
    listed = [e["id"] for e in pool.read()["instances"]]
    client.delete_tags(Resources=listed, Tags=[{"Key": "ec2spot:pool-id"}])
    with pool.transaction() as tx:  # as an older release wrote it
        del tx.state["pool_id"]
    stray = named_stray(client)  # another old controller's instance of the same name
    again = ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH)))
    pool_id = pool.read()["pool_id"]
    assert again["pool_id"] == pool_id and len(pool_id) == 16 and again["launched"] == []
    assert all(tags(client, i)["ec2spot:pool-id"] == pool_id for i in listed)
    assert "ec2spot:pool-id" not in tags(client, stray) and states(client, [stray]) == {stray: "running"}
    done = ops.terminate_pool(pool, client)
    assert sorted(done["terminated"]) == sorted(listed) and states(client, [stray]) == {stray: "running"}
    client.terminate_instances(InstanceIds=[stray])


def test_rebuild_of_a_lost_file_takes_only_the_pool_id_it_is_given(pool, client):
    """No pool in the store cannot tell a lost file from another controller's pool of the name: the rebuild names it."""
    old = pool.read()
    os.unlink(pool.path)
    templates = client.describe_launch_templates()["LaunchTemplates"]
    with pytest.raises(InvalidRequest, match="no pool 'p' in .*pool id %s \\(3 instances, 0 leased\\).*rebuild it "
                                             "with pool_id=" % old["pool_id"]) as err:
        ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), rebuild=True))
    assert err.value.details["pool_ids"] == [old["pool_id"]]
    assert not pool.exists() and client.describe_launch_templates()["LaunchTemplates"] == templates, "nothing made"
    rebuilt = ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), rebuild=True, pool_id=old["pool_id"]))
    assert rebuilt["pool_id"] == old["pool_id"] and rebuilt["launched"] == []
    assert sorted(e["id"] for e in pool.read()["instances"]) == sorted(e["id"] for e in old["instances"])

    theirs = named_stray(client, "f" * 16)
    os.unlink(pool.path)
    with pytest.raises(InvalidRequest, match="pool id %s \\(3 instances, 0 leased\\); pool id f{16} \\(1 "
                                             "instance, 0 leased\\).*pool_id=" % old["pool_id"]):
        ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), rebuild=True))
    assert not pool.exists()
    ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH), rebuild=True, pool_id=old["pool_id"]))
    assert theirs not in [e["id"] for e in pool.read()["instances"]] and pool.read()["pool_id"] == old["pool_id"]
    client.terminate_instances(InstanceIds=[theirs])


# -- the pool's launch template deleted outside the pool ----------------------------------------------------------
def test_a_deleted_pool_template_is_made_again_by_the_next_refill(pool, client):
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill  # pylint: disable=import-outside-toplevel

    old = pool.read()["launch"]["template"]["LaunchTemplateId"]
    client.delete_launch_template(LaunchTemplateId=old)
    client.terminate_instances(InstanceIds=[pool.read()["instances"][0]["id"]])  # so the refill must launch
    result = refill.reconcile(pool, client)
    assert len(result.launched) == 1
    template = pool.read()["launch"]["template"]
    assert template["owned"] and template["LaunchTemplateId"] != old
    [made] = client.describe_launch_templates(LaunchTemplateIds=[template["LaunchTemplateId"]])["LaunchTemplates"]
    assert made["LaunchTemplateName"] == "ec2spot-p-%s" % pool.read()["pool_id"]


def test_a_user_template_that_vanished_stops_the_refill_with_what_to_do(store, client):
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill  # pylint: disable=import-outside-toplevel

    made = client.create_launch_template(LaunchTemplateName="theirs", LaunchTemplateData={"ImageId": LAUNCH["image_id"]})
    launch = dict(LAUNCH, image_id=None, launch_template={"LaunchTemplateName": "theirs"})
    ops.init_pool(store, client, ops.InitRequest(1, launch))
    client.delete_launch_template(LaunchTemplateId=made["LaunchTemplate"]["LaunchTemplateId"])
    client.terminate_instances(InstanceIds=[store.read()["instances"][0]["id"]])
    assert refill.RefillJob(store, client, lambda event, **fields: None).run() == 1
    error = store.read()["refill"]["last_error"]
    assert "launch template theirs does not exist" in error and "spot_pool_init" in error, error


# -- stopped fallbacks are reused, and ended with the pool ---------------------------------------------------------
def test_a_stopped_fallback_is_started_again_before_an_on_demand_launch(tmp_path, fault_proxy, proxy_client):
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill  # pylint: disable=import-outside-toplevel

    client = proxy_client
    store = FileStore(str(tmp_path / "state" / "p.json"), "p")
    fault_proxy.fail_offering("InsufficientInstanceCapacity", market="spot")
    ops.init_pool(store, client, ops.InitRequest(2, dict(LAUNCH)))
    first = ops.get_instance(store, no_client, verify=False, refill=False)
    ops.get_instance(store, no_client, verify=False, refill=False)
    client.create_tags(Resources=[first["instance_id"]], Tags=[{"Key": "ec2spot:leased-at", "Value": "x"}])
    assert ops.release_instance(store, client, first["instance_id"], fallback_action="stop")["action"] == "stop"
    refill.reconcile(store, client, launch=False)
    kept = ops.pool_info(store)["kept_fallbacks"]
    assert [k["id"] for k in kept] == [first["instance_id"]] and kept[0]["instance_type"] == "t3.micro"

    on_demand_before = len(fault_proxy.offering_requests(market="on-demand"))
    result = refill.reconcile(store, client)
    assert result.reused == [first["instance_id"]] and len(result.launched) == 2
    assert len(fault_proxy.offering_requests(market="on-demand")) == on_demand_before + 1  # one new, not two
    assert states(client, [first["instance_id"]]) == {first["instance_id"]: "running"}
    left = tags(client, first["instance_id"])
    assert "ec2spot:released-at" not in left and "ec2spot:leased-at" not in left, left
    assert first["instance_id"] in [e["id"] for e in store.read()["instances"]]
    assert ops.pool_info(store)["kept_fallbacks"] == []
    ops.terminate_pool(store, client)


def test_terminate_with_defaults_ends_the_stopped_fallbacks_and_says_so(pool, client):
    with pool.transaction() as tx:
        tx.state["instances"][0]["type"] = "fallback"
    fallback = ops.get_instance(pool, no_client, verify=False, refill=False)["instance_id"]
    ops.release_instance(pool, client, fallback, fallback_action="stop")
    assert states(client, [fallback]) == {fallback: "stopped"}
    done = ops.terminate_pool(pool, client)
    assert fallback in done["terminated"] and done["kept_fallbacks"] == [fallback] and done["stopped"] == []
    assert "1 stopped fallback kept for reuse terminated with the pool" in done["msg"]
    assert states(client, [fallback]) == {fallback: "terminated"}


def test_terminate_of_a_pool_made_before_pool_ids_ends_what_it_lists_and_names_the_rest(pool, client):
    listed = [e["id"] for e in pool.read()["instances"]]
    with pool.transaction() as tx:
        del tx.state["pool_id"]
    stray = named_stray(client)
    done = ops.terminate_pool(pool, client)
    assert sorted(done["terminated"]) == sorted(listed) and done["pool_id"] is None
    assert stray in done["warnings"][0] and "left alone" in done["warnings"][0]
    assert states(client, [stray]) == {stray: "running"}
    client.terminate_instances(InstanceIds=[stray])


# -- the hand-out ---------------------------------------------------------------------------------------------------
def leases_of(store):
    return [lease["id"] for lease in store.read()["leases"]]


def test_a_get_whose_lease_write_fails_leaves_no_lease(pool, monkeypatch):
    """Item 4: the disk fills up at the lease's write (the exact write: the temp file of the transaction)."""
    before = open(pool.path, "rb").read()
    real_fsync = ops_state.os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ops_state.os, "fsync", disk_full)
    with pytest.raises(ops.PoolError, match=r"cannot write the pool file .*No space left on device; nothing was leased"):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    monkeypatch.setattr(ops_state.os, "fsync", real_fsync)
    assert open(pool.path, "rb").read() == before and leases_of(pool) == []
    assert [name for name in os.listdir(pool.directory) if name.endswith(".tmp")] == []


def test_a_refill_that_cannot_start_after_the_lease_is_a_warning_not_a_failed_get(pool, monkeypatch):
    """Item 4: the lease was written; starting the job then hit a full disk (its code copy): the get stands."""
    def disk_full(store, env, lock=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ops.jobcontrol, "start_refill", disk_full)
    got = ops.get_instance(pool, no_client, verify=False, refill_env={})
    assert leases_of(pool) == [got["instance_id"]]
    assert got["refill"]["started"] is False and "No space left on device" in got["refill"]["error"]
    assert any("could not be started" in warning and "lease stands" in warning for warning in got["warnings"])


def test_leases_expire_after_a_day_by_default_and_zero_means_never(pool):
    got = ops.get_instance(pool, no_client, refill=False, verify=False)
    leased, expires = timefmt.parse_time(got["leased_at"]), timefmt.parse_time(got["expires_at"])
    assert (expires - leased).total_seconds() == ops.DEFAULT_LEASE_TTL == 86400
    forever = ops.get_instance(pool, no_client, refill=False, verify=False, lease_ttl=0)
    assert forever["expires_at"] is None
    assert "expires_at" not in next(lease for lease in pool.read()["leases"] if lease["id"] == forever["instance_id"])


def test_a_negative_lease_ttl_is_refused_and_changes_nothing(pool):
    before = open(pool.path, "rb").read()
    with pytest.raises(InvalidRequest, match=r"lease_ttl must be a number of seconds, or 0 .*never expires; got -60"):
        ops.get_instance(pool, no_client, refill=False, verify=False, lease_ttl=-60)
    assert open(pool.path, "rb").read() == before


def test_a_get_that_finds_nothing_ready_restarts_a_stopped_refill_and_says_so(pool, monkeypatch):
    """Item 5: a refill that stopped on an error is started again by the next get that finds no ready instance."""
    for _lease in range(3):
        ops.get_instance(pool, no_client, refill=False, verify=False)
    with pool.transaction() as tx:
        tx.state["refill"].update(last_error="DescribeInstances failed: AWS was not able to validate (AuthFailure)",
                                  last_error_code="AuthFailure", last_error_permanent=True, pid=None)
    started = []
    monkeypatch.setattr(ops.jobcontrol, "start_refill", lambda store, env, lock=None: started.append(store.path) or (True, 4242))
    with pytest.raises(NoReadyInstance) as failure:
        ops.get_instance(pool, no_client, verify=False, refill_env={})
    assert started == [pool.path]
    assert "refill error: DescribeInstances failed" in failure.value.message
    assert "the refill job was started (pid 4242)" in failure.value.message


def test_dead_instances_found_by_a_get_stay_dropped_when_the_get_fails(pool, client, ec2_states, monkeypatch):
    """Item 6: every instance ended outside the pool. What EC2 said is recorded, and the refill is started."""
    ids = [entry["id"] for entry in pool.read()["instances"]]
    client.terminate_instances(InstanceIds=ids)
    started = []
    monkeypatch.setattr(ops.jobcontrol, "start_refill", lambda store, env, lock=None: started.append(1) or (True, 4242))
    with pytest.raises(NoReadyInstance, match=r"has 0 ready of 3; 0 pending; 0 leased; dropped i-"):
        ops.get_instance(pool, ec2_states, refill_env={})
    assert pool.read()["instances"] == [] and started == [1]
    assert ec2_states.calls == 2  # the chosen one, then the rest in one call


def test_the_default_get_checks_the_chosen_instance_even_right_after_a_refill_pass(pool, client):
    """Item 7: the refill checked the pool a moment ago; the instance died since. A default get asks EC2 about the
    one it is about to hand out (one id), drops it, and hands out the next (one more call for the others)."""
    first = pool.read()["instances"][0]["id"]
    client.terminate_instances(InstanceIds=[first])
    asked = []

    def states(ids):
        asked.append(list(ids))
        return {i["InstanceId"]: i["State"]["Name"]
                for r in client.describe_instances(InstanceIds=list(ids))["Reservations"] for i in r["Instances"]}

    got = ops.get_instance(pool, states, refill=False)
    assert got["instance_id"] != first and got["verified"] and got["dropped"] == [first]
    assert asked[0] == [first] and len(asked) == 2 and got["instance_id"] in asked[1]
    # A live first choice costs one call of one id.
    asked.clear()
    again = ops.get_instance(pool, states, refill=False)
    assert asked == [[again["instance_id"]]]


def test_a_get_that_cannot_ask_ec2_fails_and_changes_nothing(pool, aws_env):
    before = open(pool.path, "rb").read()
    wrong = InstanceStates({"region": REGION, "endpoint_url": "http://127.0.0.1:9", "access_key": "testing",
                            "secret_key": "testing"})
    with pytest.raises(ops.PoolError, match=r"DescribeInstances failed: cannot reach http://127.0.0.1:9"):
        ops.get_instance(pool, wrong, refill=False)
    assert open(pool.path, "rb").read() == before


def test_a_get_that_lost_its_checked_instance_to_another_get_checks_the_next(pool, ec2_states):
    """The check runs outside the lock: another get may lease the checked instance meanwhile. The claim takes it
    only if it is still idle; else this get checks the next one."""
    first = pool.read()["instances"][0]["id"]

    def states_then_someone_else_takes_it(ids):
        found = ec2_states(ids)
        if ids == [first]:
            ops.get_instance(pool, no_client, refill=False, verify=False)  # the other get
        return found

    got = ops.get_instance(pool, states_then_someone_else_takes_it, refill=False)
    assert got["instance_id"] != first and sorted(leases_of(pool)) == sorted([first, got["instance_id"]])


def test_a_successful_init_clears_the_error_that_stopped_the_refill(pool, client):
    with pool.transaction() as tx:
        tx.state["refill"].update(last_error="CreateFleet failed (UnauthorizedOperation)",
                                  last_error_code="UnauthorizedOperation", last_error_permanent=True)
    ops.init_pool(pool, client, ops.InitRequest(3, dict(LAUNCH)))
    refill = pool.read()["refill"]
    assert (refill["last_error"], refill["last_error_code"], refill["last_error_permanent"]) == (None, None, None)
    assert ops.pool_info(pool)["refill"]["will_restart"] is True


def test_a_waiting_get_starts_the_refill_once_and_takes_what_it_makes_ready(pool, monkeypatch):
    taken = [ops.get_instance(pool, no_client, refill=False, verify=False)["instance_id"] for _lease in range(3)]
    started = []
    monkeypatch.setattr(ops.jobcontrol, "start_refill", lambda store, env, lock=None: started.append(1) or (True, 4242))
    now = [0.0]

    def sleep(seconds):  # the "refill" makes one instance ready during the wait
        now[0] += seconds
        with pool.transaction() as tx:
            lease = tx.state["leases"].pop(0)
            tx.state["instances"].append({key: value for key, value in lease.items()
                                          if key not in ("leased_at", "expires_at")})

    got = ops.get_instance(pool, no_client, verify=False, wait_timeout=5, refill_env={}, sleep=sleep,
                           clock=lambda: now[0])
    assert got["instance_id"] == taken[0] and now[0] == 1.0
    assert started == [1, 1]  # once while waiting, once after the hand-out (a running job makes it a no-op)
