"""What the self-healing tests (test_pool_heals.py, test_pool_crash.py, test_pool_sweep.py) check again and again:
the pool file against EC2, the refill job's process, and the fleet requests the fault proxy saw.

Not a test module: pytest does not collect it. The fixtures themselves come from tests/integration/conftest.py.
"""

from __future__ import annotations

import datetime
import os
import signal

from tests.integration.conftest import TYPE_TAG, tags_of, wait_until

RELEASED_TAG = "ec2spot:released-at"  # a fallback stopped on purpose (fallback_action=stop)
LIVE = ("pending", "running", "stopping", "stopped", "shutting-down")


def epoch(stamp: str) -> float:
    """A time of the pool file (second precision, UTC) as seconds since the epoch, comparable to record.started."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def fleets(proxy, market: str | None = None, since: float | None = None, token: str | None = None,
           answered: bool = False) -> list:
    """CreateFleet requests (optionally of one market: the request's DefaultTargetCapacityType; with `answered`,
    only those the proxy has finished, so that their instance ids and errors are filled in)."""
    params = {}
    if market:
        params["TargetCapacitySpecification.DefaultTargetCapacityType"] = market
    if token:
        params["ClientToken"] = token
    return [r for r in proxy.records("CreateFleet", params=params)
            if (since is None or r.started >= since) and (r.done or not answered)]


def instance_ids_in(records) -> list[str]:
    """The instance ids a StopInstances / TerminateInstances / CreateTags request named."""
    return [value for r in records for key, value in sorted(r.params.items())
            if key.startswith(("InstanceId.", "ResourceId."))]


def launched_by_proxy(proxy, since: float | None = None) -> list[str]:
    """Instance ids that really were launched (fleet answers the proxy computed; a replayed answer launches none)."""
    return [i for r in proxy.records("CreateFleet", outcome="fleet") if since is None or r.started >= since
            for i in r.instance_ids]


def refill_running(pool) -> bool:
    state = pool.state()
    pid = (state or {}).get("refill", {}).get("pid")
    return bool(pid) and pid in pool.refill_pids()


def wait_refill_done(pool, timeout: float = 40.0) -> dict:
    """Until no refill process of this pool is left; returns the pool file then."""
    wait_until(lambda: not pool.refill_pids(), timeout=timeout, what="the refill job finished")
    return pool.state()


def wait_whole(pool, timeout: float = 40.0, **expected) -> dict:
    """Until the pool file says the pool is whole (every slot ready) and matches `expected` counts."""
    def whole():
        state = pool.state()
        if state is None:
            return None
        ready = [e for e in state["instances"] if e.get("ip")]
        if len(ready) != len(state["instances"]) or len(ready) < state["target_size"]:
            return None
        kinds = {kind: sum(e["type"] == kind for e in ready) for kind in ("spot", "fallback")}
        return state if all(kinds[k] == v for k, v in expected.items()) else None
    return wait_until(whole, timeout=timeout, interval=0.3, what=f"pool whole with {expected or 'any mix'}")


def kill_refill_job(pool) -> int:
    """SIGKILL the pool's detached refill job: the pid it recorded, cross-checked against the live processes."""
    pid = wait_until(lambda: refill_running(pool) and pool.state()["refill"]["pid"], timeout=15,
                     what="a running refill job")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pid not in pool.refill_pids(), timeout=5, what=f"refill job {pid} gone")
    return pid


def assert_consistent(pool, whole: bool = True) -> dict:
    """The pool file and EC2 agree: no id twice, every live instance with the pool tag is in the pool or leased
    (or a fallback stopped and kept on purpose: tagged ec2spot:released-at), every pool entry is a live instance,
    no fleet request is left pending; with `whole`, every slot is ready."""
    state = pool.state()
    entries = [e["id"] for e in state["instances"]]
    leases = [lease["id"] for lease in state["leases"]]
    assert len(set(entries + leases)) == len(entries) + len(leases), f"an id twice: {entries} {leases}"
    tagged = {inst["InstanceId"]: inst for inst in pool.tagged_instances(states=LIVE)}
    kept = {i for i, inst in tagged.items() if inst["State"]["Name"] in ("stopping", "stopped")
            and RELEASED_TAG in tags_of(inst) and tags_of(inst).get(TYPE_TAG) == "fallback"}
    known = set(entries) | set(leases)
    assert set(tagged) - kept == known, (
        f"EC2 and the pool file disagree: only in EC2 {sorted(set(tagged) - kept - known)}, "
        f"only in the file {sorted(known - set(tagged))}")
    assert all(tagged[i]["State"]["Name"] in ("pending", "running") for i in known), \
        {i: tagged[i]["State"]["Name"] for i in known}
    assert state.get("pending_launches", []) == [], state.get("pending_launches")
    if whole:
        assert len(entries) == state["target_size"] and all(e.get("ip") for e in state["instances"]), state
    return state
