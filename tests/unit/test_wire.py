"""The DynamoDB store wired in: which store a module's options make (common.pool_store), the refill job's command
line (refill.parse_arguments / job_store), the lease the job keeps (LeaseKeeper: renewed with an injected clock,
lost -> the job stops and writes nothing more), change_pool's re-read on a conflict, init's rule for a pool another
init created meanwhile, the ClientToken recorded in the table before CreateFleet, and jobcontrol taking over an
expired lease."""

from __future__ import annotations

import contextlib
import json
import re
import os
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import common
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import dynamodb as dynamo
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import jobcontrol
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.defaults import DEFAULT_TABLE
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import RefillLeaseLost
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import StoreConflict
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import Transaction
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.pool import new_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import CONFLICT_ATTEMPTS
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import change_pool
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import PoolStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import RefillLease
from tests.support.moto import POOL_LAUNCH
from tests.unit.test_store import dynamodb_client

ROOT = Path(__file__).resolve().parents[2]


class Unused:
    """A client factory that must not be called: bad options are refused before any client is made."""

    calls = 0

    def __call__(self, *args):
        self.calls += 1
        raise AssertionError("no client may be made")


# -- which store the options make -----------------------------------------------------------------------------------
def test_the_file_store_is_the_default(tmp_path):
    store = common.pool_store({"pool_name": "p", "state_dir": str(tmp_path)}, Unused())
    assert isinstance(store, FileStore) and store.path == str(tmp_path / "p.json")


def test_store_dynamodb_opens_the_default_table_with_the_state_dir_for_the_jobs_files(tmp_path):
    client = object()
    store = common.pool_store({"pool_name": "p", "state_dir": str(tmp_path), "store": "dynamodb",
                               "dynamodb_table": None}, lambda: client, "eu-west-1")
    assert isinstance(store, DynamoStore) and store.client is client
    assert (store.table, store.pool_name, store.directory) == (DEFAULT_TABLE, "p", str(tmp_path))
    assert store.location == "dynamodb table ec2spot-pool, pool p"


@pytest.mark.parametrize("params, words", [
    ({"store": "dynamodb"}, ["region", "AWS_REGION", "module_defaults"]),
    ({"store": "dynamodb", "region": "us-east-1", "pool_file": "/x/p.json"}, ["pool_file", "store=dynamodb", "state_dir"]),
    ({"store": "dynamodb", "region": "us-east-1", "dynamodb_table": "no"}, ["dynamodb_table", "3-255"]),
])
def test_bad_store_options_are_refused_before_a_client_is_made(params, words):
    factory = Unused()
    with pytest.raises(InvalidRequest) as refused:
        common.pool_store(dict({"pool_name": "p"}, **params), factory)
    assert all(word in refused.value.message for word in words), refused.value.message
    assert factory.calls == 0


