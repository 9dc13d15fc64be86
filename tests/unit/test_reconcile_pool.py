"""operations.reconcile_pool's own decisions, with a fake store, a fake pass and an injected clock: when it runs a pass,
when it leaves the work to the refill job, how long it waits, and that it never leaves a lock behind for a pool that
is gone. The pass itself (refill.reconcile) is tested in test_refill.py, and through Ansible in
tests/integration/test_pool_reconcile.py."""

from __future__ import annotations

import contextlib

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import PoolStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.base import RefillLease


class FakeLock(RefillLease):
    """A refill lock that another process (the job) holds for the first `held_for` acquire attempts."""

    def __init__(self, held_for=0):
        self.held_for = held_for
        self.calls = []
        self.held = False
        self.removed = False

    def acquire(self, blocking=True, timeout=None, create=True):
        self.calls.append({"blocking": blocking, "timeout": timeout})
        if self.held_for:
            self.held_for -= 1
            return False
        self.held = True
        return True

    def release(self, exit_error=None, exit_code=None):
        self.held = False

    def renew(self):
        assert self.held, "only a held lease is renewed"

    def remove(self):
        self.removed = True
        self.release()

    def is_held_elsewhere(self):
        return self.held_for > 0


class FakeStore(PoolStore):
    pool_name = "ci"
    location = "/state/ci.json"

    def __init__(self, states, lock):
        self.states = list(states)  # what read() answers, in turn (the last one for ever after)
        self.lock = lock

    def read(self):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def refill_lock(self):
        return self.lock

    def refill_log_path(self):
        return "/state/ci.json.refill.log"

    @contextlib.contextmanager
    def transaction(self):
        yield type("Tx", (), {"state": self.states[0]})()


def pool_state(ready, target=2):
    return {"pool_name": "ci", "pool_id": "3f9c0a7b5e21d864", "target_size": target, "leases": [], "refill": {},
            "launch": {}, "instances": [{"id": "i-%d" % n, "ip": "203.0.113.%d" % n, "type": "spot"}
                                        for n in range(ready)]}


class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def passes_giving(monkeypatch, *ready_counts, target=2):
    """refill.reconcile replaced by passes that leave `ready_counts` ready instances, in turn."""
    made = []

    def fake_reconcile(store, client, heartbeat=None):
        assert store.lock.held, "a pass runs under the refill lock"
        heartbeat()  # the pass keeps the refill lease (a flock-like lease here: nothing to renew)
        result = refill.ReconcileResult()
        result.counts = {"target": target, "ready": ready_counts[len(made)], "pending": 0, "leased": 0, "spot": 0,
                         "fallback": 0}
        result.launched = ["i-new%d" % len(made)]
        made.append(result)
        return result

    monkeypatch.setattr(refill, "reconcile", fake_reconcile)
    return made


def test_without_wait_a_running_refill_job_is_left_to_its_work(monkeypatch):
    made = passes_giving(monkeypatch, 2)
    lock = FakeLock(held_for=1)
    result = operations.reconcile_pool(FakeStore([pool_state(1)], lock), None)
    assert made == [] and lock.calls == [{"blocking": False, "timeout": None}]
    assert result["refill_running"] is True and result["changed"] is False and result["passes"] == 0
    assert operations.REFILL_RUNNING in result["msg"] and result["launched"] == []


def test_with_wait_it_waits_for_the_job_then_runs_its_pass(monkeypatch):
    made = passes_giving(monkeypatch, 2)
    lock, clock = FakeLock(held_for=1), Clock()
    result = operations.reconcile_pool(FakeStore([pool_state(1)], lock), None, wait=True, wait_timeout=30,
                                       sleep=clock.sleep, clock=clock)
    assert lock.calls == [{"blocking": False, "timeout": None}, {"blocking": True, "timeout": 30.0}]
    assert len(made) == 1 and result["passes"] == 1 and result["launched"] == ["i-new0"] and result["changed"]
    assert not lock.held, "let go after the pass"


def test_with_wait_a_job_that_keeps_the_lock_fails_after_wait_timeout(monkeypatch):
    made = passes_giving(monkeypatch, 2)
    lock = FakeLock(held_for=2)
    with pytest.raises(PoolError) as failed:
        operations.reconcile_pool(FakeStore([pool_state(1)], lock), None, wait=True, wait_timeout=5,
                                  sleep=Clock().sleep, clock=Clock())
    assert "refill job still held" in failed.value.message and "wait_timeout=5s" in failed.value.message
    assert failed.value.details["refill_running"] is True and made == []


def test_wait_repeats_the_pass_a_second_apart_and_lets_the_lock_go_between(monkeypatch):
    made = passes_giving(monkeypatch, 1, 1, 2)
    lock, clock = FakeLock(), Clock()
    result = operations.reconcile_pool(FakeStore([pool_state(1)], lock), None, wait=True, wait_timeout=30,
                                       sleep=clock.sleep, clock=clock)
    assert len(made) == 3 and result["passes"] == 3 and clock.slept == [1.0, 1.0]
    assert len(lock.calls) == 3 and not lock.held
    assert result["launched"] == ["i-new0", "i-new1", "i-new2"], "what every pass did, summed"


def test_without_wait_one_pass_however_far_from_whole(monkeypatch):
    made = passes_giving(monkeypatch, 0)
    result = operations.reconcile_pool(FakeStore([pool_state(0)], FakeLock()), None, sleep=Clock().sleep)
    assert len(made) == 1 and result["passes"] == 1 and result["whole"] is False


def test_wait_fails_once_wait_timeout_is_over_keeping_what_was_done(monkeypatch):
    made = passes_giving(monkeypatch, 0, 0, 0, 0)
    clock = Clock()
    with pytest.raises(PoolError) as failed:
        operations.reconcile_pool(FakeStore([pool_state(0)], FakeLock()), None, wait=True, wait_timeout=2,
                                  sleep=clock.sleep, clock=clock)
    assert "has 0 ready of 2 after wait_timeout=2s" in failed.value.message
    assert len(made) == 3 and failed.value.details["launched"] == ["i-new0", "i-new1", "i-new2"]


def test_a_pool_that_does_not_exist_is_refused_before_any_lock(monkeypatch):
    made = passes_giving(monkeypatch, 2)
    lock = FakeLock()
    with pytest.raises(InvalidRequest) as refused:
        operations.reconcile_pool(FakeStore([None], lock), None)
    assert "pool 'ci' does not exist (no state file /state/ci.json)" in refused.value.message
    assert "spot_pool_init" in refused.value.message and lock.calls == [] and made == []


def test_a_pool_terminated_before_the_lock_was_taken_leaves_no_lock_behind(monkeypatch):
    made = passes_giving(monkeypatch, 2)
    lock = FakeLock()
    with pytest.raises(refill.PoolGone):
        operations.reconcile_pool(FakeStore([pool_state(1), None], lock), None)
    assert lock.removed and made == []


def test_a_negative_wait_timeout_is_refused():
    with pytest.raises(InvalidRequest, match="wait_timeout must be 0 or more, got -1"):
        operations.reconcile_pool(FakeStore([pool_state(1)], FakeLock()), None, wait_timeout=-1)
