"""The pool state store: private files, atomic writes, refusal to touch what it cannot trust, and the lock."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import stat
import threading
import time

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.entries import counts
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import InvalidRequest
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import StateFileError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.localfiles import FileLock
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.localfiles import default_state_dir
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.pool import new_state
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.localfiles import pool_file_path
from tests.support.pool_entries import pool_entry


def entry(n, ip=True, kind="spot"):
    return pool_entry(n, ready=ip, kind=kind)


def make_store(tmp_path, entries=(), name="default"):
    store = FileStore(str(tmp_path / "state" / (name + ".json")), name)
    with store.transaction() as tx:
        tx.state = new_state(name, len(entries), {"instance_types": ["t3.micro"]})
        tx.state["instances"] = list(entries)
    return store


def test_default_state_dir_follows_xdg(tmp_path):
    assert default_state_dir({"XDG_STATE_HOME": str(tmp_path)}) == str(tmp_path / "ec2spot")
    assert default_state_dir({}).endswith(os.path.join(".local", "state", "ec2spot"))


def test_pool_file_path_rejects_names_that_could_escape_the_directory():
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "ci\n", "ci\n\n", "\nci", None):
        with pytest.raises(InvalidRequest):
            pool_file_path(bad, "/tmp/s")
        with pytest.raises(InvalidRequest):  # a pool_file does not make a bad name acceptable
            pool_file_path(bad, "/tmp/s", "/tmp/s/x.json")
    with pytest.raises(InvalidRequest, match="pool_name is empty: name the pool explicitly"):
        pool_file_path("", "/tmp/s")
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
                 "target_size": 1, "launch": {"instance_types": ["t3.micro"]}}), "instances[0].id is null"),
])
def test_corrupt_or_foreign_files_are_reported_and_left_alone(tmp_path, content, fragment):
    store = FileStore(str(tmp_path / "default.json"), "default")
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
    store = FileStore(str(tmp_path / "d" / "default.json"), "default")
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
        FileStore(str(shared / "default.json"), "default").read()


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
    """Hand out an instance (the real hand-out transaction, `claim_ready`) and put it back, `rounds` times."""
    store = FileStore(path, "default")
    problems = 0
    for _round in range(rounds):
        lease = store.claim_ready(set(), set(), 0, verify=False).lease
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


# -- nothing another user can write is trusted (OpenSSH's StrictModes) -------------------------------------------
OTHER_UID = 65534  # nobody: "a file that is not ours" (these tests run as root, which may chown)


@pytest.fixture
def restore_umask():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_a_sticky_world_writable_directory_is_no_state_directory(tmp_path):
    # /tmp itself: sticky, world-writable, someone else's. Fine as a parent, never as the state directory.
    for owner in (os.getuid(), OTHER_UID):
        shared = tmp_path / ("shared-%d" % owner)
        shared.mkdir()
        os.chmod(shared, 0o1777)
        os.chown(shared, owner, -1)
        store = FileStore(str(shared / "default.json"), "default")
        for attempt in (store.read, lambda: store.transaction().__enter__()):
            with pytest.raises(StateFileError) as err:
                attempt()
            assert str(shared) in err.value.message
            assert "chmod 700" in err.value.message or "another user" in err.value.message
        assert os.listdir(shared) == []
    # ... and as a parent it is fine: /tmp/<ours, 0700>/pool.json (/tmp is root's: here we are root)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    store = FileStore(str(sticky / "mine" / "default.json"), "default")
    with store.transaction() as tx:
        tx.state = new_state("default", 0, {"instance_types": ["t3.micro"]})
    assert store.read()["pool_name"] == "default"
    # ... unless someone else owns it: the owner of a sticky directory may still rename what is in it.
    os.chown(sticky, OTHER_UID, -1)
    with pytest.raises(StateFileError, match="belongs to another user"):
        FileStore(store.path, "default").read()


def test_a_state_directory_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER_UID, -1)
    with pytest.raises(StateFileError, match="belongs to another user") as err:
        FileStore(str(theirs / "default.json"), "default").read()
    assert str(theirs) in err.value.message


def test_a_parent_others_can_write_is_refused(tmp_path):
    # Whoever may write the parent may rename our private directory away and put theirs in its place.
    parent = tmp_path / "open"
    (parent / "state").mkdir(parents=True)
    os.chmod(parent / "state", 0o700)
    os.chmod(parent, 0o777)
    with pytest.raises(StateFileError) as err:
        FileStore(str(parent / "state" / "default.json"), "default").read()
    assert str(parent) in err.value.message and "other users" in err.value.message


@pytest.mark.parametrize("mode, owner", [(0o666, None), (0o620, None), (0o600, OTHER_UID)],
                         ids=["world-writable", "group-writable", "not-ours"])
@pytest.mark.parametrize("which", ["pool file", "lock file"])
def test_files_others_can_write_are_refused(tmp_path, mode, owner, which):
    store = make_store(tmp_path, [entry(1)])
    path = store.path if which == "pool file" else store.lock_path
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, -1)
    before = open(store.path, "rb").read()
    with pytest.raises(StateFileError) as err:
        with store.transaction() as tx:
            tx.state["target_size"] = 9
    assert path in err.value.message
    assert open(store.path, "rb").read() == before


def test_what_the_store_creates_is_private_whatever_the_umask(tmp_path, restore_umask):
    for umask in (0o000, 0o277):
        os.umask(umask)
        base = tmp_path / ("u%o" % umask)
        store = FileStore(str(base / "a" / "b" / "default.json"), "default")
        with store.transaction() as tx:
            tx.state = new_state("default", 0, {"instance_types": ["t3.micro"]})
        os.umask(0o022)
        for directory in (base / "a", base / "a" / "b"):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, (umask, directory)
        for path in (store.path, store.lock_path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (umask, path)
        assert store.read()["pool_name"] == "default"


# -- a file that is not a pool file gets no sidecar; a missing pool gets nothing ----------------------------------
PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"


def test_a_file_that_is_not_a_pool_file_gets_no_sidecar(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    (etc / "passwd").write_text(PASSWD)
    os.chmod(etc / "passwd", 0o644)
    store = FileStore(str(etc / "passwd"), "default")
    for attempt in (store.read, lambda: store.transaction().__enter__(), store.delete):
        with pytest.raises(StateFileError, match="is not valid JSON"):
            attempt()
    assert os.listdir(etc) == ["passwd"]
    assert (etc / "passwd").read_text() == PASSWD


def test_a_missing_pool_creates_nothing(tmp_path):
    store = FileStore(str(tmp_path / "state" / "default.json"), "default")
    assert store.read() is None
    with store.transaction() as tx:
        assert tx.state is None
    info = ops.pool_info(store)
    assert info["exists"] is False and info["refill"]["running"] is False
    assert not os.path.exists(store.directory)
    # The directory exists (another pool): still nothing new in it.
    other = make_store(tmp_path, name="other")
    before = sorted(os.listdir(other.directory))
    assert ops.pool_info(store)["exists"] is False
    with store.transaction() as tx:
        assert tx.state is None
    assert sorted(os.listdir(other.directory)) == before


# -- a lock file may be removed by whoever holds it; lockers make sure theirs is still the one --------------------
def _fds_open_on(path):
    """This process's descriptors open on `path` (the lock file a thread opened before it blocks in flock)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink("/proc/self/fd/" + name) == path:
                found.append(int(name))
    return found


