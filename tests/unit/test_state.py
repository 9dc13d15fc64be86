"""The pool state store: private files, atomic writes, refusal to touch what it cannot trust, and the lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import pool as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.errors import StateFileError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import FileLock
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import PoolStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import counts
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import default_state_dir
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import new_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.state import pool_file_path


def entry(n, ip=True, kind="spot"):
    return {"id": "i-%017x" % n, "ip": "10.0.%d.%d" % (n // 250, n % 250 + 1) if ip else None, "type": kind,
            "private_ip": "10.0.0.1", "public_ip": None, "availability_zone": "us-east-1a",
            "instance_type": "t3.micro", "launched_at": "2026-11-22T10:00:00Z"}


def make_store(tmp_path, entries=(), name="default"):
    store = PoolStore(str(tmp_path / "state" / (name + ".json")), name)
    with store.transaction() as tx:
        tx.state = new_state(name, len(entries), {"instance_types": ["t3.micro"]})
        tx.state["instances"] = list(entries)
    return store


def test_default_state_dir_follows_xdg(tmp_path):
    assert default_state_dir({"XDG_STATE_HOME": str(tmp_path)}) == str(tmp_path / "ec2spot")
    assert default_state_dir({}).endswith(os.path.join(".local", "state", "ec2spot"))


def test_pool_file_path_rejects_names_that_could_escape_the_directory():
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(InvalidRequest):
            pool_file_path(bad, "/tmp/s")
    assert pool_file_path("ci-1", "/tmp/s") == "/tmp/s/ci-1.json"
    assert pool_file_path("ci", "/tmp/s", "/tmp/other.json") == "/tmp/other.json"


def test_files_are_private_and_writes_atomic(tmp_path):
    store = make_store(tmp_path, [entry(1)])
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.lock_path).st_mode) == 0o600
    assert store.read()["instances"][0]["id"] == entry(1)["id"]
    # No temporary file is left behind, and the lock file survives every write (it is never replaced).
    lock_inode = os.stat(store.lock_path).st_ino
    with store.transaction() as tx:
        tx.state["target_size"] = 7
    assert os.stat(store.lock_path).st_ino == lock_inode
    assert sorted(os.listdir(store.directory)) == ["default.json", "default.json.lock"]


def test_an_exception_inside_a_transaction_writes_nothing(tmp_path):
    store = make_store(tmp_path, [entry(1)])
    before = open(store.path, "rb").read()
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.state["instances"] = []
            raise RuntimeError("boom")
    assert open(store.path, "rb").read() == before


def test_unchanged_state_is_not_rewritten(tmp_path):
    store = make_store(tmp_path, [entry(1)])
    mtime = os.stat(store.path).st_mtime_ns
    inode = os.stat(store.path).st_ino
    with store.transaction() as tx:
        assert tx.state["target_size"] == 1
    assert (os.stat(store.path).st_mtime_ns, os.stat(store.path).st_ino) == (mtime, inode)


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "is not valid JSON"),
    ("[]", "it is not a JSON object"),
    (json.dumps({"version": 9, "pool_name": "default", "instances": [], "leases": [], "target_size": 1,
                 "launch": {}}), "its version is 9"),
    (json.dumps({"version": 1, "pool_name": "other", "instances": [], "leases": [], "target_size": 1,
                 "launch": {}}), "it belongs to pool 'other'"),
    (json.dumps({"version": 1, "pool_name": "default", "instances": [{"ip": "1.2.3.4"}], "leases": [],
                 "target_size": 1, "launch": {}}), "'instances' is not a list of entries"),
])
def test_corrupt_or_foreign_files_are_reported_and_left_alone(tmp_path, content, fragment):
    store = PoolStore(str(tmp_path / "default.json"), "default")
    store.ensure_directory()
    with open(store.path, "w") as handle:
        handle.write(content)
    with pytest.raises(StateFileError) as err:
        with store.transaction() as tx:
            tx.state = new_state("default", 1, {})
    assert fragment in err.value.message
    assert store.path in err.value.message
    assert "ec2spot:pool=default" in err.value.message  # says how to recover
    assert open(store.path).read() == content


def test_a_symlink_in_place_of_the_state_file_is_refused(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    store = PoolStore(str(tmp_path / "d" / "default.json"), "default")
    store.ensure_directory()
    os.symlink(target, store.path)
    with pytest.raises(StateFileError, match="symbolic link"):
        store.read()
    assert target.read_text() == "{}"


def test_a_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(StateFileError, match="can be written by other users"):
        PoolStore(str(shared / "default.json"), "default").read()


def test_file_lock_is_exclusive_across_descriptions(tmp_path):
    first, second = FileLock(str(tmp_path / "x.lock")), FileLock(str(tmp_path / "x.lock"))
    assert first.acquire(blocking=False)
    assert second.is_held_elsewhere()
    assert not second.acquire(blocking=False)
    assert not second.acquire(timeout=0.2)
    first.release()
    assert not second.is_held_elsewhere()
    assert second.acquire(blocking=False)
    second.release()


def test_counts():
    state = new_state("p", 3, {})
    state["instances"] = [entry(1), entry(2, ip=False), entry(3, kind="fallback")]
    state["leases"] = [entry(4)]
    assert counts(state) == {"target": 3, "ready": 2, "pending": 1, "leased": 1, "spot": 2, "fallback": 1}
    assert counts(None)["ready"] == 0


# -- the lock under contention: real processes, the real hand-out core --------------------------------------
def _get_put_worker(path, rounds, queue):
    """Hand out an instance (the real hand-out transaction, `_claim`) and put it back, `rounds` times."""
    store = PoolStore(path, "default")
    problems = 0
    for _round in range(rounds):
        lease = ops._claim(store, set(), set(), False, 0, 0, False).lease  # pylint: disable=protected-access
        with store.transaction() as tx:
            held = [item for item in tx.state["leases"] if item["id"] == lease["id"]]
            problems += len(held) != 1  # the same instance leased twice at once
            tx.state["leases"] = [item for item in tx.state["leases"] if item["id"] != lease["id"]]
            back = {key: value for key, value in lease.items() if key not in ("leased_at", "expires_at")}
            tx.state["instances"].append(back)
    queue.put(problems)


def test_32_processes_x_100_get_put_lose_and_duplicate_nothing(tmp_path):
    original = [entry(n) for n in range(64)]
    store = make_store(tmp_path, original)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_get_put_worker, args=(store.path, 100, queue)) for _process in range(32)]
    for worker in workers:
        worker.start()
    problems = [queue.get(timeout=300) for _worker in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    state = store.read()
    assert sum(problems) == 0
    assert state["leases"] == []
    assert sorted(item["id"] for item in state["instances"]) == sorted(item["id"] for item in original)
