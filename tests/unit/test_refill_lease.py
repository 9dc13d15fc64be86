"""The DynamoDB refill lease at the end of a pool and of a job, against the session's moto server, each
interleaving driven by hand (no timing): a terminated pool leaves no item behind, whichever of a terminate and a
get's refill job goes first (issue 17, item 12); a job that may not write the pool records why it stopped on its
lease, where info and get read it (item 13)."""

from __future__ import annotations

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import jobcontrol
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
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
