"""The files beside a pool file: the refill job's code copy, its log, and what
spot_pool_terminate removes. These tests run as root: os.chown to another uid makes a file "not ours"."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import jobcontrol
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops
from ansible_collections.ec2spot.pool.plugins.module_utils._pool import refill
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import StateFileError
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.pool import new_state
from tests.support.moto import POOL_LAUNCH

OTHER_UID = 65534
MEMBERS = {"ansible_collections/ec2spot/pool/plugins/module_utils/_pool/refill.py": b"print('the real job')\n",
           "ansible/module_utils/basic.py": b"# ansible\n" * 2000}


def make_payload(tmp_path, members=None):
    """A stand-in for Ansible's module payload: a zip with the collection's code and a sitecustomize.py."""
    path = tmp_path / "ansible_module_payload.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as payload:
        payload.writestr("sitecustomize.py", "import sys; sys.path.insert(0, '/tmp/gone')\n")
        for name, data in (members or MEMBERS).items():
            payload.writestr(name, data)
    return str(path)


def make_store(tmp_path, name="p"):
    store = FileStore(str(tmp_path / "state" / (name + ".json")), name)
    with store.transaction() as tx:
        tx.state = new_state(name, 1, dict(POOL_LAUNCH))
    return store


def copy_of(tmp_path, store, payload=None):
    path, fd = jobcontrol._stable_code_root(store.code_dir, root=payload or make_payload(tmp_path))  # pylint: disable=protected-access
    os.close(fd)
    return path


def sha256_of(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# -- the code copy is private, verified before every start, replaced when it fails --------------------------------
def test_the_code_copy_is_private_named_by_its_digest_and_locked_while_used(tmp_path):
    store = make_store(tmp_path)
    old_umask = os.umask(0)
    try:
        path, fd = jobcontrol._stable_code_root(store.code_dir, root=make_payload(tmp_path))  # pylint: disable=protected-access
    finally:
        os.umask(old_umask)
    try:
        assert os.path.dirname(path) == store.code_dir
        assert stat.S_IMODE(os.stat(store.code_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert sha256_of(path) in os.path.basename(path)
        with zipfile.ZipFile(path) as copy:
            assert {name: copy.read(name) for name in copy.namelist()} == MEMBERS  # no sitecustomize.py
        # The job inherits fd: its shared lock says "in use" to anything that would remove the copy.
        other = os.open(path, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    finally:
        os.close(fd)
    # The next start finds the same copy.
    assert copy_of(tmp_path, store) == path


@pytest.mark.parametrize("attack", ["world-writable", "group-writable", "not-ours", "symlink"])
def test_a_code_directory_others_can_change_is_refused(tmp_path, attack):
    store = make_store(tmp_path)
    if attack == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        os.symlink(elsewhere, store.code_dir)
    else:
        os.mkdir(store.code_dir)
        os.chmod(store.code_dir, {"world-writable": 0o777, "group-writable": 0o770, "not-ours": 0o700}[attack])
        if attack == "not-ours":
            os.chown(store.code_dir, OTHER_UID, -1)
    with pytest.raises(StateFileError) as err:
        copy_of(tmp_path, store)
    assert store.code_dir in err.value.message and "rm -r" in err.value.message, err.value.message
    assert os.listdir(store.code_dir) == []  # nothing copied into it
    # The pool's writers refuse it before changing anything (a get fails before it records a lease).
    with pytest.raises(StateFileError, match="refill code directory"):
        with FileStore(store.path, "p").transaction() as tx:
            tx.state["target_size"] = 2


@pytest.mark.parametrize("tamper", ["content", "mode", "owner", "symlink", "truncated"])
def test_a_copy_that_fails_the_check_is_replaced_never_used(tmp_path, tamper):
    store = make_store(tmp_path)
    payload = make_payload(tmp_path)
    path = copy_of(tmp_path, store, payload)
    good = open(path, "rb").read()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as bad:
        bad.writestr("ansible_collections/ec2spot/pool/plugins/module_utils/_pool/refill.py",
                     "open('/tmp/pwned', 'w')\n")
    if tamper == "content":
        with open(path, "wb") as handle:
            handle.write(evil.read_bytes())
    elif tamper == "truncated":
        with open(path, "r+b") as handle:
            handle.truncate(len(good) // 2)
    elif tamper == "mode":
        os.chmod(path, 0o644)
    elif tamper == "owner":
        os.chown(path, OTHER_UID, -1)
    else:
        os.unlink(path)
        os.symlink(evil, path)
    again = copy_of(tmp_path, store, payload)
    assert not os.path.islink(again)
    assert open(again, "rb").read() == good and sha256_of(again) in os.path.basename(again)
    assert os.lstat(again).st_uid == os.getuid() and stat.S_IMODE(os.lstat(again).st_mode) == 0o600
    assert len([name for name in os.listdir(store.code_dir) if name.endswith(".zip")]) == 1
    assert evil.read_bytes().startswith(b"PK")  # a link's target is never touched


# -- the refill log never follows a link and is never someone else's file ----------------------------------------
@pytest.mark.parametrize("attack", ["symlink", "not-ours", "world-writable"])
def test_the_refill_log_is_refused_when_it_is_a_link_or_not_ours(tmp_path, attack):
    store = make_store(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = store.refill_log_path()
    if attack == "symlink":
        os.symlink(victim, log)
    else:
        with open(log, "w") as handle:
            handle.write("theirs\n")
        if attack == "not-ours":
            os.chown(log, OTHER_UID, -1)
        else:
            os.chmod(log, 0o666)
    env = {"PATH": os.environ["PATH"], "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1", "EC2SPOT_ENDPOINT_URL": "http://127.0.0.1:9"}
    pid = None
    try:
        with pytest.raises(StateFileError) as err:
            pid = jobcontrol.start_refill(store, env)[1]
        assert log in err.value.message
    finally:
        if pid:  # only on a broken implementation: do not let its job outlive the test
            os.kill(pid, 9)
    assert victim.read_text() == "precious\n"
    assert not store.refill_lock().is_held_elsewhere()


def test_the_log_rotates_only_our_own_file_that_we_write_to(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    path = str(directory / "p.json.refill.log")

    def writing_to(size):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(fd, b"x" * size)
        return fd

    # Small: nothing happens.
    fd = writing_to(10)
    assert refill._rotate_log(path, fd, max_bytes=100) is None  # pylint: disable=protected-access
    os.close(fd)
    # Someone else's file (or a link) at the path: never renamed, even though what we write to is big.
    os.unlink(path)
    fd = writing_to(200)
    os.chown(path, OTHER_UID, -1)
    assert refill._rotate_log(path, fd, max_bytes=100) is None  # pylint: disable=protected-access
    assert sorted(os.listdir(directory)) == ["p.json.refill.log"]
    os.close(fd)
    os.unlink(path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 500)
    fd = os.open(str(tmp_path / "ours"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"y" * 200)
    os.symlink(victim, path)
    assert refill._rotate_log(path, fd, max_bytes=100) is None  # pylint: disable=protected-access
    assert os.path.islink(path) and victim.read_bytes() == b"v" * 500
    os.close(fd)
    os.unlink(path)
    # Ours, the one we write to, too big: rotated, and the new one is ours and private.
    fd = writing_to(200)
    new_fd = refill._rotate_log(path, fd, max_bytes=100)  # pylint: disable=protected-access
    assert new_fd is not None
    assert os.path.getsize(path + ".1") == 200 and os.path.getsize(path) == 0
    assert os.fstat(new_fd).st_ino == os.lstat(path).st_ino and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    os.close(fd)
    os.close(new_fd)


def test_the_job_logger_leaves_a_big_log_of_another_user_alone(tmp_path):
    """The refill job's own entry point (stdout is the log), run as a process: a big log at the path that is not
    ours is neither renamed nor written through."""
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    path = directory / "p.json.refill.log"
    path.write_bytes(b"x" * (refill.LOG_MAX_BYTES + 1))
    os.chown(path, OTHER_UID, -1)
    ours = tmp_path / "ours.log"
    with open(ours, "wb") as out:
        out.write(b"y" * (refill.LOG_MAX_BYTES + 1))
    with open(ours, "ab") as out:
        subprocess.run([sys.executable, "-c", "import sys; from %s import _json_logger; _json_logger(sys.argv[1])('x')"
                        % refill.__name__, str(path)], stdout=out, check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert sorted(os.listdir(directory)) == ["p.json.refill.log"]
    assert os.path.getsize(path) == refill.LOG_MAX_BYTES + 1
    assert open(ours, "rb").read().endswith(b'"event": "x", "pid": ' + open(ours, "rb").read().split(b'"pid": ')[-1])


# -- terminate removes what the pool left beside its file ---------------------------------------------------------
def test_terminate_removes_the_pools_files_and_the_code_copy_once_no_pool_needs_it(tmp_path, client):
    stores = {}
    for name in ("a", "b"):
        store = FileStore(str(tmp_path / "state" / (name + ".json")), name)
        ops.init_pool(store, client, ops.InitRequest(1, dict(POOL_LAUNCH), wait=True, wait_timeout=60))
        for suffix in (".refill.log", ".refill.log.1"):
            with open(store.path + suffix, "w") as handle:
                handle.write("{}\n")
        job_lock = store.refill_lock()
        job_lock.acquire()  # as a refill job that ran would have left it
        job_lock.release()
        stores[name] = store
    directory = stores["a"].directory
    copy = copy_of(tmp_path, stores["a"])
    assert "a.json.refill.lock" in os.listdir(directory) and "a.json.lock" in os.listdir(directory)

    ops.terminate_pool(stores["a"], client, fallback_action="terminate")
    # b still lives here: its files stay, and so does the code copy its next get would need.
    assert sorted(os.listdir(directory)) == ["b.json", "b.json.lock", "b.json.refill.lock", "b.json.refill.log",
                                             "b.json.refill.log.1", "code"]
    assert os.path.exists(copy)

    # A refill job still runs from the copy (holds it shared): it stays even when the last pool goes.
    in_use = os.open(copy, os.O_RDONLY)
    fcntl.flock(in_use, fcntl.LOCK_SH)
    ops.terminate_pool(stores["b"], client, fallback_action="terminate")
    assert os.listdir(directory) == ["code"] and os.listdir(stores["b"].code_dir) == [os.path.basename(copy)]
    os.close(in_use)
    # Once it is not used any more, terminate of a pool that is gone takes it.
    ops.terminate_pool(stores["b"], client, fallback_action="terminate")
    assert os.listdir(directory) == []


def test_terminate_of_a_missing_pool_creates_nothing(tmp_path, client):
    store = FileStore(str(tmp_path / "state" / "none.json"), "none")
    done = ops.terminate_pool(store, client)
    assert done["changed"] is False
    assert not os.path.exists(store.directory)
