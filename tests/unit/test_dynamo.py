"""The DynamoDB store's own behaviour, against the session's moto server (the contract it shares with the file
store is in test_store.py): claims racing in threads and in processes, the requests a claim makes, the refill
lease's expiry and fencing, conflicting whole-pool writes, the table's checks, throttling and permissions injected
by the fault proxy. The tests of the store's calls run with both its clients (the `store_client` fixture): boto3's
and the hand-out path's light one (dynamoquery.py); what other tests set up or observe goes through boto3."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import dynamodb as dynamo
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import BOTOCORE_CONFIG
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.dynamoquery import DynamoDBClient
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import DamagedPool
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import RefillLeaseLost
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import StoreConflict
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import change_pool
from tests.support.moto import POOL_LAUNCH
from tests.support.moto import REGION
from tests.support.pool_entries import instance_id
from tests.support.pool_entries import pool_entry
from tests.support.pool_imports import POOL
from tests.support.pool_imports import imports_of
from tests.support.pool_imports import pool_modules
from tests.unit.test_store import DYNAMODB_CLIENTS
from tests.unit.test_store import dynamodb_client
from tests.unit.test_store import ids
from tests.unit.test_store import seed

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600


def new_table_name():
    return "ec2spot-pool-" + uuid.uuid4().hex[:12]


@pytest.fixture(params=sorted(DYNAMODB_CLIENTS))
def store_client(request):
    """The maker (url -> client) of the client the store under test uses: boto3's, or the light one."""
    return DYNAMODB_CLIENTS[request.param]


@pytest.fixture
def url(fault_proxy):
    """The session's moto server, through the fault proxy: it applies each DynamoDB request atomically, as DynamoDB
    does (moto alone may let two racing conditional writes of one item both succeed)."""
    return fault_proxy.url


@pytest.fixture
def table(url):
    """A pool table of its own, made as init would make it; deleted afterwards."""
    name = new_table_name()
    DynamoStore(dynamodb_client(url), name, "p").ensure_table()
    yield name
    with contextlib.suppress(Exception):
        dynamodb_client(url).delete_table(TableName=name)


@pytest.fixture
def open_store(url, table, tmp_path, store_client):
    """A maker of handles on pool `p` of `table`, each with its own client (as another controller has)."""

    def make(**options):
        return DynamoStore(store_client(options.pop("url", url)), table, "p", str(tmp_path), **options)

    return make


class Watched:
    """A DynamoDB client (boto3's or the light one) whose calls are recorded by operation name, in order; a hook
    in `before` (operation name -> function of the call's parameters) runs just before that operation is sent."""

    def __init__(self, client):
        self._client = client
        self.calls = []
        self.before = {}

    def __getattr__(self, name):
        method = getattr(self._client, name)
        operation = "".join(part.capitalize() for part in name.split("_"))

        def call(**params):
            self.calls.append(operation)
            if operation in self.before:
                self.before[operation](params)
            return method(**params)

        return call


def watch(store):
    """`store`'s client, watched from now on (see Watched)."""
    if not isinstance(store.client, Watched):
        store.client = Watched(store.client)
    return store.client


def count_calls(store):
    """The DynamoDB operations `store`'s client sends from now on, in order."""
    return watch(store).calls


def items_of(url, table):
    client = dynamodb_client(url)
    return sorted((item for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
                   for item in page["Items"]), key=lambda item: (item["pool"]["S"], item["item"]["S"]))


# -- a hand-out: one read, one conditional write ------------------------------------------------------------------
def test_an_uncontended_claim_is_one_query_and_one_conditional_update(open_store):
    store = seed(open_store(), [pool_entry(number) for number in range(10)])
    calls = count_calls(store)
    assert store.claim_ready(set(), set(), HOUR, verify=False).lease is not None
    assert calls == ["Query", "UpdateItem"]


def rival_wins(store, url, table, races):
    """Another controller leases, just before this claim writes it, the entry each of this claim's first `races`
    UpdateItems is about to take. Returns the items taken from under it (filled in as the claim runs)."""
    rival = dynamodb_client(url)
    stolen = []

    def steal(params):
        if len(stolen) < races:
            stolen.append(params["Key"]["item"]["S"])
            rival.update_item(TableName=table, Key=params["Key"], UpdateExpression="SET #s = :l, #r = #r + :one",
                              ExpressionAttributeNames={"#s": "status", "#r": "rev"},
                              ExpressionAttributeValues={":l": {"S": "leased"}, ":one": {"N": "1"}})

    watch(store).before["UpdateItem"] = steal
    return stolen


