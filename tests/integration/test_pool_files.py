"""The files beside the pool file, through Ansible: the refill job's code copy is
verified before it runs, a directory others can change is refused, a file that is not a pool file gets no
sidecar, a missing pool gets nothing, and terminate leaves nothing behind.

These run as root: os.chown to another uid (65534) makes a directory "not ours"; each test restores what it
changed so that the teardown's spot_pool_terminate can end the pool."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import pytest

from tests.integration.conftest import AMI, PoolHarness, end_pool, task_result
from tests.integration.healing import wait_refill_done

OTHER_UID = 65534
REFILL_MEMBER = "ansible_collections/ec2spot/pool/plugins/module_utils/_pool/refill.py"


def code_copies(pool) -> list[str]:
    code_dir = pool.state_dir / "code"
    return sorted(str(code_dir / name) for name in os.listdir(code_dir) if name.endswith(".zip"))


def log_events(pool) -> list[str]:
    return [json.loads(line)["event"] for line in pool.refill_log.read_text().splitlines() if line.startswith("{")]


def test_a_replaced_code_copy_is_never_run_and_a_code_dir_others_can_change_is_refused(pool, tmp_path):
    assert pool.init(size=3).rc == 0
    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["refill"]["started"], got
    wait_refill_done(pool)
    [copy] = code_copies(pool)
    assert stat.S_IMODE(os.lstat(copy).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pool.state_dir / "code").st_mode) == 0o700

    # The attack: the copy's bytes replaced (same name, same owner and mode) by code that would run as us, with
    # our credentials in its environment.
    marker = tmp_path / "ran-the-replaced-code"
    with zipfile.ZipFile(copy) as original:
        members = {info: original.read(info.filename) for info in original.infolist()}
    with zipfile.ZipFile(copy, "w") as evil:
        for info, data in members.items():
            if info.filename == REFILL_MEMBER:
                future = b"from __future__ import annotations\n"
                assert future in data
                data = data.replace(future, future + ("open(%r, 'w').write('pwned')\n" % str(marker)).encode(), 1)
            evil.writestr(info, data)
    runs_before = log_events(pool).count("started")

    rc, got = pool.module("spot_pool_get")
    assert rc == 0 and got["refill"]["started"], got
    wait_refill_done(pool)
    assert not marker.exists(), "the refill job ran the replaced code copy"
    assert log_events(pool).count("started") == runs_before + 1  # the job did run, from a good copy
    [fresh] = code_copies(pool)
    with zipfile.ZipFile(fresh) as good:
        assert good.read(REFILL_MEMBER) == members[next(i for i in members if i.filename == REFILL_MEMBER)]

    # A code directory others may write to, or another user's: refused before anything changes (no lease).
    code_dir = pool.state_dir / "code"
    before = pool.state_bytes()
    try:
        for attack in ("world-writable", "not-ours"):
            os.chmod(code_dir, 0o777 if attack == "world-writable" else 0o700)
            os.chown(code_dir, OTHER_UID if attack == "not-ours" else 0, -1)
            run = pool.playbook("get_instance.yml")
            assert run.rc != 0, f"get ran with a {attack} code directory"
            msg = task_result(run, "spot_pool_get")["msg"]
            assert str(code_dir) in msg and "rm -r" in msg, msg
            assert pool.state_bytes() == before
            assert pool.refill_pids() == []
            assert not marker.exists()
    finally:
        os.chown(code_dir, 0, -1)
        os.chmod(code_dir, 0o700)


def test_a_state_directory_others_can_write_is_refused(pool):
    pool.state_dir.mkdir(mode=0o700)
    os.chmod(pool.state_dir, 0o1777)  # sticky and world-writable, like /tmp itself
    try:
        run = pool.init(size=1)
        assert run.rc != 0
        msg = task_result(run, "spot_pool_init")["msg"]
        assert str(pool.state_dir) in msg and "chmod 700" in msg, msg
        assert os.listdir(pool.state_dir) == [] and pool.tagged_instances() == []
    finally:
        os.chmod(pool.state_dir, 0o700)


PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"


def test_a_file_that_is_not_a_pool_file_is_never_touched(pool, tmp_path):
    """pool_file=/etc/passwd, here a stand-in in a directory of its own: every module names it, and nothing
    appears beside it (spot_pool_init rebuild: true moves nothing either)."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    passwd = etc / "passwd"
    passwd.write_text(PASSWD)
    os.chmod(passwd, 0o644)
    for module, args in (("spot_pool_info", {}), ("spot_pool_get", {}), ("spot_pool_release", {}),
                         ("spot_pool_init", {"size": 1, "image_id": AMI}),
                         ("spot_pool_init", {"size": 1, "image_id": AMI, "rebuild": True}),
                         ("spot_pool_terminate", {})):
        rc, result = pool.module(module, pool_file=str(passwd), **args)
        text = result.get("msg", "") if rc else " ".join(result.get("warnings", []))
        assert str(passwd) in text and "not valid JSON" in text, (module, args, result)
        if module == "spot_pool_init" and args.get("rebuild"):
            assert rc != 0 and "force_rebuild" in result["msg"], result["msg"]
        assert os.listdir(etc) == ["passwd"], (module, args, os.listdir(etc))
        assert passwd.read_text() == PASSWD
    assert pool.tagged_instances() == []


