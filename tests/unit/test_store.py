"""The pool store interface (store.PoolStore): contract tests every store must pass, and the pure claim rule.

The contract tests reach a store through a kit (the `kit` fixture): `open()` makes a new handle on one pool (as
another process or controller would), `snapshot()` returns everything the store keeps for that pool, so "changed
nothing" is checked byte for byte. The DynamoDB store runs the same tests against the session's moto server, in a
table of its own per test, twice: with a boto3 client and with the hand-out path's light client (dynamoquery.py).
"""

from __future__ import annotations

import datetime
import os
import threading
import uuid

import boto3
import pytest
from botocore.config import Config

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import BOTOCORE_CONFIG
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.dynamoquery import DynamoDBClient
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.entries import counts
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import DamagedPool
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.entries import new_lease
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.pool import new_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import PoolStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.claim import choose_claim
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.claim import needs_verify
from tests.support.pool_entries import instance_id
from tests.support.moto import FAKE_CREDENTIALS
from tests.support.moto import POOL_LAUNCH
from tests.support.moto import REGION
from tests.support.pool_entries import pool_entry

NOW = datetime.datetime(2026, 11, 22, 10, 0, 0, tzinfo=datetime.timezone.utc)
HOUR = 3600


def local_files(directory):
    """Every file under `directory` (path relative to it -> bytes); {} when there is no such directory."""
    found = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


class FileStoreKit:
    """The JSON file store, in a state directory of its own."""

    #: A claim takes the first ready entry (a store shared by many controllers picks any, to spread the races).
    claims_first = True

    def __init__(self, tmp_path, request):
        self.directory = str(tmp_path / "state")
        self.path = os.path.join(self.directory, "p.json")

    def open(self):
        return FileStore(self.path, "p")

    def snapshot(self):
        """Every file the store keeps (path relative to the state directory -> bytes); {} when there is none."""
        return local_files(self.directory)

    def damage(self, store):
        """Break the pool as a torn or hand-edited file would: this pool's, its fields wrong."""
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write('{"version": 1, "pool_name": "p", "instances": "lost", "leases": null}')
        return self.path


def dynamodb_client(url):
    """A DynamoDB client of the moto server at `url`, configured as the collection configures its own."""
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=url,
                        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(**BOTOCORE_CONFIG))