def test_a_lost_race_takes_another_ready_entry_from_the_same_read(open_store, url, table):
    """Another controller leases the entry this claim is about to write: its condition fails (not retried as an
    error), and it leases another entry without reading the pool again."""
    store = seed(open_store(), [pool_entry(1), pool_entry(2), pool_entry(3)])
    calls = count_calls(store)
    stolen = rival_wins(store, url, table, 1)
    claim = store.claim_ready(set(), set(), HOUR, verify=False)
    assert calls == ["Query", "UpdateItem", "UpdateItem"]
    assert claim.lease is not None and "inst#" + claim.lease["id"] != stolen[0]
    assert claim.counts["leased"] == 2 and claim.counts["ready"] == 1


def test_two_lost_races_in_a_row_read_the_pool_again(open_store, url, table):
    """The read is stale (others are emptying the pool): after two lost races the claim reads again rather than
    trying every entry of a read that is out of date."""
    store = seed(open_store(), [pool_entry(number) for number in range(6)])
    calls = count_calls(store)
    stolen = rival_wins(store, url, table, 2)
    claim = store.claim_ready(set(), set(), HOUR, verify=False)
    assert calls == ["Query", "UpdateItem", "UpdateItem", "Query", "UpdateItem"]
    assert "inst#" + claim.lease["id"] not in stolen and claim.counts["leased"] == 3


def test_a_claim_never_gives_up_while_its_last_read_shows_a_ready_entry(open_store, url, table):
    """Others win two races per read, three reads running: the third read is tried to its end, and the claim
    gets the one entry left, as a file store's claim would."""
    store = seed(open_store(), [pool_entry(number) for number in range(9)])
    calls = count_calls(store)
    stolen = rival_wins(store, url, table, 8)
    claim = store.claim_ready(set(), set(), HOUR, verify=False)
    assert calls == ["Query", "UpdateItem", "UpdateItem"] * 2 + ["Query"] + ["UpdateItem"] * 5
    assert claim.lease is not None and "inst#" + claim.lease["id"] not in stolen
    assert claim.counts["ready"] == 0 and claim.counts["leased"] == 9


def test_claims_pick_at_random_among_the_ready_not_the_first(open_store):
    store = seed(open_store(), [pool_entry(number) for number in range(20)])
    taken = [store.claim_ready(set(), set(), 0, verify=False).lease["id"] for _claim in range(20)]
    assert sorted(taken) == [instance_id(number) for number in range(20)]
    assert taken != [instance_id(number) for number in range(20)]  # in pool order: 1 chance in 20! if random