def test_get_without_a_region_is_refused_by_its_own_client_maker(monkeypatch, tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(InvalidRequest) as refused:
        common.pool_store({"pool_name": "p", "store": "dynamodb"})
    assert "region" in refused.value.message and "AWS_REGION" in refused.value.message


def test_the_file_path_loads_neither_the_dynamodb_store_nor_boto3(tmp_path):
    """get's hand-out path on the default store stays light: stores/dynamodb.py is imported only for store=dynamodb (the
    check would pass on a path that loaded nothing: the DynamoDB path must load it), and boto3 never (get's
    DynamoDB client is dynamoquery's, which loads no service model); with the environment's keys not even botocore
    (signing.py's fast path; test_signing.py has the calls and the fallback with a profile)."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.ec2spot.pool.plugins.module_utils._pool import common\n"
            "params = {'pool_name': 'p', 'state_dir': %r, 'store': sys.argv[1], 'region': 'us-east-1'}\n"
            "common.pool_store(params)\n"
            "print(sorted(m for m in ('boto3', 'botocore', %r) if m in sys.modules))\n"
            % (str(ROOT / "build" / "collections"), str(tmp_path), DynamoStore.__module__))
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")  # resolved, never sent
    loaded = {store: subprocess.run([sys.executable, "-c", code, store], capture_output=True, text=True, env=env,
                                    check=True).stdout.strip() for store in ("file", "dynamodb")}
    assert loaded == {"file": "[]", "dynamodb": str([DynamoStore.__module__])}


# -- the job's command line ---------------------------------------------------------------------------------------
def test_a_file_stores_job_arguments_open_the_same_store(tmp_path):
    store = FileStore(str(tmp_path / "p.json"), "p")
    opened = refill.job_store(refill.parse_arguments(store.spec.job_arguments()), Unused())
    assert isinstance(opened, FileStore) and (opened.path, opened.pool_name) == (store.path, "p")


def test_a_dynamodb_stores_job_arguments_open_the_same_table_pool_and_log(tmp_path):
    store = DynamoStore(object(), "my-table", "p", str(tmp_path / "state"))
    made = []

    def factory(service):
        made.append(service)
        return object()

    args = refill.parse_arguments(store.spec.job_arguments() + ["--max-seconds", "5"])
    opened = refill.job_store(args, factory)
    assert made == ["dynamodb"] and args.max_seconds == 5
    assert isinstance(opened, DynamoStore)
    assert (opened.table, opened.pool_name, opened.refill_log_path()) == ("my-table", "p", store.refill_log_path())


@pytest.mark.parametrize("argv", [
    ["--pool-name", "p"],  # no store
    ["--state-file", "/s/p.json", "--dynamodb-table", "t", "--pool-name", "p"],  # two
    ["--state-file", "/s/p.json", "--pool-name", "p", "--state-dir", "/s"],  # a state dir of a file store
    ["--dynamodb-table", "t"],  # no pool
])
def test_the_job_refuses_a_command_line_that_names_no_store_or_two(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        refill.parse_arguments(argv)
    assert stopped.value.code == 2 and "error" in capsys.readouterr().err


# -- the lease the job keeps --------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class FakeLease(RefillLease):
    def __init__(self, lost_at=None, stop_at=None):
        self.renewals = 0
        self.lost_at = lost_at  # the renewal that finds the lease taken (1: the first)
        self.stop_at = stop_at  # the renewal that returns a stop request (1: the first)
        self.held = False
        self.released = 0

    def acquire(self, blocking=True, timeout=None, create=True):
        self.held = True
        return True

    def release(self, exit_error=None, exit_code=None):
        self.released += 1
        self.held = False

    def renew(self):
        self.renewals += 1
        if self.lost_at is not None and self.renewals >= self.lost_at:
            raise RefillLeaseLost("the refill lease of the pool was taken over by another controller")
        if self.stop_at is not None and self.renewals >= self.stop_at:
            return {"by": "ctl-c:42", "at": 1000.0}
        return None


def test_the_keeper_renews_once_a_third_of_the_lease_has_passed():
    clock, lease = Clock(), FakeLease()
    keeper = refill.LeaseKeeper(lease, 100, clock)
    for step in (10, 50, 39.9):
        clock.now += step
        keeper.beat()
    assert lease.renewals == 0
    clock.now += 0.1
    keeper.beat()
    keeper.beat()  # at once again: nothing to do
    assert lease.renewals == 1
    clock.now += 100
    keeper.beat()
    assert lease.renewals == 2


def test_a_lease_that_never_expires_is_never_renewed(tmp_path):
    clock, lease = Clock(), FakeLease()
    keeper = refill.LeaseKeeper.of(FileStore(str(tmp_path / "p.json"), "p"), lease, clock)
    clock.now += 10 ** 6
    keeper.beat()
    assert lease.renewals == 0 and keeper.every is None
    dynamo = DynamoStore(object(), "table", "p", str(tmp_path), lease_seconds=300)
    assert refill.LeaseKeeper.of(dynamo, lease, clock).every == 100


def test_the_jobs_keeper_renews_every_few_seconds_and_hands_a_stop_request_on_once():
    clock, lease, asked = Clock(), FakeLease(stop_at=2), []
    keeper = refill.LeaseKeeper(lease, 100, clock, on_stop=asked.append, ask_every=refill.STOP_CHECK_SECONDS)
    clock.now += refill.STOP_CHECK_SECONDS - 0.1
    keeper.beat()
    assert lease.renewals == 0
    clock.now += 0.1
    keeper.beat()
    assert lease.renewals == 1 and asked == []
    clock.now += refill.STOP_CHECK_SECONDS
    keeper.beat()
    assert lease.renewals == 2 and asked == [{"by": "ctl-c:42", "at": 1000.0}], "seen at the next renewal"
    clock.now += refill.STOP_CHECK_SECONDS
    keeper.beat()
    assert lease.renewals == 3 and len(asked) == 1, "handed on once"
    keeper.taken()  # the lease taken again: a request then is a new one
    clock.now += refill.STOP_CHECK_SECONDS
    keeper.beat()
    assert len(asked) == 2


def test_a_keeper_without_a_stop_listener_renews_as_the_lease_needs(tmp_path):
    """init's and reconcile's keepers: no request is looked at, so no renewal more than the lease needs."""
    clock = Clock()
    dynamo_store = DynamoStore(object(), "table", "p", str(tmp_path), lease_seconds=300)
    assert refill.LeaseKeeper.of(dynamo_store, FakeLease(), clock).interval == 100
    assert refill.LeaseKeeper.of(dynamo_store, FakeLease(), clock, on_stop=print).interval == refill.STOP_CHECK_SECONDS
    assert refill.LeaseKeeper.of(FileStore(str(tmp_path / "p.json"), "p"), FakeLease(), clock,
                                 on_stop=print).interval is None, "a flock: nothing to renew, no request to see"


class FakeStore(PoolStore):
    """A pool in memory with a lease that expires (lease_seconds), counting the writes made."""

    pool_name = "p"
    location = "the fake table"
    lease_seconds = 300

    def __init__(self, lease, state):
        self.lease = lease
        self.state = state
        self.writes = []

    def refill_lock(self):
        return self.lease

    def refill_log_path(self):
        return "/nonexistent/p.refill.log"

    def read(self):
        return self.state

    @contextlib.contextmanager
    def transaction(self):
        tx = Transaction(dict(self.state))
        tx.state["refill"] = dict(tx.state["refill"])
        yield tx
        self.writes.append(tx.state["refill"])
        self.state = tx.state


def whole_pool():
    state = new_state("p", 0, dict(POOL_LAUNCH))
    return state


def run_job(monkeypatch, lease, pass_seconds, outcome=None):
    """A RefillJob over a FakeStore whose every reconcile pass takes `pass_seconds` (the injected clock), calls
    the heartbeat as the real pass does, and then returns a whole pool (or raises `outcome`)."""
    clock, store = Clock(), FakeStore(lease, whole_pool())
    events, passes = [], []

    def reconcile(store_, client, heartbeat=None):
        passes.append(len(store.writes))
        clock.now += pass_seconds
        heartbeat()
        if outcome is not None:
            raise outcome
        result = refill.ReconcileResult()
        result.counts = {"target": 0, "ready": 0, "pending": 0, "leased": 0, "spot": 0, "fallback": 0}
        return result

    monkeypatch.setattr(refill, "reconcile", reconcile)
    job = refill.RefillJob(store, None, lambda event, **fields: events.append(event), clock=clock)
    return job.run(), events, passes, store


def test_the_job_renews_its_lease_while_it_works(monkeypatch):
    lease = FakeLease()
    rc, events, passes, store = run_job(monkeypatch, lease, pass_seconds=150)
    assert rc == 0 and events[-1] == "finished" and passes == [1]
    assert lease.renewals == 1, "a pass longer than a third of the lease renews it"
    assert store.writes[-1]["finished_at"] and not lease.held


def test_a_job_that_lost_its_lease_stops_at_once_and_writes_nothing_more(monkeypatch):
    lease = FakeLease(lost_at=1)
    rc, events, passes, store = run_job(monkeypatch, lease, pass_seconds=150)
    assert rc == 0 and events == ["started", "lease_lost"]
    assert len(store.writes) == 1 and store.writes[0]["pid"], "only the start was recorded, before the loss"
    assert store.state["refill"]["last_error"] is None, "no error recorded over the new holder's work"
    assert lease.held and lease.released == 0, "the lease is the new holder's: not even released from here"


def test_a_fenced_write_refused_mid_pass_stops_the_job_the_same_way(monkeypatch):
    lease = FakeLease()
    lost = RefillLeaseLost("the refill lease of the pool was taken over by another controller (fencing number "
                           "above 1): nothing was written")
    rc, events, passes, store = run_job(monkeypatch, lease, pass_seconds=1, outcome=lost)
    assert rc == 0 and events == ["started", "lease_lost"] and len(store.writes) == 1


def test_a_job_asked_to_stop_finishes_its_pass_records_it_and_releases_the_lease(monkeypatch):
    """The stop request comes back with the renewal in the middle of a pass (a pool that cannot be made whole: no
    capacity): the pass ends as it would, the job records that it stopped and releases the lease, as on SIGTERM."""
    lease = FakeLease(stop_at=1)
    clock, store = Clock(), FakeStore(lease, whole_pool())
    events, passes = [], []

    def reconcile(store_, client, heartbeat=None):
        passes.append(clock.now)
        clock.now += refill.STOP_CHECK_SECONDS
        heartbeat()
        store.state = dict(store.state, step_recorded=True)  # what the rest of the pass records
        result = refill.ReconcileResult()
        result.counts = {"target": 1, "ready": 0, "pending": 0, "leased": 0, "spot": 0, "fallback": 0}
        return result

    monkeypatch.setattr(refill, "reconcile", reconcile)
    job = refill.RefillJob(store, None, lambda event, **fields: events.append(event), clock=clock)
    assert job.run() == 0
    assert events == ["started", "stop_requested", "reconciled", "stopped"] and len(passes) == 1
    assert store.state["step_recorded"] and store.state["refill"]["pid"] is None
    assert store.state["refill"]["finished_at"]
    assert not lease.held and lease.released == 1


# -- change_pool --------------------------------------------------------------------------------------------------
class ConflictingStore:
    def __init__(self, conflicts):
        self.conflicts = conflicts
        self.reads = 0
        self.written = []

    @contextlib.contextmanager
    def transaction(self):
        self.reads += 1
        tx = Transaction({"target_size": self.reads})
        yield tx
        if self.reads <= self.conflicts:
            raise StoreConflict("the pool changed while this change was made")
        self.written.append(tx.state)


def test_a_conflict_reads_again_and_applies_the_change_to_the_new_read():
    store = ConflictingStore(conflicts=2)
    seen = []

    def change(tx):
        seen.append(tx.state["target_size"])
        tx.state["changed"] = True
        return "done"

    assert change_pool(store, change) == "done"
    assert seen == [1, 2, 3] and store.written == [{"target_size": 3, "changed": True}]


def test_conflicts_without_end_are_raised_after_the_last_attempt():
    store = ConflictingStore(conflicts=100)
    with pytest.raises(StoreConflict):
        change_pool(store, lambda tx: None)
    assert store.reads == CONFLICT_ATTEMPTS and store.written == []


# -- init against another init --------------------------------------------------------------------------------------
def test_init_does_not_take_over_a_pool_another_init_created_meanwhile(tmp_path):
    store = FileStore(str(tmp_path / "p.json"), "p")
    theirs = dict(new_state("p", 3, dict(POOL_LAUNCH)), pool_id="1111111111111111")
    tx = Transaction(dict(theirs))
    with pytest.raises(PoolError) as refused:
        operations._apply_init(tx, store, None, 5, dict(POOL_LAUNCH), False, [], "2222222222222222")  # pylint: disable=protected-access
    assert "created by another spot_pool_init" in refused.value.message
    assert "size 3" in refused.value.message and "size 5" in refused.value.message
    assert tx.state == theirs
    # The pool it read itself is resized as asked (last one wins), keeping its id.
    tx = Transaction(dict(theirs))
    operations._apply_init(tx, store, theirs, 5, dict(POOL_LAUNCH), False, [], "1111111111111111")  # pylint: disable=protected-access
    assert tx.state["target_size"] == 5 and tx.state["pool_id"] == "1111111111111111"


# -- on the table: tokens before CreateFleet, an expired lease taken over ------------------------------------------
@pytest.fixture
def table_store(fault_proxy, tmp_path):
    """A maker of handles on pool `p` of a table of its own (through the fault proxy, which serialises DynamoDB
    requests as DynamoDB applies them atomically), each with its own client and clock."""
    table = "ec2spot-pool-" + uuid.uuid4().hex[:12]
    DynamoStore(dynamodb_client(fault_proxy.url), table, "p", str(tmp_path / "state")).ensure_table()

    def make(**options):
        return DynamoStore(dynamodb_client(fault_proxy.url), table, "p", str(tmp_path / "state"), **options)

    return make


def test_the_launch_token_is_in_the_table_before_create_fleet(table_store, proxy_client):
    from tests.unit.test_refill import pool_state  # pylint: disable=import-outside-toplevel

    store = table_store()
    with store.transaction() as tx:
        tx.state = pool_state(proxy_client, "p", 2, POOL_LAUNCH)
    recorded = []

    def look(params, **_kw):  # what another controller would read from the table at the moment of the call
        recorded.append((params["ClientToken"], [p["token"] for p in table_store().read()["pending_launches"]]))

    proxy_client.meta.events.register("before-parameter-build.ec2.CreateFleet", look)
    lease = store.refill_lock()
    assert lease.acquire(blocking=False)  # as the job does: every write fenced by the lease
    try:
        result = refill.reconcile(store, proxy_client, heartbeat=lease.renew)
    finally:
        lease.release()
    assert len(result.launched) == 2 and recorded
    assert all(token in pending for token, pending in recorded)
    assert store.read()["pending_launches"] == [], "settled once the answer is recorded"


def test_a_job_that_lost_its_lease_launches_nothing(table_store, proxy_client, fault_proxy):
    from tests.unit.test_refill import pool_state  # pylint: disable=import-outside-toplevel

    clock = Clock()
    store = table_store(clock=clock, lease_seconds=60)
    with store.transaction() as tx:
        tx.state = pool_state(proxy_client, "p", 2, POOL_LAUNCH)
    lease = store.refill_lock()
    assert lease.acquire(blocking=False)
    clock.now += 61  # expired; another controller takes it over
    assert table_store(clock=clock).refill_lock().acquire(blocking=False)
    fault_proxy.clear_records()
    with pytest.raises(RefillLeaseLost):
        refill.reconcile(store, proxy_client, heartbeat=lease.renew)
    assert fault_proxy.count("CreateFleet") == 0 and store.read()["instances"] == []


def test_start_refill_takes_over_a_lease_that_expired_elsewhere(table_store, monkeypatch):
    clock = Clock()
    with table_store().transaction() as tx:
        tx.state = new_state("p", 1, dict(POOL_LAUNCH))
    elsewhere = table_store(clock=clock, lease_seconds=60).refill_lock()
    assert elsewhere.acquire(blocking=False)  # a job on a runner that was torn down: it never renews
    started = []

    class Popen:  # pylint: disable=too-few-public-methods
        pid = 4242

        def __init__(self, argv, **_kwargs):
            started.append(argv)

    monkeypatch.setattr(jobcontrol.subprocess, "Popen", Popen)
    here = table_store(clock=clock)
    clock.now += 59
    assert jobcontrol.start_refill(here, {}) == (False, None), "still held: the job there carries on"
    clock.now += 2
    assert jobcontrol.start_refill(here, {}) == (True, 4242)
    assert started and started[0][-len(here.spec.job_arguments()):] == here.spec.job_arguments()
    # The job it starts takes the lease over (the next fencing number), and the old holder's writes are refused.
    job_lease = table_store(clock=clock).refill_lock()
    assert job_lease.acquire(blocking=False) and job_lease.fencing == elsewhere.fencing + 1


# -- the README's IAM policies are what the code calls ------------------------------------------------------------
def iam_blocks():
    """The README's two policy documents of "Sharing a pool across controllers": (file store, DynamoDB store)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("**IAM, least privilege.**"):text.index("### The worker on the instance")]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def actions(policy, prefix):
    found = set()
    for statement in policy["Statement"]:
        listed = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        found.update(action.split(":", 1)[1] for action in listed if action.startswith(prefix + ":"))
    return found


def test_the_readme_lists_the_dynamodb_actions_the_store_calls():
    text = (ROOT / "plugins" / "module_utils" / "_pool" / "stores" / "dynamodb.py").read_text(encoding="utf-8")
    calls = set(re.findall(r'_call\(\s*"(\w+)"', text))
    # TransactWriteItems is authorised per item by the action of each kind of write it carries.
    kinds = set(re.findall(r'\{"(Put|Update|Delete|ConditionCheck)": \{', text))
    assert "TransactWriteItems" in calls and kinds == {"Put", "Update", "Delete", "ConditionCheck"}
    needed = (calls - {"TransactWriteItems"}) | {kind + "Item" for kind in kinds}
    file_policy, dynamodb_policy = iam_blocks()
    assert actions(dynamodb_policy, "dynamodb") == needed
    assert actions(file_policy, "dynamodb") == set()
    table_statement = next(s for s in dynamodb_policy["Statement"] if "dynamodb:Query" in s["Action"])
    assert table_statement["Resource"] == "arn:aws:dynamodb:<region>:<account>:table/<table>"


def test_the_readme_lists_the_ec2_actions_the_code_calls():
    package = ROOT / "plugins" / "module_utils" / "_pool"
    text = "".join((package / name).read_text(encoding="utf-8")
                   for name in ("_aws/ec2.py", "launcher.py", "_aws/ec2query.py"))
    methods = set(re.findall(r"\bclient\.(\w+)\(", text)) | set(re.findall(r'get_paginator\("(\w+)"\)', text))
    methods -= {"get_paginator"}
    needed = {"".join(part.capitalize() for part in method.split("_")) for method in methods}
    needed |= set(re.findall(r'\("Action", "(\w+)"\)', text))  # get's signed request
    needed.add("RunInstances")  # an instant fleet launches with the caller's ec2:RunInstances permission
    file_policy, dynamodb_policy = iam_blocks()
    assert actions(file_policy, "ec2") == needed == actions(dynamodb_policy, "ec2")


def test_a_conflict_in_settle_reads_again_and_settles_the_pass_once(table_store, proxy_client, fault_proxy):
    """Another controller writes the pool item between this pass's read and its settle: the settle's transaction
    is refused whole (StoreConflict), read again and applied again (settle is pure); nothing is launched twice."""
    from tests.unit.test_refill import pool_state  # pylint: disable=import-outside-toplevel

    store = table_store()
    with store.transaction() as tx:
        tx.state = pool_state(proxy_client, "p", 2, POOL_LAUNCH)
    rival = dynamodb_client(fault_proxy.url)
    transactions = []

    def interfere(**_kw):
        transactions.append(len(transactions) + 1)
        if len(transactions) == 2:  # the first records the launch token; the second is the settle
            rival.update_item(TableName=store.table, Key={"pool": {"S": "p"}, "item": {"S": "pool"}},
                              UpdateExpression="SET #v = #v + :one", ExpressionAttributeNames={"#v": "version"},
                              ExpressionAttributeValues={":one": {"N": "1"}})

    store.client.meta.events.register("before-call.dynamodb.TransactWriteItems", interfere)
    fault_proxy.clear_records()
    lease = store.refill_lock()
    assert lease.acquire(blocking=False)
    try:
        result = refill.reconcile(store, proxy_client, heartbeat=lease.renew)
    finally:
        lease.release()
    assert transactions == [1, 2, 3], "the refused settle, then the same settle on a fresh read"
    assert fault_proxy.count("CreateFleet") == 1 and len(result.launched) == 2
    state = store.read()
    assert sorted(entry["id"] for entry in state["instances"]) == sorted(result.launched)
    assert state["pending_launches"] == []


def test_stop_refill_names_the_other_controller_that_holds_the_lease(table_store, monkeypatch):
    clock = Clock()
    # The lease's waits (acquire with a timeout) pass on a monotonic clock that each pause moves on: no real sleep.
    waited = Clock(0.0)
    monkeypatch.setattr(dynamo, "time", types.SimpleNamespace(
        monotonic=waited, sleep=lambda seconds: setattr(waited, "now", waited.now + seconds),
        strftime=time.strftime, gmtime=time.gmtime))
    with table_store().transaction() as tx:
        tx.state = new_state("p", 1, dict(POOL_LAUNCH))
    elsewhere = table_store(clock=clock).refill_lock()
    assert elsewhere.acquire(blocking=False)
    with pytest.raises(PoolError) as refused:
        jobcontrol.stop_refill(table_store(clock=clock), timeout=0.0)
    host = elsewhere.holder.rsplit(":", 1)[0]
    assert "is held by %s until 1970-01-01T00:21:40Z" % host in refused.value.message
    assert "lease expires by itself" in refused.value.message and elsewhere.holder not in refused.value.message
    assert 5.0 <= waited.now <= 7.0, "it waited for the job as for a local one (20 s asked, 0 here, then 5 s)"


def waits_without_sleeping(monkeypatch, during_pause=None):
    """dynamo's waits (acquire with a timeout) on a monotonic clock that each pause moves on: no real sleep.
    `during_pause` runs at each pause (what another controller does meanwhile). Returns that clock."""
    waited = Clock(0.0)

    def sleep(seconds):
        waited.now += seconds
        if during_pause is not None:
            during_pause()
    monkeypatch.setattr(dynamo, "time", types.SimpleNamespace(monotonic=waited, sleep=sleep,
                                                              strftime=time.strftime, gmtime=time.gmtime))
    return waited


def test_stop_refill_stops_a_job_on_another_controller_through_a_stop_request(table_store, monkeypatch):
    """terminate/init on this controller; the job on another one, where no signal reaches: the job sees the request
    at its next renewal (the keeper's), stops and releases the lease; stop_refill then holds it, request cleared."""
    clock = Clock()
    with table_store().transaction() as tx:
        tx.state = new_state("p", 1, dict(POOL_LAUNCH))
    elsewhere = table_store(clock=clock).refill_lock()
    assert elsewhere.acquire(blocking=False)
    seen = []
    keeper = refill.LeaseKeeper(elsewhere, 100, clock, on_stop=seen.append, ask_every=refill.STOP_CHECK_SECONDS)

    def job_works():  # the job on the other controller, one second of its work per pause of ours
        clock.now += 1
        keeper.beat()
        if seen and elsewhere.held:
            elsewhere.release()  # done as on SIGTERM
    waited = waits_without_sleeping(monkeypatch, job_works)
    here = table_store(clock=clock)
    lock = jobcontrol.stop_refill(here, timeout=20.0)
    try:
        assert lock.held and lock.fencing == 2, "taken after the job released it (the next fencing number)"
        assert len(seen) == 1 and waited.now <= refill.STOP_CHECK_SECONDS + 1, "seen at the job's next renewal"
        item = here.client.get_item(TableName=here.table, Key=here._key(dynamo.LEASE_ITEM), ConsistentRead=True)
        assert "stop" not in item["Item"], "taking the lease cleared the request: the next job is not stopped by it"
    finally:
        lock.release()


@pytest.mark.parametrize("holder", ["dead", "busy"])
def test_stop_refill_fails_clearly_when_the_other_controller_does_not_stop(table_store, monkeypatch, holder):
    """`dead`: the holder never renews (its runner was torn down): stop_refill does not wait out the lease (300 s)
    nor override it (a launch of that job may be in flight): it fails after its 20 + 5 s, saying when the lease
    expires. `busy`: the holder renews but does not stop (an init's or reconcile's wait): try again later."""
    clock = Clock()
    with table_store().transaction() as tx:
        tx.state = new_state("p", 1, dict(POOL_LAUNCH))
    elsewhere = table_store(clock=clock).refill_lock()
    assert elsewhere.acquire(blocking=False)

    def meanwhile():
        clock.now += 1
        if holder == "busy":
            elsewhere.renew()
    waited = waits_without_sleeping(monkeypatch, meanwhile)
    before = table_store().read()
    with pytest.raises(PoolError) as refused:
        jobcontrol.stop_refill(table_store(clock=clock), timeout=20.0)
    message = refused.value.message
    assert "is held by %s until" % elsewhere.holder.rsplit(":", 1)[0] in message
    assert "asked to stop at 1970-01-01T00:16:40Z" in message and "nothing was changed" in message
    if holder == "dead":
        assert "has not renewed its lease since" in message and "expires by itself, at 1970-01-01T00:21:40Z" in message
        assert refused.value.details["stop_answered"] is False
    else:
        assert "has renewed its lease since" in message and "try again in a minute" in message
    assert 25.0 <= waited.now <= 27.0, "bounded as for a local job: 20 s, then 5 s"
    assert elsewhere.held and table_store().read() == before, "the lease and the pool are as they were"


def test_the_job_on_a_table_without_a_region_says_why_and_ends(monkeypatch, tmp_path, capsys):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    argv = DynamoStore(object(), "my-table", "p", str(tmp_path)).spec.job_arguments()
    assert refill.main(argv) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["event"] == "failed" and "could not start" in record["message"]
    assert "region" in record["message"].lower()
    assert list(tmp_path.iterdir()) == [], "no store was opened: nothing written"


def test_store_dynamodb_without_credentials_fails_before_any_call(tmp_path):
    """get's light client resolves its credentials when it is made: none found is a clear error, and no request
    is sent (the instance metadata service is switched off, so nothing outside loopback is asked)."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.ec2spot.pool.plugins.module_utils._pool import common\n"
            "from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError\n"
            "params = {'pool_name': 'p', 'state_dir': %r, 'store': 'dynamodb', 'region': 'us-east-1',\n"
            "          'endpoint_url': 'http://127.0.0.1:9'}\n"
            "try:\n    common.pool_store(params)\nexcept PoolError as e:\n    print(e.message)\n"
            % (str(ROOT / "build" / "collections"), str(tmp_path)))
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.startswith("store=dynamodb found no AWS credentials"), proc.stdout + proc.stderr