def light_dynamodb_client(url):
    """The hand-out path's DynamoDB client (dynamoquery.py, no boto3) of the moto server at `url`, made from
    module options as spot_pool_get makes it."""
    return DynamoDBClient({"region": REGION, "endpoint_url": url,
                           "access_key": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           "secret_key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]})


#: The clients a DynamoStore is tested with: boto3's, and the light one that must behave the same for the store.
DYNAMODB_CLIENTS = {"boto3": dynamodb_client, "light": light_dynamodb_client}


class DynamoStoreKit:
    """The DynamoDB store, in a table of its own on the session's moto server (made here, as init would), reached
    through the fault proxy, which applies each DynamoDB request atomically as DynamoDB does (moto alone does not)."""

    claims_first = False
    #: The client of the store under test (the snapshot always reads with boto3's).
    make_client = staticmethod(dynamodb_client)

    def __init__(self, tmp_path, request):
        self.url = request.getfixturevalue("fault_proxy").url
        self.table = "ec2spot-pool-" + uuid.uuid4().hex[:12]
        self.directory = str(tmp_path / "state")
        os.makedirs(self.directory, mode=0o700)
        self.client = dynamodb_client(self.url)
        DynamoStore(self.make_client(self.url), self.table, "p", self.directory).ensure_table()
        # The fault proxy's own teardown resets moto, which forgets the table as well.

    def open(self):
        return DynamoStore(self.make_client(self.url), self.table, "p", self.directory)

    def snapshot(self):
        """Every item of the table (the pool's and any other) and every local file the store keeps."""
        found = {}
        for page in self.client.get_paginator("scan").paginate(TableName=self.table, ConsistentRead=True):
            for item in page["Items"]:
                found[(item["pool"]["S"], item["item"]["S"])] = item
        found.update(local_files(self.directory))
        return found

    def damage(self, store):
        """Break the pool as a hand edit would: the body of its first instance item is no longer JSON."""
        key = "inst#" + store.read()["instances"][0]["id"]
        item = self.client.get_item(TableName=self.table, Key={"pool": {"S": "p"}, "item": {"S": key}})["Item"]
        self.client.put_item(TableName=self.table, Item=dict(item, body={"S": "{not json"}))
        return key


class LightDynamoStoreKit(DynamoStoreKit):
    """The DynamoDB store with the hand-out path's light client (dynamoquery.DynamoDBClient) instead of boto3's."""

    make_client = staticmethod(light_dynamodb_client)


KITS = {"file": FileStoreKit, "dynamodb": DynamoStoreKit, "dynamodb-light": LightDynamoStoreKit}


@pytest.fixture(params=sorted(KITS))
def kit(request, tmp_path):
    return KITS[request.param](tmp_path, request)


def seed(store, instances=(), leases=(), target=None, **refill):
    """Create the pool through the interface's own atomic change."""
    with store.transaction() as tx:
        tx.state = new_state(store.pool_name, len(instances) if target is None else target,
                             {"instance_types": ["t3.micro"]})
        tx.state["instances"] = list(instances)
        tx.state["leases"] = list(leases)
        tx.state["refill"].update(refill)
    return store


def ids(items):
    return [item["id"] for item in items]


def test_the_store_is_a_pool_store(kit):
    assert isinstance(kit.open(), PoolStore)


# -- claim_ready ---------------------------------------------------------------------------------------------------
def test_a_claim_takes_a_ready_entry_and_writes_its_lease(kit):
    store = seed(kit.open(), [pool_entry(1, ready=False), pool_entry(2), pool_entry(3)])
    claim = store.claim_ready(set(), set(), HOUR, verify=False)
    assert claim.lease["id"] in ([instance_id(2)] if kit.claims_first else [instance_id(2), instance_id(3)])
    assert claim.lease["lease_id"] and claim.lease["expires_at"]
    assert (claim.dropped, claim.unchecked, claim.refill_error) == ([], [], None)
    after = kit.open().read()
    assert ids(after["instances"]) == [instance_id(1)] + [item for item in (instance_id(2), instance_id(3))
                                                          if item != claim.lease["id"]]
    assert after["leases"] == [claim.lease]
    assert claim.counts == counts(after) and claim.counts["leased"] == 1 and claim.counts["ready"] == 1


def test_only_one_claimer_gets_each_entry(kit):
    """Eight handles (each its own, as eight processes would have) race for 40 entries, 10 claims each: every entry
    goes to exactly one of them, and the pool records exactly the leases they got."""
    seed(kit.open(), [pool_entry(number) for number in range(40)])
    barrier = threading.Barrier(8)
    got = [[] for _claimer in range(8)]

    def claimer(mine):
        store = kit.open()
        barrier.wait()
        for _attempt in range(10):
            claim = store.claim_ready(set(), set(), 0, verify=False)
            if claim.lease is not None:
                mine.append(claim.lease)

    threads = [threading.Thread(target=claimer, args=(mine,)) for mine in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    leases = [lease for mine in got for lease in mine]
    assert sorted(ids(leases)) == sorted(instance_id(number) for number in range(40))  # each once, none lost
    after = kit.open().read()
    assert after["instances"] == []
    assert sorted(lease["lease_id"] for lease in after["leases"]) == sorted(lease["lease_id"] for lease in leases)


def test_a_claim_with_nothing_ready_leases_nothing_and_says_the_counts(kit):
    held = new_lease(pool_entry(9), NOW, 0, lease_id="l9")
    store = seed(kit.open(), [pool_entry(1, ready=False)], [held], target=3, last_error="InsufficientInstanceCapacity")
    before = kit.snapshot()
    claim = store.claim_ready(set(), set(), HOUR, verify=False)
    assert claim.lease is None and claim.unchecked == [] and claim.dropped == []
    assert claim.counts == {"target": 3, "ready": 0, "pending": 1, "leased": 1, "spot": 1, "fallback": 0}
    assert claim.refill_error == "InsufficientInstanceCapacity"
    assert kit.snapshot() == before


def test_a_claim_that_must_ask_ec2_first_names_the_candidates_then_takes_only_one_reported_alive(kit):
    store = seed(kit.open(), [pool_entry(1), pool_entry(2, ready=False), pool_entry(3)])
    before = kit.snapshot()
    first = store.claim_ready(set(), set(), HOUR)  # verify: no ready entry was checked yet
    assert first.lease is None and first.unchecked == [instance_id(1), instance_id(3)]
    assert kit.snapshot() == before
    second = store.claim_ready(set(), {instance_id(3)}, HOUR)
    assert second.lease["id"] == instance_id(3) and second.unchecked == []


def test_a_recently_verified_pool_is_trusted_within_verify_max_age(kit):
    store = seed(kit.open(), [pool_entry(1)], verified_at="2999-01-01T00:00:00Z")  # verified "just now"
    assert store.claim_ready(set(), set(), HOUR, verify=True, verify_max_age=60).lease["id"] == instance_id(1)


def test_dead_entries_are_dropped_and_stay_dropped_when_nothing_is_handed_out(kit):
    store = seed(kit.open(), [pool_entry(1), pool_entry(2, ready=False)])
    claim = store.claim_ready({instance_id(1)}, set(), HOUR)
    assert claim.lease is None and claim.dropped == [instance_id(1)] and claim.unchecked == []
    assert ids(kit.open().read()["instances"]) == [instance_id(2)]
    again = kit.open().claim_ready(set(), set(), HOUR, verify=False)  # a later claim knows nothing of the dead
    assert again.lease is None and again.dropped == []
    assert ids(kit.open().read()["instances"]) == [instance_id(2)]


def test_check_mode_changes_nothing_and_says_what_a_claim_would_do(kit):
    store = seed(kit.open(), [pool_entry(1), pool_entry(2)])
    before = kit.snapshot()
    claim = store.claim_ready({instance_id(1)}, set(), HOUR, verify=False, check_mode=True)
    assert claim.lease["id"] == instance_id(2) and claim.dropped == [instance_id(1)]
    assert claim.counts["ready"] == 0 and claim.counts["leased"] == 1
    assert kit.snapshot() == before


def test_a_claim_without_a_pool_is_none_and_creates_nothing(kit):
    assert kit.open().claim_ready(set(), set(), HOUR, verify=False) is None
    assert kit.snapshot() == {}


# -- end_lease -----------------------------------------------------------------------------------------------------
def test_end_lease_ends_only_the_lease_named(kit):
    # The same fallback leased again after a release under a new lease_id: two leases of one instance.
    reused = pool_entry(1, kind="fallback")
    leases = [new_lease(reused, NOW, 0, lease_id="a1"), new_lease(reused, NOW, 0, lease_id="a2"),
              new_lease(pool_entry(2), NOW, 0, lease_id="b1")]
    store = seed(kit.open(), [pool_entry(3)], leases)
    after = store.end_lease(instance_id(1), "a2")
    assert after == counts(kit.open().read()) and after["leased"] == 2
    assert [lease["lease_id"] for lease in kit.open().read()["leases"]] == ["a1", "b1"]
    before = kit.snapshot()
    assert store.end_lease(instance_id(2), "a1")["leased"] == 2  # a lease_id of another instance ends nothing
    assert kit.snapshot() == before


def test_end_lease_without_a_pool_is_none_and_creates_nothing(kit):
    assert kit.open().end_lease(instance_id(1), "a1") is None
    assert kit.snapshot() == {}


# -- the refill lock and delete ------------------------------------------------------------------------------------
def test_the_refill_lock_is_exclusive(kit):
    seed(kit.open(), [pool_entry(1)])
    one, other = kit.open().refill_lock(), kit.open().refill_lock()
    assert one.acquire(blocking=False) and one.held
    try:
        assert not other.acquire(blocking=False) and not other.held
        assert other.is_held_elsewhere() and not one.is_held_elsewhere()
    finally:
        one.release()
    assert not other.is_held_elsewhere()
    assert other.acquire(blocking=False)
    other.release()


def test_making_a_refill_lock_or_asking_about_it_creates_nothing(kit):
    lock = kit.open().refill_lock()
    assert not lock.is_held_elsewhere() and not lock.exists()
    assert not lock.acquire(blocking=False, create=False)
    assert kit.snapshot() == {}


def test_delete_removes_the_pool_and_all_the_store_keeps_for_it(kit):
    store = seed(kit.open(), [pool_entry(1), pool_entry(2)])
    store.claim_ready(set(), set(), HOUR, verify=False)
    with open(store.refill_log_path(), "w", encoding="utf-8") as handle:
        handle.write("{}\n")
    lock = store.refill_lock()
    assert lock.acquire()  # as terminate holds it, so that no job runs meanwhile
    store.delete(lock)
    assert not lock.held
    assert kit.open().read() is None and not kit.open().exists()
    assert kit.snapshot() == {}
    kit.open().delete()  # again: nothing there, nothing created
    assert kit.snapshot() == {}


def test_delete_leaves_the_refill_lock_of_a_job_that_still_runs(kit):
    store = seed(kit.open(), [pool_entry(1)])
    job = kit.open().refill_lock()
    assert job.acquire()
    try:
        store.delete()
        assert store.read() is None and job.held
        assert store.refill_lock().is_held_elsewhere()
    finally:
        job.release()


# -- damage: refused by name, the same error in every store, and init with rebuild: true recovers from EC2's tags -----
def tagged_members(ec2):
    """The ids of the live instances EC2 tags as members of pool p."""
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:ec2spot:pool", "Values": ["p"]},
                 {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return sorted(inst["InstanceId"] for page in pages for res in page["Reservations"] for inst in res["Instances"])


def test_a_damaged_pool_is_refused_by_name_and_rebuilt_from_ec2s_tags(kit, proxy_client):
    store = kit.open()
    ops.init_pool(store, proxy_client, ops.InitRequest(2, dict(POOL_LAUNCH), wait=True, wait_timeout=60))
    members = tagged_members(proxy_client)
    assert len(members) == 2
    broken = kit.damage(store)
    damaged = kit.snapshot()
    for refused in (kit.open().read,
                    lambda: ops.init_pool(kit.open(), proxy_client, ops.InitRequest(2, dict(POOL_LAUNCH))),
                    lambda: ops.get_instance(kit.open(), None, verify=False, refill=False)):
        with pytest.raises(DamagedPool) as err:
            refused()
        assert broken in err.value.message and "rebuild: true" in err.value.message, err.value.message
        assert err.value.kind == "damaged"
    assert kit.snapshot() == damaged, "a refusal changes nothing"

    rebuilt = ops.init_pool(kit.open(), proxy_client,
                            ops.InitRequest(2, dict(POOL_LAUNCH), rebuild=True, wait_timeout=60))
    assert rebuilt["launched"] == [] and tagged_members(proxy_client) == members, "nothing launched twice"
    state = kit.open().read()
    assert sorted(ids(state["instances"] + state["leases"])) == members
    assert state["pool_id"] and rebuilt["counts"]["ready"] == 2
    assert os.path.dirname(rebuilt["moved_aside"]) == kit.directory, "the damaged copy is kept beside the pool"


# -- the operations use the interface: one claim per get, one end_lease per release -------------------------------
class Recording:
    """A store whose method calls are recorded by name."""

    def __init__(self, store):
        self._store = store
        self.calls = []

    def __getattr__(self, name):
        value = getattr(self._store, name)
        if callable(value):
            self.calls.append(name)
        return value


class FakeEc2:
    def __init__(self):
        self.terminated = []

    def terminate_instances(self, InstanceIds):  # noqa: N803 (boto3's name)  # pylint: disable=invalid-name
        self.terminated += InstanceIds
        return {"TerminatingInstances": [{"InstanceId": item} for item in InstanceIds]}


def test_a_get_is_one_claim_and_a_release_one_end_lease(kit):
    store = Recording(seed(kit.open(), [pool_entry(1), pool_entry(2)]))
    got = ops.get_instance(store, None, verify=False, refill=False)
    assert store.calls == ["claim_ready"]
    store.calls.clear()
    ec2 = FakeEc2()
    released = ops.release_instance(store, ec2, got["instance_id"], lease_id=got["lease_id"])
    assert store.calls == ["read", "end_lease"]
    assert ec2.terminated == [got["instance_id"]] and released["counts"]["leased"] == 0


# -- the claim rule, with plain values -----------------------------------------------------------------------------
def pool_of(*instances):
    return {"instances": list(instances), "leases": [], "refill": {}}


def test_choose_claim_trusted_takes_the_first_ready_entry_that_is_not_dead():
    state = pool_of(pool_entry(1, ready=False), pool_entry(2), pool_entry(3), pool_entry(4))
    dropped, entry, unchecked = choose_claim(state, {instance_id(2)}, set(), trusted=True)
    assert (dropped, entry["id"], unchecked) == ([instance_id(2)], instance_id(3), [])
    assert ids(state["instances"]) == [instance_id(n) for n in (1, 2, 3, 4)]  # a decision: the state is untouched


def test_choose_claim_untrusted_takes_only_an_entry_reported_alive():
    state = pool_of(pool_entry(1), pool_entry(2), pool_entry(3))
    assert choose_claim(state, set(), {instance_id(2)}, trusted=False)[1]["id"] == instance_id(2)
    dropped, entry, unchecked = choose_claim(state, {instance_id(1)}, set(), trusted=False)
    assert (dropped, entry, unchecked) == ([instance_id(1)], None, [instance_id(2), instance_id(3)])


def test_choose_claim_with_nothing_ready_takes_nothing_and_has_nothing_to_check():
    state = pool_of(pool_entry(1, ready=False))
    assert choose_claim(state, set(), set(), trusted=True) == ([], None, [])
    assert choose_claim(pool_of(), {instance_id(1)}, set(), trusted=False) == ([], None, [])


def test_choose_claim_drops_only_idle_entries():
    state = pool_of(pool_entry(1))
    state["leases"] = [new_lease(pool_entry(2), NOW, 0, lease_id="x")]
    assert choose_claim(state, {instance_id(2)}, set(), trusted=True)[0] == []


def test_needs_verify():
    def at(seconds_ago):
        return {"refill": {"verified_at": (NOW - datetime.timedelta(seconds=seconds_ago)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")}}

    assert needs_verify(at(0), verify=False, verify_max_age=0, now=NOW) is False
    assert needs_verify(at(0), verify=True, verify_max_age=0, now=NOW) is True  # 0: always ask
    assert needs_verify(at(30), verify=True, verify_max_age=60, now=NOW) is False
    assert needs_verify(at(60), verify=True, verify_max_age=60, now=NOW) is False
    assert needs_verify(at(61), verify=True, verify_max_age=60, now=NOW) is True
    assert needs_verify({"refill": {}}, verify=True, verify_max_age=60, now=NOW) is True  # never verified
    assert needs_verify({}, verify=True, verify_max_age=60, now=NOW) is True


def test_needs_verify_treats_no_or_a_negative_max_age_as_always_and_1_as_one_second():
    """needs_verify's guard (mutation run: `or` turned `and`, `<= 0` turned `<= 1` lived)."""
    recent = {"refill": {"verified_at": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}}
    assert needs_verify(recent, verify=True, verify_max_age=None, now=NOW) is True
    assert needs_verify(recent, verify=True, verify_max_age=-5, now=NOW) is True
    assert needs_verify(recent, verify=True, verify_max_age=1, now=NOW) is False