def test_more_claimers_in_threads_than_ready_entries_each_entry_is_leased_once(open_store):
    seed(open_store(), [pool_entry(number) for number in range(5)] + [pool_entry(9, ready=False)])
    stores = [open_store() for _claimer in range(12)]
    barrier = threading.Barrier(len(stores))
    got = [None] * len(stores)
    errors = []

    def claimer(index):
        barrier.wait()
        try:
            got[index] = stores[index].claim_ready(set(), set(), HOUR, verify=False).lease
        except Exception as exc:  # pylint: disable=broad-exception-caught  # shown by the assertion below
            errors.append(repr(exc))

    threads = [threading.Thread(target=claimer, args=(index,)) for index in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    leases = [lease for lease in got if lease is not None]
    assert sorted(lease["id"] for lease in leases) == [instance_id(number) for number in range(5)]  # 0 duplicates
    after = open_store().read()
    assert [entry["id"] for entry in after["instances"]] == [instance_id(9)]
    assert sorted(lease["lease_id"] for lease in after["leases"]) == sorted(lease["lease_id"] for lease in leases)


CLAIMER = """
import json, sys
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
url, table, state_dir, kind = sys.argv[1:5]
if kind == "light":
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.dynamoquery import DynamoDBClient
    client = DynamoDBClient({"region": "%s", "endpoint_url": url, "access_key": "testing", "secret_key": "testing"})
else:
    import boto3
    from botocore.config import Config
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import BOTOCORE_CONFIG
    client = boto3.client("dynamodb", region_name="%s", endpoint_url=url, aws_access_key_id="testing",
                          aws_secret_access_key="testing", config=Config(**BOTOCORE_CONFIG))
store = DynamoStore(client, table, "p", state_dir)
print("ready", flush=True)
sys.stdin.read()  # the start signal: every claimer is loaded and waiting
claim = store.claim_ready(set(), set(), 0, verify=False)
print(json.dumps(claim.lease and claim.lease["id"]), flush=True)
""" % (REGION, REGION)


def test_more_claimers_in_processes_than_ready_entries_each_entry_is_leased_once(open_store, url, table, tmp_path,
                                                                                 store_client):
    seed(open_store(), [pool_entry(number) for number in range(5)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "build" / "collections"), str(ROOT)]))
    kind = next(name for name, maker in DYNAMODB_CLIENTS.items() if maker is store_client)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, table, str(tmp_path), kind], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _claimer in range(8)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.close()  # as near to at once as processes get
        answers = [json.loads(proc.stdout.read()) for proc in procs]
        assert [proc.wait(timeout=60) for proc in procs] == [0] * len(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    taken = sorted(answer for answer in answers if answer)
    assert taken == [instance_id(number) for number in range(5)] and answers.count(None) == 3
    assert sorted(lease["id"] for lease in open_store().read()["leases"]) == taken


# -- whole-pool changes: conditional on what was read -------------------------------------------------------------
def test_two_whole_pool_changes_at_once_one_stands_the_other_is_a_conflict(open_store):
    """Two inits with different sizes: the pool item's version lets one win; the other writes nothing."""
    seed(open_store(), [pool_entry(1)], target=2)
    with pytest.raises(StoreConflict, match="changed while"):
        with open_store().transaction() as first:
            first.state["target_size"] = 7
            with open_store().transaction() as second:
                second.state["target_size"] = 5
    assert open_store().read()["target_size"] == 5


def test_a_change_never_overwrites_a_lease_a_get_took_meanwhile(open_store):
    seed(open_store(), [pool_entry(1), pool_entry(2, ready=False)])
    with pytest.raises(StoreConflict):
        with open_store().transaction() as tx:
            claim = open_store().claim_ready(set(), set(), HOUR, verify=False)
            tx.state["instances"][0]["ip"] = "203.0.113.9"  # the entry the get has just leased, as read before
    after = open_store().read()
    assert after["leases"] == [claim.lease] and [entry["id"] for entry in after["instances"]] == [instance_id(2)]


def test_a_change_of_other_items_stands_beside_a_lease_taken_meanwhile(open_store):
    seed(open_store(), [pool_entry(1), pool_entry(2, ready=False)])
    with open_store().transaction() as tx:
        claim = open_store().claim_ready(set(), set(), HOUR, verify=False)
        tx.state["instances"][1] = pool_entry(2)  # the refill fills in the pending one
        tx.state["instances"].append(pool_entry(3, ready=False))
    after = open_store().read()
    assert after["leases"] == [claim.lease]
    assert after["instances"] == [pool_entry(2), pool_entry(3, ready=False)]


# -- the refill lease: expiry, takeover, fencing ------------------------------------------------------------------
def test_an_expired_refill_lease_is_taken_over_with_a_higher_fencing_number(open_store):
    clock = [1000.0]
    old, new = open_store(clock=lambda: clock[0], lease_seconds=60), open_store(clock=lambda: clock[0])
    seed(old, [pool_entry(1)])
    dead_job = old.refill_lock()
    assert dead_job.acquire(blocking=False)
    taker = new.refill_lock()
    assert not taker.acquire(blocking=False) and taker.is_held_elsewhere()
    clock[0] += 61  # the job died with its runner: nobody renewed
    assert not taker.is_held_elsewhere()
    assert taker.acquire(blocking=False) and taker.fencing == dead_job.fencing + 1
    with new.transaction() as tx:  # the new holder writes
        tx.state["target_size"] = 3
    assert new.read()["target_size"] == 3


def test_a_holder_that_lost_the_refill_lease_can_write_nothing(open_store, url, table):
    clock = [1000.0]
    old, new = open_store(clock=lambda: clock[0], lease_seconds=60), open_store(clock=lambda: clock[0])
    seed(old, [pool_entry(1)])
    lost = old.refill_lock()
    assert lost.acquire(blocking=False)
    clock[0] += 61
    assert new.refill_lock().acquire(blocking=False)
    before = items_of(url, table)
    with pytest.raises(RefillLeaseLost, match="taken over"):
        with old.transaction() as tx:
            tx.state["instances"].append(pool_entry(2))
    with pytest.raises(RefillLeaseLost):
        lost.renew()
    lost.release()  # releases nothing of the new holder's
    assert items_of(url, table) == before
    assert open_store(clock=lambda: clock[0]).refill_lock().is_held_elsewhere()


def test_a_renewed_refill_lease_is_not_taken_over(open_store):
    clock = [1000.0]
    job, other = open_store(clock=lambda: clock[0], lease_seconds=60), open_store(clock=lambda: clock[0])
    seed(job, [pool_entry(1)])
    lease = job.refill_lock()
    with pytest.raises(RefillLeaseLost, match="not held here"):
        lease.renew()  # before acquiring it: nothing to renew, nothing written
    assert lease.acquire(blocking=False)
    clock[0] = 1050.0
    lease.renew()
    clock[0] = 1100.0  # past the first expiry, before the renewed one
    assert not other.refill_lock().acquire(blocking=False)
    clock[0] = 1111.0
    assert other.refill_lock().acquire(blocking=False)


# -- a stop request: how another controller's terminate or init stops the job that holds the lease ------------------
def lease_item(url, table):
    [item] = [item for item in items_of(url, table) if item["item"]["S"] == "refill-lease"]
    return item


def test_a_stop_request_is_seen_at_the_holders_next_renew_without_taking_the_lease(open_store, url, table):
    clock = [1000.0]
    job, terminate = open_store(clock=lambda: clock[0], lease_seconds=60), open_store(clock=lambda: clock[0])
    seed(job, [pool_entry(1)])
    lease = job.refill_lock()
    assert lease.acquire(blocking=False)
    assert lease.renew() is None, "no request yet"
    before = lease_item(url, table)

    asker = terminate.refill_lock()
    calls = count_calls(terminate)
    asked = asker.request_stop()
    assert calls == ["GetItem", "UpdateItem"], "one read, one conditional write"
    assert asked["holder"] == before["holder"] and asked["fencing"] == before["fencing"], "the lease is not taken"
    assert asked["expires"] == before["expires"] and not asker.held
    assert asker.is_held_elsewhere() and not asker.acquire(blocking=False)
    assert asker.stop_report() == {"holder": lease.holder.rsplit(":", 1)[0], "until": 1060.0, "asked_at": 1000.0,
                                   "answered": False}

    clock[0] = 1010.0
    renewals = count_calls(job)
    request = lease.renew()
    assert renewals == ["UpdateItem"], "the request comes back with the renewal itself: no extra request"
    assert request == {"by": asker.holder.rsplit(":", 1)[0], "at": 1000.0}
    assert asker.stop_report()["answered"], "renewed after the request: the holder saw it"
    with job.transaction() as tx:  # the holder still holds the lease: its fenced writes stand
        tx.state["target_size"] = 2
    assert job.read()["target_size"] == 2

    lease.release()  # as the job does once stopped
    assert asker.acquire(blocking=False) and asker.fencing == 2, "the next fencing number"
    assert "stop" not in lease_item(url, table)


def test_a_new_acquisition_clears_an_old_stop_request(open_store, url, table):
    clock = [1000.0]
    dead, asker, new = (open_store(clock=lambda: clock[0], lease_seconds=60) for name in ("dead", "asker", "new"))
    seed(dead, [pool_entry(1)])
    assert dead.refill_lock().acquire(blocking=False)
    assert asker.refill_lock().request_stop() is not None
    assert "stop" in lease_item(url, table)
    clock[0] += 61  # nobody answered (the job died with its runner); the lease expired
    assert asker.refill_lock().stop_report() is None, "an expired lease is nobody's: nothing to wait for"
    job = new.refill_lock()
    assert job.acquire(blocking=False)
    assert "stop" not in lease_item(url, table)
    clock[0] += 30
    assert job.renew() is None, "a job started after the request is not stopped by it"


def test_a_stop_request_on_a_free_or_own_lease_writes_nothing(open_store, url, table):
    clock = [1000.0]
    store = open_store(clock=lambda: clock[0], lease_seconds=60)
    seed(store, [pool_entry(1)])
    lease = store.refill_lock()
    assert lease.acquire(blocking=False)
    before = items_of(url, table)
    assert lease.request_stop() is None, "our own lease"
    lease.release()
    assert open_store(clock=lambda: clock[0]).refill_lock().request_stop() is None, "a released lease"
    assert [item for item in items_of(url, table) if "stop" in item] == []
    assert len(items_of(url, table)) == len(before)


def test_the_first_stop_request_stands_and_a_renewed_holder_is_asked_on_what_it_holds_now(open_store, url, table):
    clock = [1000.0]
    job, first, second = (open_store(clock=lambda: clock[0], lease_seconds=60) for name in ("job", "first", "second"))
    seed(job, [pool_entry(1)])
    lease = job.refill_lock()
    assert lease.acquire(blocking=False)
    asked = first.refill_lock().request_stop()
    clock[0] = 1020.0
    again = second.refill_lock().request_stop()
    assert again["stop"] == asked["stop"], "asked already: the first request (its time and the expiry then) stands"
    assert lease.renew() == {"by": first.refill_lock().holder.rsplit(":", 1)[0], "at": 1000.0}


# -- the table ----------------------------------------------------------------------------------------------------
def test_ensure_table_creates_an_on_demand_table_with_the_pool_keys(url, store_client):
    name = new_table_name()
    client = dynamodb_client(url)
    try:
        table = DynamoStore(store_client(url), name, "p").ensure_table()
        assert table["TableStatus"] == "ACTIVE" and table["KeySchema"] == dynamo.KEY_SCHEMA
        described = client.describe_table(TableName=name)["Table"]
        assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        DynamoStore(store_client(url), name, "p").ensure_table(create=False)  # there now: checked, not made again
    finally:
        client.delete_table(TableName=name)


def test_a_missing_table_with_create_off_is_a_clear_error_and_nothing_is_made(url, tmp_path, store_client):
    name = new_table_name()
    client = dynamodb_client(url)
    store = DynamoStore(store_client(url), name, "p", str(tmp_path))
    with pytest.raises(PoolError, match="DynamoDB table %s does not exist, and create_table is off" % name):
        store.ensure_table(create=False)
    with pytest.raises(PoolError, match="DynamoDB table %s does not exist" % name):
        store.read()
    assert name not in client.list_tables()["TableNames"]


def test_a_table_of_another_key_schema_is_refused_by_name(url, store_client):
    name = new_table_name()
    client = dynamodb_client(url)
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    try:
        with pytest.raises(PoolError, match="DynamoDB table %s has another key schema \\(id HASH S\\)" % name):
            DynamoStore(store_client(url), name, "p").ensure_table()
        assert client.scan(TableName=name)["Count"] == 0
    finally:
        client.delete_table(TableName=name)


def proxied_store(store_client, fault_proxy, name, tmp_path, **options):
    return DynamoStore(store_client(fault_proxy.url), name, "p", str(tmp_path), retry_delay=0.01, **options)


def test_no_permission_names_the_table_and_the_permission(fault_proxy, tmp_path, store_client):
    name = new_table_name()
    store = proxied_store(store_client, fault_proxy, name, tmp_path)
    fault_proxy.fail("DescribeTable", "AccessDeniedException")
    with pytest.raises(PoolError, match="table %s: DescribeTable needs the IAM permission dynamodb:DescribeTable"
                       % name) as caught:
        store.ensure_table()
    assert caught.value.details["permission"] == "dynamodb:DescribeTable"
    assert fault_proxy.count("CreateTable") == 0 and fault_proxy.count("DescribeTable") == 1  # not retried
    fault_proxy.clear_rules()
    store.ensure_table()
    seed(store, [pool_entry(1)])
    fault_proxy.fail("UpdateItem", "AccessDeniedException")
    with pytest.raises(PoolError, match="dynamodb:UpdateItem"):
        store.claim_ready(set(), set(), HOUR, verify=False)
    assert store.read()["leases"] == []


def test_throttling_is_retried_and_a_lost_condition_is_not(fault_proxy, tmp_path, store_client):
    name = new_table_name()
    store = proxied_store(store_client, fault_proxy, name, tmp_path)
    store.ensure_table()
    seed(store, [pool_entry(1)])
    fault_proxy.clear_records()
    fault_proxy.fail("Query", "ProvisionedThroughputExceededException", times=2)
    fault_proxy.fail("UpdateItem", "ThrottlingException", times=1)
    claim = store.claim_ready(set(), set(), HOUR, verify=False)
    assert claim.lease["id"] == instance_id(1)
    throttled = "ProvisionedThroughputExceededException"
    assert [record.error_code for record in fault_proxy.records("Query")] == [throttled, throttled, None]
    assert [record.error_code for record in fault_proxy.records("UpdateItem")] == ["ThrottlingException", None]
    # A transaction that lost its condition is a conflict at once, never retried as a throttled call.
    fault_proxy.clear_records()
    with pytest.raises(StoreConflict):
        with store.transaction() as tx:
            proxied_store(store_client, fault_proxy, name, tmp_path).end_lease(claim.lease["id"], claim.lease["lease_id"])
            tx.state["leases"][0]["expires_at"] = "2999-01-01T00:00:00Z"
    assert fault_proxy.count("TransactWriteItems") == 1


def test_throttling_that_does_not_pass_is_retried_a_capped_number_of_times(fault_proxy, tmp_path, store_client):
    name = new_table_name()
    store = proxied_store(store_client, fault_proxy, name, tmp_path)
    store.ensure_table()
    seed(store, [pool_entry(1)])
    fault_proxy.clear_records()
    fault_proxy.fail("UpdateItem", "ThrottlingException")
    with pytest.raises(PoolError, match="ThrottlingException") as caught:
        store.claim_ready(set(), set(), HOUR, verify=False)
    assert caught.value.details["error_code"] == "ThrottlingException"
    assert fault_proxy.count("UpdateItem") == 4  # 4 attempts in all, as the EC2 calls
    fault_proxy.clear_rules()
    assert store.read()["leases"] == []


# -- what the store keeps and imports -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["boto3", "light"])
def test_no_credential_is_ever_written_to_the_table(url, table, tmp_path, kind):
    secret, key = "s3cr3t-" + uuid.uuid4().hex, "AKIA" + uuid.uuid4().hex[:16].upper()
    if kind == "light":
        client = DynamoDBClient({"region": REGION, "endpoint_url": url, "access_key": key, "secret_key": secret,
                                 "session_token": "token-" + secret})
    else:
        client = boto3.client("dynamodb", region_name=REGION, endpoint_url=url, aws_access_key_id=key,
                              aws_secret_access_key=secret, aws_session_token="token-" + secret,
                              config=Config(**BOTOCORE_CONFIG))
    store = seed(DynamoStore(client, table, "p", str(tmp_path)), [pool_entry(1), pool_entry(2)])
    store.claim_ready(set(), set(), HOUR, verify=False)
    assert store.refill_lock().acquire(blocking=False)
    text = json.dumps(items_of(url, table))
    assert "inst#" in text and "refill-lease" in text  # the check reads what was written
    assert secret not in text and key not in text


def test_the_store_imports_no_ec2_part_and_the_file_path_does_not_import_it():
    assert imports_of("stores.dynamodb") & {"_aws.ec2", "_aws.ec2query", "_aws.connection", "launcher", "refill"} == set()
    importers = sorted(name for name in pool_modules() if "stores.dynamodb" in imports_of(name))
    # The one place that opens a store from its spec (the modules, the inventory and the job all go through it):
    # inside the function that opens a DynamoDB store only, never at import time (test_wire.py runs the file path
    # and looks).
    assert importers == ["stores.opening"]
    text = (POOL / "stores" / "opening.py").read_text(encoding="utf-8")
    assert re.findall(r"^(\s*)from \.dynamodb import", text, re.M) == ["    "]


# -- the rest of transaction() and claim_ready() ------------------------------------------------------------------
def test_tx_delete_removes_the_pool_items_and_tx_discard_writes_nothing(open_store, url, table):
    store = seed(open_store(), [pool_entry(1), pool_entry(2)])
    store.claim_ready(set(), set(), HOUR, verify=False)
    lease = open_store().refill_lock()
    assert lease.acquire(blocking=False)
    before = items_of(url, table)
    with store.transaction() as tx:
        tx.state["target_size"] = 9
        tx.discard()
    assert items_of(url, table) == before
    with store.transaction() as tx:
        tx.delete()
    assert store.read() is None and not store.exists()
    assert [item["item"]["S"] for item in items_of(url, table)] == ["refill-lease"]  # its holder still runs


def test_a_dead_entry_leased_meanwhile_by_another_controller_is_not_deleted(open_store, url, table):
    """The caller says i-1 is dead, but between this claim's read and its delete another controller leased it
    (EC2 was wrong, or it is running again): the delete is conditioned on the entry still being idle."""
    store = seed(open_store(), [pool_entry(1), pool_entry(2, ready=False)])
    rival = open_store()

    def lease_first(params):
        if params["Key"]["item"]["S"] == "inst#" + instance_id(1) and not rival.read()["leases"]:
            assert rival.claim_ready(set(), set(), HOUR, verify=False).lease["id"] == instance_id(1)

    watch(store).before["DeleteItem"] = lease_first
    claim = store.claim_ready({instance_id(1)}, set(), HOUR, verify=False)
    assert claim.dropped == [instance_id(1)] and claim.lease is None
    after = open_store().read()
    assert [lease["id"] for lease in after["leases"]] == [instance_id(1)]
    assert [entry["id"] for entry in after["instances"]] == [instance_id(2)]


class CreatingTableClient:
    """A DynamoDB client stand-in: the table is missing, then being created (by us, or by another controller at
    the same moment), then ACTIVE; records the calls."""

    def __init__(self, in_use=False):
        self.calls = []
        self.in_use = in_use
        self.status = None

    @staticmethod
    def _error(code, operation):
        import botocore.exceptions  # pylint: disable=import-outside-toplevel
        return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": code}}, operation)

    def describe_table(self, TableName):  # noqa: N803 (boto3's name)  # pylint: disable=invalid-name
        self.calls.append("DescribeTable")
        if self.status is None:
            if self.in_use and "CreateTable" in self.calls:
                self.status = "CREATING"
            else:
                raise self._error("ResourceNotFoundException", "DescribeTable")
        description = {"TableName": TableName, "TableStatus": self.status, "KeySchema": dynamo.KEY_SCHEMA,
                       "AttributeDefinitions": [{"AttributeName": "pool", "AttributeType": "S"},
                                                {"AttributeName": "item", "AttributeType": "S"}]}
        self.status = "ACTIVE" if self.status == "CREATING" else self.status
        return {"Table": description}

    def create_table(self, TableName, **_params):  # noqa: N803  # pylint: disable=invalid-name
        self.calls.append("CreateTable")
        if self.in_use:
            raise self._error("ResourceInUseException", "CreateTable")
        self.status = "CREATING"
        return {"TableDescription": {"TableName": TableName, "TableStatus": "CREATING", "KeySchema": dynamo.KEY_SCHEMA,
                                     "AttributeDefinitions": [{"AttributeName": "pool", "AttributeType": "S"},
                                                              {"AttributeName": "item", "AttributeType": "S"}]}}


@pytest.mark.parametrize("in_use", [False, True], ids=["created-here", "created-by-another-controller"])
def test_ensure_table_waits_until_the_table_is_active(in_use):
    client = CreatingTableClient(in_use)
    assert DynamoStore(client, "ec2spot-pool", "p").ensure_table()["TableStatus"] == "ACTIVE"
    assert client.calls[:2] == ["DescribeTable", "CreateTable"] and client.calls[-1] == "DescribeTable"


@pytest.mark.parametrize("table, pool_name, message", [
    ("t", "p", "dynamodb_table 't' is not a DynamoDB table name"),
    ("pools/ci", "p", "dynamodb_table 'pools/ci' is not a DynamoDB table name"),
    ("ec2spot-pool", "", "pool_name '' is not valid"),
    ("ec2spot-pool", "ci\n", "pool_name 'ci\\\\n' is not valid"),
    ("ec2spot-pool", "-ci", "pool_name '-ci' is not valid"),
])
def test_a_bad_table_or_pool_name_is_refused_before_any_call(table, pool_name, message):
    client = CreatingTableClient()
    with pytest.raises(PoolError, match=message):
        DynamoStore(client, table, pool_name)
    assert client.calls == []


class CancellingClient:
    """The real client, but its next `times` TransactWriteItems are cancelled for `reason` (as DynamoDB cancels a
    transaction: TransactionCanceledException with one reason per item), which the fault proxy cannot shape."""

    def __init__(self, client, reason, times):
        self._client, self.reason, self.times, self.attempts = client, reason, times, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def transact_write_items(self, TransactItems):  # noqa: N803 (boto3's name)  # pylint: disable=invalid-name
        import botocore.exceptions  # pylint: disable=import-outside-toplevel
        self.attempts += 1
        if self.times:
            self.times -= 1
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                 "CancellationReasons": [{"Code": self.reason}] + [{"Code": "None"}] * (len(TransactItems) - 1)},
                "TransactWriteItems")
        return self._client.transact_write_items(TransactItems=TransactItems)


