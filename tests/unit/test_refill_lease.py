"""The DynamoDB refill lease at the end of a pool and of a job, against the session's moto server, each
interleaving driven by hand (no timing): a terminated pool leaves no item behind, whichever of a terminate and a
get's refill job goes first (issue 17, item 12); a job that may not write the pool records why it stopped on its
lease, where info and get read it (item 13)."""

from __future__ import annotations

import os

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import jobcontrol
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import exit_of
from tests.support.pool_entries import pool_entry
from tests.unit.test_dynamo import items_of
from tests.unit.test_dynamo import open_store  # noqa: F401 pylint: disable=unused-import
from tests.unit.test_dynamo import store_client  # noqa: F401 pylint: disable=unused-import
from tests.unit.test_dynamo import table  # noqa: F401 pylint: disable=unused-import
from tests.unit.test_dynamo import url  # noqa: F401 pylint: disable=unused-import
from tests.unit.test_store import seed


def run_job(store):
    """A get's refill job, run to its end in this process: (exit status, its log events)."""
    events = []
    status = refill.RefillJob(store, None, lambda event, **fields: events.append(event)).run()
    return status, events


def test_a_job_started_after_a_terminate_leaves_no_lease_item(open_store, url, table):
    """Issue 17 item 12: the get's job takes the lease after the terminate deleted every item; it finds no pool,
    and its release used to leave the lease item it had just made."""
    terminate, job = open_store(), open_store()
    seed(terminate, [pool_entry(1)])
    terminate.delete(jobcontrol.stop_refill(terminate))
    assert items_of(url, table) == []
    assert run_job(job) == (0, ["started", "pool_gone"])
    assert items_of(url, table) == [], "nothing of a terminated pool stays in the table"


def test_a_job_that_ends_before_a_terminate_leaves_no_lease_item_either(open_store, url, table):
    """The other order: the job holds the lease first; the terminate takes it once the job released it (or, the
    job gone silent, once it expired) and removes it with the pool; the late job's release makes nothing again."""
    clock = [1000.0]
    job, terminate = open_store(clock=lambda: clock[0], lease_seconds=60), open_store(clock=lambda: clock[0])
    seed(job, [pool_entry(1)])
    lease = job.refill_lock()
    assert lease.acquire(blocking=False)
    assert not terminate.refill_lock().acquire(blocking=False), "held by the job"
    clock[0] += 61  # the job went silent; its lease expired
    terminate.delete(jobcontrol.stop_refill(terminate))
    lease.release()  # the job wakes up and ends
    assert items_of(url, table) == []
    # A job released cleanly, then a terminate: the same.
    seed(job, [pool_entry(1)])
    lease = job.refill_lock()
    assert lease.acquire(blocking=False)
    lease.release()
    terminate.delete(jobcontrol.stop_refill(terminate))
    assert items_of(url, table) == []


def test_a_release_keeps_the_lease_item_of_a_pool_that_exists(open_store, url, table):
    store = seed(open_store(), [pool_entry(1)])
    lease = store.refill_lock()
    assert lease.acquire(blocking=False)
    fencing = lease.fencing
    lease.release()
    [item] = [item for item in items_of(url, table) if item["item"]["S"] == "refill-lease"]
    assert item["fencing"]["N"] == str(fencing) and "holder" not in item, "kept: fencing numbers only grow"


# -- how the last holder's run ended (item 13): pure rules -----------------------------------------------------------
def lease(**attributes):
    item = {"pool": {"S": "p"}, "item": {"S": "refill-lease"}, "fencing": {"N": "3"}, "expires": {"N": "0"},
            "log": {"S": "/state/dynamodb-t-p.refill.log"}}
    item.update(attributes)
    return item


HELD = {"holder": {"S": "ctl-a:4242:0123abcd"}, "expires": {"N": "1300"}}
DENIED = {"exit": {"M": {"by": {"S": "ctl-a:4242"}, "at": {"N": "1100"}, "error": {"S": "not allowed"},
                         "code": {"S": "AccessDeniedException"}, "log": {"S": "/state/x.log"}}}}


def test_exit_of_a_live_holder_a_clean_release_or_no_item_is_nothing():
    def alive(pid):
        return True
    assert exit_of(None, 1000, "ctl-a", alive) is None
    assert exit_of(lease(**HELD), 1000, "ctl-a", alive) is None, "held, renewed, its process runs"
    assert exit_of(lease(**HELD), 1000, "ctl-b", lambda pid: False) is None, "another host's: its expiry decides"
    clean = {"exit": {"M": {"by": {"S": "ctl-a:4242"}, "at": {"N": "1100"}}}}
    assert exit_of(lease(**clean), 1000, "ctl-a", alive) is None


def test_exit_of_a_dead_holder_or_a_release_with_an_error():
    dead = {"by": "ctl-a:4242", "at": 1300.0, "log": "/state/dynamodb-t-p.refill.log", "error": None,
            "error_code": None, "released": False}
    assert exit_of(lease(**HELD), 1300, "ctl-b", lambda pid: True) == dead, "expired unrenewed"
    assert exit_of(lease(**HELD), 1000, "ctl-a", {4242: False}.get) == dead, "this host's holder is gone"
    assert exit_of(lease(**DENIED), 1000, "ctl-b", lambda pid: True) == {
        "by": "ctl-a:4242", "at": 1100.0, "log": "/state/x.log", "error": "not allowed",
        "error_code": "AccessDeniedException", "released": True}


def test_exit_note_names_the_host_the_pid_the_reason_and_the_log():
    assert jobcontrol.exit_note(None) is None
    denied = {"by": "ctl-a:4242", "at": 1100.0, "log": "/state/x.log", "error": "not allowed",
              "error_code": "AccessDeniedException", "released": True}
    assert jobcontrol.exit_note(denied) == ("the refill job (pid 4242 on ctl-a) stopped and could not record why "
                                            "in the pool: not allowed; see its log /state/x.log on ctl-a")
    killed = dict(denied, error=None, released=False)
    assert jobcontrol.exit_note(killed).startswith("the refill job (pid 4242 on ctl-a) ended without recording why")
    assert jobcontrol.exit_note(dict(killed, log=None)).endswith("see its log (unknown) on ctl-a")
    assert jobcontrol.refill_fix("AccessDeniedException", "log").startswith("give the credentials")


def test_info_reports_an_end_the_job_could_only_record_on_its_lease(open_store, url, table):
    store = seed(open_store(), [pool_entry(1)])
    job = refill.RefillJob(store, None, lambda event, **fields: None)
    assert job.lock.acquire(blocking=False)
    job.unrecorded = ("not allowed to use DynamoDB table", "AccessDeniedException")
    job.release()
    status = jobcontrol.refill_status(open_store(), store.read())
    assert status["running"] is False and status["will_restart"] is False
    assert status["last_error"].startswith("the refill job (pid %d on " % os.getpid())
    assert "not allowed to use DynamoDB table; see its log %s" % store.refill_log_path() in status["last_error"]
    assert status["last_error_code"] == "AccessDeniedException" and status["fix"].startswith("give the credentials")
    # The next job that ends cleanly clears it: the lease says how the last run ended.
    assert job.lock.acquire(blocking=False)
    job.unrecorded = None
    job.release()
    assert jobcontrol.refill_status(open_store(), store.read())["last_error"] is None