def test_a_missing_pool_gets_no_state_directory(pool):
    for module, args, check in (("spot_pool_info", {}, False), ("spot_pool_release", {}, False),
                                ("spot_pool_terminate", {}, False), ("spot_pool_get", {}, False),
                                ("spot_pool_init", {"size": 1, "image_id": AMI}, True)):
        pool.module(module, check=check, **args)
        assert not pool.state_dir.exists(), (module, sorted(p.name for p in pool.state_dir.iterdir()))


def test_terminate_leaves_nothing_beside_the_pool_file(pool):
    # Two pools in one state directory: they share the code copy.
    other = PoolHarness(pool.state_dir, pool.ec2, "other")
    other.env.update(pool.env)
    try:
        for harness in (pool, other):
            assert harness.init(size=2).rc == 0
            rc, got = harness.module("spot_pool_get")
            assert rc == 0 and got["refill"]["started"], got
        wait_refill_done(pool)
        names = set(os.listdir(pool.state_dir))
        assert {"default.json.lock", "default.json.refill.lock", "default.json.refill.log", "code"} <= names
        assert len(code_copies(pool)) == 1

        run = pool.playbook("terminate_all.yml", spot_pool_fallback_action="terminate")
        assert run.rc == 0, run.stdout[-3000:]
        assert sorted(os.listdir(pool.state_dir)) == ["code", "other.json", "other.json.lock",
                                                      "other.json.refill.lock", "other.json.refill.log"]
        assert len(code_copies(pool)) == 1  # still needed by the other pool

        run = other.playbook("terminate_all.yml", spot_pool_fallback_action="terminate")
        assert run.rc == 0, run.stdout[-3000:]
        assert os.listdir(pool.state_dir) == []
    finally:
        problems = end_pool(other)
    assert not problems, problems


@pytest.mark.parametrize("field, value, where", [
    ("target_size", "3", "target_size"),
    ("launch", {"image_id": AMI}, "launch.instance_types"),
    ("pending_launches", [{"token": "t-1", "at": "2026-11-22T10:00:00Z"}], "pending_launches[0].request"),
])
def test_wrong_typed_fields_fail_naming_the_file_and_the_field(pool, field, value, where):
    assert pool.init(size=1).rc == 0
    state = pool.state()
    state[field] = value
    pool.state_file.write_text(json.dumps(state))
    before = pool.state_bytes()
    for module, args in (("spot_pool_info", {}), ("spot_pool_init", {"size": 1, "image_id": AMI}),
                         ("spot_pool_get", {})):
        rc, result = pool.module(module, **args)
        assert rc != 0, (module, result)
        assert str(pool.state_file) in result["msg"] and where in result["msg"], result["msg"]
        assert "Traceback" not in result.get("module_stderr", "") and "rebuild: true" in result["msg"]
        assert pool.state_bytes() == before
    # rebuild: true repairs it (the file claims to be this pool's): moved aside, the pool rebuilt from the tags.
    rc, result = pool.module("spot_pool_init", size=1, image_id=AMI, rebuild=True)
    assert rc == 0, result
    assert open(result["moved_aside"], "rb").read() == before
    assert len(pool.state()["instances"]) == 1