@pytest.mark.parametrize("reason", ["ThrottlingError", "TransactionConflict"])
def test_a_transaction_cancelled_for_a_passing_reason_is_tried_again(open_store, url, table, tmp_path, store_client, reason):
    seed(open_store(), [pool_entry(1)], target=1)
    client = CancellingClient(store_client(url), reason, times=2)
    store = DynamoStore(client, table, "p", str(tmp_path), retry_delay=0.01)
    with store.transaction() as tx:
        tx.state["target_size"] = 4
    assert client.attempts == 3 and open_store().read()["target_size"] == 4


@pytest.mark.parametrize("reason, error", [("ThrottlingError", PoolError), ("TransactionConflict", StoreConflict)])
def test_a_transaction_cancelled_every_time_gives_up_after_four_attempts(
        open_store, url, table, tmp_path, store_client, reason, error):
    seed(open_store(), [pool_entry(1)], target=1)
    client = CancellingClient(store_client(url), reason, times=100)
    store = DynamoStore(client, table, "p", str(tmp_path), retry_delay=0.01)
    with pytest.raises(error, match=reason if error is PoolError else "changed while"):
        with store.transaction() as tx:
            tx.state["target_size"] = 4
    assert client.attempts == 4 and open_store().read()["target_size"] == 1


def test_a_transaction_whose_condition_failed_is_not_tried_again(open_store, url, table, tmp_path, store_client):
    seed(open_store(), [pool_entry(1)], target=1)
    client = CancellingClient(store_client(url), "ConditionalCheckFailed", times=1)
    store = DynamoStore(client, table, "p", str(tmp_path), retry_delay=0.01)
    with pytest.raises(StoreConflict):
        with store.transaction() as tx:
            tx.state["target_size"] = 4
    assert client.attempts == 1