def test_a_locker_that_waited_on_a_removed_lock_file_takes_the_new_one(tmp_path):
    path = str(tmp_path / "x.lock")
    holder = FileLock(path)
    assert holder.acquire()
    waiter = FileLock(path)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (waiter.acquire(), done.set()))
    thread.start()
    # The waiter has opened the lock file and blocks in flock on it. Remove the file while holding it, release.
    deadline = time.monotonic() + 10
    while len(_fds_open_on(path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_fds_open_on(path)) == 2
    os.unlink(path)
    holder.release()
    thread.join(10)
    assert done.is_set()
    # The waiter holds the lock on the file now at the path, not on the removed one nobody else would ever lock.
    assert os.fstat(waiter.fd).st_ino == os.stat(path).st_ino
    assert FileLock(path).is_held_elsewhere()
    waiter.release()


def test_deleting_the_pool_removes_its_lock_file(tmp_path):
    store = make_store(tmp_path, [entry(1)])
    with store.transaction() as tx:
        tx.delete()
    assert os.listdir(store.directory) == []


# -- the schema is checked once, at read, for every reader ------------------------------------------------------
def _valid_state():
    state = new_state("default", 2, {"image_id": "ami-1", "instance_types": ["t3.micro"],
                                     "availability_zones": ["us-east-1a"], "tags": {"team": "ci"},
                                     "fallback": True, "cooldown_seconds": 180,
                                     "template": {"LaunchTemplateId": "lt-1", "Version": "1", "owned": True}})
    state["instances"] = [entry(1), entry(2, ip=False)]
    state["leases"] = [dict(entry(3), leased_at="2026-11-22T10:00:00Z", expires_at=None)]
    state["cooldowns"] = [{"scope": "offering", "market": "spot", "instance_type": "t3.micro",
                           "location": "us-east-1a", "code": "InsufficientInstanceCapacity",
                           "until": "2026-11-22T10:03:00Z"}]
    state["pending_launches"] = [{"token": "tok-1", "request": {"Type": "instant"}, "at": "2026-11-22T10:00:00Z"}]
    return state


def _break(path, value):
    def change(state):
        *parents, last = path
        target = state
        for key in parents:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return change


@pytest.mark.parametrize("change, field", [
    (_break(("pending_launches", 0, "request"), KeyError), "pending_launches[0].request"),
    (_break(("pending_launches", 0, "token"), 7), "pending_launches[0].token"),
    (_break(("pending_launches",), {"token": "x"}), "pending_launches"),
    (_break(("launch", "instance_types"), KeyError), "launch.instance_types"),
    (_break(("launch", "instance_types"), "t3.micro"), "launch.instance_types"),
    (_break(("launch", "tags"), ["team"]), "launch.tags"),
    (_break(("launch", "availability_zones"), "us-east-1a"), "launch.availability_zones"),
    (_break(("launch", "cooldown_seconds"), "180"), "launch.cooldown_seconds"),
    (_break(("launch", "template"), "lt-1"), "launch.template"),
    (_break(("launch", "fallback_action"), "keep"), 'launch.fallback_action is "keep", expected one of stop, terminate'),
    (_break(("cooldowns",), {"scope": "market"}), "cooldowns"),
    (_break(("cooldowns", 0, "scope"), KeyError), "cooldowns[0].scope"),
    (_break(("cooldowns", 0, "until"), "tomorrow"), "cooldowns[0].until"),
    (_break(("instances", 0, "ip"), 10), "instances[0].ip"),
    (_break(("instances", 1, "launched_at"), 1700000000), "instances[1].launched_at"),
    (_break(("instances", 0, "type"), ["spot"]), "instances[0].type"),
    (_break(("leases", 0, "leased_at"), "yesterday"), "leases[0].leased_at"),
    (_break(("leases", 0, "expires_at"), 3600), "leases[0].expires_at"),
    (_break(("target_size",), "3"), "target_size"),
    (_break(("target_size",), True), "target_size"),
    (_break(("refill",), []), "refill"),
    (_break(("refill", "pid"), "1234"), "refill.pid"),
    (_break(("refill", "verified_at"), "now"), "refill.verified_at"),
    (_break(("refill", "last_error"), {"code": 1}), "refill.last_error"),
])
def test_a_malformed_pool_file_fails_at_read_naming_the_file_and_the_field(tmp_path, change, field):
    store = make_store(tmp_path)
    state = _valid_state()
    with store.transaction() as tx:
        tx.state = json.loads(json.dumps(state))
    assert store.read() == state  # the valid form passes the same check
    change(state)
    with open(store.path, "w") as handle:
        json.dump(state, handle)
    before = open(store.path, "rb").read()
    for attempt in (store.read, lambda: store.transaction().__enter__(), lambda: ops.pool_info(store)):
        with pytest.raises(StateFileError) as err:
            attempt()
        assert store.path in err.value.message and field in err.value.message, err.value.message
        assert "rebuild" in err.value.message  # says how to recover
    assert open(store.path, "rb").read() == before


def test_the_schema_check_knows_damaged_from_foreign(tmp_path):
    store = make_store(tmp_path)
    for text, kind in (('{"version": 1, "pool_name": "default", "instances": 3}', "damaged"),
                       ('{"version": 1, "pool_name": "other", "instances": []}', "foreign"),
                       ('{"version": 2, "pool_name": "default"}', "foreign"),
                       ("[1, 2]", "foreign"), ("{torn", "foreign")):
        with open(store.path, "w") as handle:
            handle.write(text)
        with pytest.raises(StateFileError) as err:
            store.read()
        assert err.value.kind == kind, text


def test_prepare_refuses_a_state_directory_to_be_made_under_a_parent_others_may_write(tmp_path):
    """init calls prepare before it makes anything in EC2: a directory it could not use later is refused now."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    store = FileStore(str(shared / "deep" / "state" / "ci.json"), "ci")
    with pytest.raises(StateFileError, match="the parent %s of state directory %s can be written by other users"
                                             % (shared, shared / "deep" / "state")):
        store.prepare(dry_run=True)
    assert sorted(shared.iterdir()) == [], "nothing created"
    shared.chmod(0o1777)  # sticky, like /tmp: a private directory inside it is fine
    assert store.prepare(dry_run=True) is True
    shared.chmod(0o755)
    assert store.prepare(dry_run=True) is True and sorted(shared.iterdir()) == []
    (shared / "deep").mkdir(mode=0o700)
    (shared / "deep" / "state").mkdir()
    (shared / "deep" / "state").chmod(0o770)
    with pytest.raises(StateFileError, match="can be written by other users"):  # an existing one: checked as it is
        FileStore(str(shared / "deep" / "state" / "ci.json"), "ci").prepare(dry_run=True)