# -- items the store does not understand: damage, named, never read past or deleted; rebuild and terminate ----------
def put_over(url, table, key, **attributes):
    """Replace attributes of item `key` of pool p as a hand edit would (None removes one)."""
    client = dynamodb_client(url)
    item = client.get_item(TableName=table, Key={"pool": {"S": "p"}, "item": {"S": key}})["Item"]
    item.update(attributes)
    client.put_item(TableName=table, Item={name: value for name, value in item.items() if value is not None})


DAMAGES = {
    "a lease's status not understood": ("lease", {"status": {"S": "LEASED"}}, "status is"),
    "an instance item without rev": ("idle", {"rev": None}, "rev is missing"),
    "a pos of another type": ("idle", {"pos": {"S": "1"}}, "pos is"),
    "a body that is not JSON": ("idle", {"body": {"S": "{not json"}}, "body is not JSON"),
    "a pool item without version": ("pool", {"version": None}, "version is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_an_item_the_store_does_not_understand_is_refused_by_name_and_left_as_it_is(open_store, url, table, damage):
    which, attributes, words = DAMAGES[damage]
    store = seed(open_store(), [pool_entry(1), pool_entry(2), pool_entry(3)])
    lease = store.claim_ready(set(), set(), HOUR, verify=False).lease
    idle = store.read()["instances"][0]["id"]
    key = {"lease": "inst#" + lease["id"], "idle": "inst#" + idle, "pool": "pool"}[which]
    put_over(url, table, key, **attributes)
    before = items_of(url, table)

    def change(tx):
        tx.state["target_size"] = 9

    for refused in (store.read, lambda: change_pool(store, change), lambda: store.end_lease(lease["id"], "other"),
                    lambda: store.claim_ready(set(), set(), HOUR, verify=False)):
        with pytest.raises(DamagedPool) as err:
            refused()
        message = err.value.message
        assert "item %s" % key in message and words in message and table in message, message
        assert "rebuild: true" in message and err.value.details["items"] == [key]
    assert items_of(url, table) == before, "nothing changed, nothing deleted"


def test_items_of_another_tool_are_read_past_and_never_deleted(open_store, url, table):
    store = seed(open_store(), [pool_entry(1)])
    foreign = {"pool": {"S": "p"}, "item": {"S": "notes"}, "pos": {"S": "x"}, "text": {"S": "mine"}}
    dynamodb_client(url).put_item(TableName=table, Item=foreign)
    assert ids(store.read()["instances"]) == [instance_id(1)]
    assert store.claim_ready(set(), set(), HOUR, verify=False).lease["id"] == instance_id(1)
    warnings = store.delete()
    assert items_of(url, table) == [foreign]
    assert len(warnings) == 1 and "notes" in warnings[0] and table in warnings[0], warnings


def live_instances(ec2):
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:ec2spot:pool", "Values": ["p"]},
                 {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    return sorted(inst["InstanceId"] for page in pages for res in page["Reservations"] for inst in res["Instances"])


@pytest.mark.parametrize("key", ["notes", "inst#"])
def test_terminate_ends_the_instances_and_names_the_items_it_leaves(open_store, url, table, proxy_client, key):
    """Another tool's item (or a typo) without rev: terminate used to end the instances and then crash on it,
    leaving the pool's items, and every later terminate crashed the same way."""
    store = open_store()
    ops.init_pool(store, proxy_client, ops.InitRequest(2, dict(POOL_LAUNCH), wait_timeout=60))
    assert len(live_instances(proxy_client)) == 2
    if key == "inst#":
        key = "inst#" + store.read()["instances"][0]["id"]
        put_over(url, table, key, rev=None)
    else:
        dynamodb_client(url).put_item(TableName=table, Item={"pool": {"S": "p"}, "item": {"S": key}})
    left = [item for item in items_of(url, table) if item["item"]["S"] == key]
    for attempt in (1, 2):
        ended = ops.terminate_pool(open_store(), proxy_client)
        assert live_instances(proxy_client) == []
        warning = " ".join(ended["warnings"])
        assert key in warning and table in warning, (attempt, ended["warnings"])
        if key == "notes":
            assert items_of(url, table) == left, "the pool's own items deleted, the other tool's left"
        else:
            assert left[0] in items_of(url, table) and "rebuild: true" in warning


def test_a_rebuild_keeps_leases_and_never_hands_out_an_instance_whose_lease_item_is_damaged(
        open_store, url, table, proxy_client, tmp_path):
    store = open_store()
    ops.init_pool(store, proxy_client, ops.InitRequest(3, dict(POOL_LAUNCH), wait_timeout=60))
    kept = ops.get_instance(store, None, verify=False, refill=False)
    confused = ops.get_instance(store, None, verify=False, refill=False)
    idle = store.read()["instances"][0]["id"]
    put_over(url, table, "inst#" + confused["instance_id"], status={"S": "LEASED"})
    put_over(url, table, "inst#" + idle, body={"S": "{torn"})
    before = items_of(url, table)
    members = live_instances(proxy_client)

    rebuilt = ops.init_pool(open_store(), proxy_client,
                            ops.InitRequest(1, dict(POOL_LAUNCH), rebuild=True, wait_timeout=60))
    assert rebuilt["launched"] == [] and live_instances(proxy_client) == members
    state = open_store().read()
    leases = {lease["id"]: lease for lease in state["leases"]}
    assert sorted(leases) == sorted([kept["instance_id"], confused["instance_id"]])
    assert leases[kept["instance_id"]]["lease_id"] == kept["lease_id"], "an intact lease is kept as it was"
    assert leases[confused["instance_id"]]["lease_id"] == confused["lease_id"], "what of the body could be read"
    assert ids(state["instances"]) == [idle]
    with open(rebuilt["moved_aside"], encoding="utf-8") as handle:
        copy = json.load(handle)
    assert copy["items"] == [item for item in before if item["item"]["S"] != "refill-lease"]
    assert stat.S_IMODE(os.stat(rebuilt["moved_aside"]).st_mode) == 0o600
    handed = ops.get_instance(open_store(), None, verify=False, refill=False)
    assert handed["instance_id"] == idle
