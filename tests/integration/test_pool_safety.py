"""What must change nothing: check mode, re-running init, and every kind of bad input (each with a clear message).

"Nothing changed" is checked where it lives: the pool file's bytes, the instances EC2 has, and the processes
running for the pool's state directory.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import AMI, debug_msgs, end_pool, task_result, wait_until
from tests.support.ansible import run_playbook


def _ids(pool) -> set[str]:
    return {inst["InstanceId"] for inst in pool.tagged_instances()}


def test_init_rerun_is_idempotent_and_check_mode_changes_nothing(pool):
    # Check mode on a pool that does not exist yet: it says what it would do, and does none of it.
    run = pool.init(size=2, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    planned = task_result(run, "spot_pool_init")
    assert planned["changed"] is True and planned["would_launch"] == 2 and planned["launched"] == []
    assert not pool.state_file.exists() and _ids(pool) == set()
    assert pool.ec2.describe_launch_templates()["LaunchTemplates"] == []

    first = task_result(pool.init(size=2), "spot_pool_init")
    assert first["changed"] is True and len(first["launched"]) == 2
    launched = _ids(pool)

    # The same init again: the pool is whole, so nothing is launched and nothing reported as changed.
    again = task_result(pool.init(size=2), "spot_pool_init")
    assert again["changed"] is False and again["launched"] == [] and again["terminated"] == []
    assert again["counts"] == first["counts"]
    assert _ids(pool) == launched

    # A lease to release later, taken without starting the refill so the file stays still while we compare it.
    rc, lease = pool.module("spot_pool_get", refill=False)
    assert rc == 0, lease
    before = pool.state_bytes()

    def assert_unchanged(what):
        assert pool.state_bytes() == before, f"check-mode {what} wrote the pool file"
        assert _ids(pool) == launched, f"check-mode {what} launched or lost an instance"
        assert all(inst["State"]["Name"] == "running" for inst in pool.tagged_instances()), what
        assert pool.refill_pids() == [], f"check-mode {what} started a refill job"

    run = pool.init(size=3, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_init")["would_launch"] == 2  # 1 idle left of 3 wanted
    assert_unchanged("init")

    run = pool.playbook("get_instance.yml", check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_get")["instance_id"] in launched - {lease["instance_id"]}
    assert_unchanged("get")

    run = pool.playbook("release_instance.yml", check=True, spot_pool_instance_id=lease["instance_id"],
                        spot_pool_lease_id=lease["lease_id"])
    assert run.rc == 0, run.stdout[-3000:]
    assert debug_msgs(run) == [f"{lease['instance_id']}: terminate"]
    assert_unchanged("release")

    run = pool.playbook("terminate_all.yml", check=True)
    assert run.rc == 0, run.stdout[-3000:]
    would_end = task_result(run, "spot_pool_terminate")
    assert would_end["changed"] is True and set(would_end["terminated"]) == launched
    assert_unchanged("terminate")


def test_check_mode_on_a_new_pool_creates_no_files(pool):
    run = pool.init(size=2, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert not pool.state_dir.exists(), sorted(p.name for p in pool.state_dir.iterdir())


@pytest.mark.parametrize("size, extra_vars, expected", [
    (2, {"spot_pool_availability_zones": ["us-east-1a", "us-east-1z"]}, ["unknown availability zone", "us-east-1z"]),
    (2, {"spot_pool_instance_types": ["t3.micro", "t3.bogus"]}, ["instance_types", "t3.bogus"]),
    (-1, {}, ["size must be 0 or more", "-1"]),
], ids=["unknown-zone", "bad-instance-type", "negative-size"])
def test_init_rejects_bad_input_and_changes_nothing(pool, size, extra_vars, expected):
    run = pool.init(size=size, **extra_vars)
    assert run.rc != 0
    msg = task_result(run, "spot_pool_init")["msg"]
    for words in expected:
        assert words in msg, msg
    assert not pool.state_file.exists(), "a rejected init writes no pool"
    assert pool.tagged_instances() == []
    assert pool.refill_pids() == []


def test_corrupt_pool_file_is_named_and_left_untouched(pool):
    pool.state_dir.mkdir(mode=0o700)
    pool.state_file.write_text('{"version": 1, "pool_name": "default", "instances": [{"id": "i-0')
    os.chmod(pool.state_file, 0o600)
    before = pool.state_bytes()

    for playbook, module, extra in (
        ("init_pool.yml", "spot_pool_init", {"spot_pool_size": 1, "spot_pool_image_id": AMI}),
        ("get_instance.yml", "spot_pool_get", {}),
        ("release_instance.yml", "spot_pool_release", {"spot_pool_instance_id": "latest"}),
    ):
        run = pool.playbook(playbook, **extra)
        assert run.rc != 0, f"{playbook} accepted a corrupt pool file"
        msg = task_result(run, module)["msg"]
        assert str(pool.state_file) in msg and "not valid JSON" in msg, msg
        assert "spot_pool_init" in msg or "spot_pool_terminate" in msg, f"no way to recover in: {msg}"
        assert pool.state_bytes() == before
        assert stat.S_IMODE(pool.state_file.stat().st_mode) == 0o600
    assert pool.tagged_instances() == []
    assert pool.refill_pids() == []


def test_no_credentials_fail_clearly_and_change_nothing(pool, tmp_path, monkeypatch):
    assert pool.init(size=1).rc == 0
    before = pool.state_bytes()
    instances = pool.tagged_instances()

    # No credentials anywhere boto3 looks: no AWS_* variables, empty config and credential files, a HOME without
    # ~/.aws, and the instance metadata service disabled (it would otherwise be asked, off this machine).
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty"
    empty.write_text("")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_URL": pool.env["AWS_URL"],
           "AWS_ENDPOINT_URL": pool.env["AWS_URL"], "AWS_REGION": pool.env["AWS_REGION"],
           "XDG_STATE_HOME": pool.env["XDG_STATE_HOME"]}

    for playbook, module, extra in (
        ("init_pool.yml", "spot_pool_init", {"spot_pool_size": 2, "spot_pool_image_id": AMI}),
        ("get_instance.yml", "spot_pool_get", {"spot_pool_verify_max_age": 0}),  # must ask EC2 before handing out
    ):
        run = run_playbook(playbook, pool.vars(**extra), env=env)
        assert run.rc != 0, f"{playbook} succeeded without credentials"
        msg = task_result(run, module)["msg"]
        assert "credentials" in msg.lower(), msg
        assert pool.state_bytes() == before
    assert pool.tagged_instances() == instances
    assert pool.refill_pids() == []


def test_adhoc_get_then_no_ready_instance_and_unknown_release(pool):
    assert pool.init(size=1).rc == 0

    # `ansible localhost -m ec2spot.pool.spot_pool_get`, as a CI step might call it. No refill: the next get
    # must find the pool empty.
    rc, got = pool.module("spot_pool_get", refill=False, address="private")
    assert rc == 0, got
    inst = pool.instance(got["instance_id"])
    assert inst["State"]["Name"] == "running"
    assert got["ip"] == inst["PrivateIpAddress"] and got["public_ip"] == inst["PublicIpAddress"]
    assert [lease["id"] for lease in pool.state()["leases"]] == [got["instance_id"]]
    before = pool.state_bytes()

    run = pool.playbook("get_instance.yml")
    assert run.rc != 0
    failed = task_result(run, "spot_pool_get")
    assert failed["msg"].startswith("pool 'default' has 0 ready of 1; 0 pending; 1 leased"), failed["msg"]
    assert failed["counts"] == {"target": 1, "ready": 0, "pending": 0, "leased": 1, "spot": 0, "fallback": 0}
    # The failed get leased nothing, and (re)started the refill job to make the pool whole again.
    assert "the refill job was started (pid " in failed["msg"], failed["msg"]
    assert pool.state()["leases"] == json.loads(before)["leases"]
    wait_until(lambda: not pool.refill_pids(), timeout=40, what="the refill job finished")
    assert pool.state()["leases"] == json.loads(before)["leases"] and pool.info()["counts"]["ready"] == 1
    before = pool.state_bytes()

    unknown = "i-0123456789abcdef0"
    run = pool.playbook("release_instance.yml", spot_pool_instance_id=unknown)
    assert run.rc != 0
    msg = task_result(run, "spot_pool_release")["msg"]
    assert unknown in msg and "not leased" in msg and got["instance_id"] in msg, msg
    assert pool.state_bytes() == before
    assert pool.instance(got["instance_id"])["State"]["Name"] == "running"


# -- bad input, module by module ------------------------------------------------------------------------------
# Each case runs against a pool `default` of two instances, one of them leased, and must fail (or, for a release
# that names nothing it holds, succeed with changed=false) with a message naming the option and the fix, while the
# pool file keeps its bytes, the state directory its files, and every instance of the pool its state.
LEASED = "<leased>"  # stands for the leased instance's id in the cases below
BAD_INPUT = [
    # (module, args, rc, words the message must contain)
    ("spot_pool_init", {"size": 10000}, 2, ["size 10000 is above max_size 100", "set max_size to 10000"]),
    ("spot_pool_init", {"size": 1, "max_size": 0}, 2, ["max_size must be 1 or more"]),
    ("spot_pool_init", {"size": 2, "tags": {"ec2spot:pool": "other"}}, 2,
     ["tags: ec2spot:pool is in the collection's own namespace 'ec2spot:'", "rename it"]),
    ("spot_pool_init", {"size": 2, "tags": {"team": "ci", "EC2SPOT:Leased-At": "x"}}, 2, ["EC2SPOT:Leased-At"]),
    ("spot_pool_init", {"size": 2, "wait_timeout": -1}, 2, ["wait_timeout must be 0 or more, got -1"]),
    ("spot_pool_init", {"size": 2, "cooldown": -1}, 2, ["cooldown must be 0 or more, got -1"]),
    ("spot_pool_init", {"size": 2, "orphan_grace": -30}, 2, ["orphan_grace must be 0 or more, got -30"]),
    ("spot_pool_init", {"size": 2, "pool_name": ""}, 2, ["pool_name is empty", "pool_name: default"]),
    ("spot_pool_init", {"size": 2, "pool_name": "default\n"}, 2, ["pool_name 'default\\n' is not valid"]),
    ("spot_pool_init", {"size": 2, "image_id": None, "launch_template": {"name": "no-such-template"}}, 2,
     ["launch_template no-such-template does not exist in region us-east-1", "create it first"]),
    ("spot_pool_init", {"size": 2, "image_id": None, "launch_template": {"id": "lt-0123456789abcdef0"}}, 2,
     ["launch_template lt-0123456789abcdef0 does not exist"]),
    ("spot_pool_init", {"size": 2, "image_id": None, "launch_template": {"version": "1"}}, 2,
     ["launch_template needs an id or a name"]),
    ("spot_pool_get", {"pool_name": ""}, 2, ["pool_name is empty"]),
    ("spot_pool_get", {"pool_name": "default\n"}, 2, ["is not valid"]),
    ("spot_pool_get", {"wait_timeout": -1}, 2, ["wait_timeout must be 0 or more, got -1"]),
    ("spot_pool_get", {"verify_max_age": -1}, 2, ["verify_max_age must be 0 or more, got -1"]),
    ("spot_pool_release", {"pool_name": "", "instance_id": "latest"}, 2, ["pool_name is empty"]),
    ("spot_pool_release", {"pool_name": "default\n", "instance_id": "latest"}, 2, ["is not valid"]),
    ("spot_pool_release", {"instance_id": ""}, 0, ["nothing released from pool 'default'", "instance_id=latest"]),
    ("spot_pool_release", {}, 0, ["no instance_id and no lease_id given"]),
    ("spot_pool_release", {"instance_id": LEASED, "lease_id": "0" * 32}, 0,
     ["lease 00000000000000000000000000000000 is not held any more", "is not touched"]),
    ("spot_pool_release", {"instance_id": "latest", "lease_id": "0" * 32}, 2,
     ["instance_id=latest and lease_id exclude each other"]),
    ("spot_pool_terminate", {"pool_name": ""}, 2, ["pool_name is empty"]),
    ("spot_pool_terminate", {"pool_name": "default\n"}, 2, ["is not valid"]),
    ("spot_pool_terminate", {"pool_name": "default "}, 2, ["is not valid"]),
    ("spot_pool_info", {"pool_name": ""}, 2, ["pool_name is empty"]),
    ("spot_pool_info", {"pool_name": "default\n"}, 2, ["is not valid"]),
    ("spot_pool_reconcile", {"pool_name": ""}, 2, ["pool_name is empty"]),
    ("spot_pool_reconcile", {"pool_name": "default\n"}, 2, ["is not valid"]),
    ("spot_pool_reconcile", {"wait_timeout": -1}, 2, ["wait_timeout must be 0 or more, got -1"]),
    ("spot_pool_reconcile", {"pool_name": "nosuch"}, 2, ["pool 'nosuch' does not exist", "spot_pool_init"]),
    # An empty option that says where the pool lives (an unset CI variable) is never its default: with the default
    # state directory or table, terminate would end a pool of that name there (or another controller's).
    ("spot_pool_terminate", {"state_dir": ""}, 2, ["state_dir is empty", "leave the option out"]),
    ("spot_pool_terminate", {"pool_file": ""}, 2, ["pool_file is empty"]),
    ("spot_pool_terminate", {"dynamodb_table": ""}, 2, ["dynamodb_table is empty", "ec2spot-pool"]),
    ("spot_pool_terminate", {"dynamodb_table": " ", "store": "dynamodb"}, 2, ["dynamodb_table is empty"]),
    ("spot_pool_init", {"size": 2, "state_dir": ""}, 2, ["state_dir is empty"]),
    ("spot_pool_get", {"pool_file": ""}, 2, ["pool_file is empty"]),
    ("spot_pool_release", {"state_dir": "", "instance_id": "latest"}, 2, ["state_dir is empty"]),
    ("spot_pool_info", {"dynamodb_table": ""}, 2, ["dynamodb_table is empty"]),
    ("spot_pool_reconcile", {"pool_file": ""}, 2, ["pool_file is empty"]),
]


@pytest.fixture
def leased_pool(pool):
    """Pool `default`: two instances, one leased. Made by module_utils directly (a second is faster than a play)."""
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool import operations as ops
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.filestore import FileStore
    from tests.support.moto import POOL_LAUNCH

    store = FileStore(str(pool.state_file), pool.pool_name)
    ops.init_pool(store, pool.ec2, ops.InitRequest(2, dict(POOL_LAUNCH), wait=True, wait_timeout=60))
    pool.lease = ops.get_instance(store, None, verify=False, refill=False)
    return pool


def _snapshot(pool) -> tuple:
    return (pool.state_bytes(), sorted(p.name for p in pool.state_dir.iterdir()),
            sorted((inst["InstanceId"], inst["State"]["Name"]) for inst in pool.tagged_instances()),
            sorted(t["LaunchTemplateName"] for t in pool.ec2.describe_launch_templates()["LaunchTemplates"]))


@pytest.mark.parametrize("module, args, rc, expected", BAD_INPUT,
                         ids=[f"{case[0][10:]}-{'-'.join(f'{k}={v!r}' for k, v in case[1].items()) or 'no-args'}"
                              for case in BAD_INPUT])
def test_modules_refuse_bad_input_and_change_nothing(leased_pool, module, args, rc, expected):
    pool = leased_pool
    before = _snapshot(pool)
    args = {key: (pool.lease["instance_id"] if value == LEASED else value) for key, value in args.items()}
    if module == "spot_pool_init":
        args = {"image_id": AMI, "availability_zones": ["us-east-1a"], **args}
        args = {key: value for key, value in args.items() if value is not None}
    got_rc, result = pool.module(module, **args)
    assert got_rc == rc, result
    for words in expected:
        assert words in result["msg"], result["msg"]
    if rc == 0:
        assert result["changed"] is False and result["instance_id"] is None, result
    assert _snapshot(pool) == before
    assert pool.instance(pool.lease["instance_id"])["State"]["Name"] == "running"
    assert pool.refill_pids() == []


BAD_PLAYBOOK_INPUT = [
    # (playbook, extra vars, the module it runs, words of the message); `-e spot_pool_name=` is the empty string.
    ("terminate_all.yml", {"spot_pool_name": ""}, "spot_pool_terminate", ["pool_name is empty"]),
    ("get_instance.yml", {"spot_pool_name": ""}, "spot_pool_get", ["pool_name is empty"]),
    ("release_instance.yml", {"spot_pool_name": "", "spot_pool_instance_id": "latest"}, "spot_pool_release",
     ["pool_name is empty"]),
    ("reconcile_pool.yml", {"spot_pool_name": ""}, "spot_pool_reconcile", ["pool_name is empty"]),
    ("init_pool.yml", {"spot_pool_name": "", "spot_pool_size": 2, "spot_pool_image_id": AMI}, "spot_pool_init",
     ["pool_name is empty"]),
    ("init_pool.yml", {"spot_pool_size": 10000, "spot_pool_image_id": AMI}, "spot_pool_init",
     ["size 10000 is above max_size 100"]),
    ("init_pool.yml", {"spot_pool_size": 2, "spot_pool_image_id": AMI, "spot_pool_tags": {"ec2spot:type": "spot"}},
     "spot_pool_init", ["tags: ec2spot:type is in the collection's own namespace"]),
    ("init_pool.yml", {"spot_pool_size": 2, "spot_pool_image_id": AMI, "spot_pool_cooldown": -5}, "spot_pool_init",
     ["cooldown must be 0 or more, got -5"]),
    ("terminate_all.yml", {"spot_pool_state_dir": ""}, "spot_pool_terminate", ["state_dir is empty"]),
    ("terminate_all.yml", {"spot_pool_dynamodb_table": ""}, "spot_pool_terminate", ["dynamodb_table is empty"]),
    ("release_instance.yml", {"spot_pool_state_dir": "", "spot_pool_instance_id": "latest"}, "spot_pool_release",
     ["state_dir is empty"]),
]


@pytest.mark.parametrize("playbook, extra, module, expected", BAD_PLAYBOOK_INPUT,
                         ids=[case[0][:-4] + "-" + "-".join(f"{key[10:]}={value!r}" for key, value in case[1].items()
                                                            if key != "spot_pool_image_id")
                              for case in BAD_PLAYBOOK_INPUT])
def test_playbooks_refuse_bad_input_and_change_nothing(leased_pool, playbook, extra, module, expected):
    pool = leased_pool
    before = _snapshot(pool)
    run = pool.playbook(playbook, **extra)
    assert run.rc != 0, f"{playbook} accepted {extra}"
    msg = task_result(run, module)["msg"]
    for words in expected:
        assert words in msg, msg
    assert _snapshot(pool) == before
    assert pool.refill_pids() == []


def test_a_release_step_that_names_nothing_changes_nothing(leased_pool):
    # The seed's always-run cleanup: release_instance.yml without an id. It released the most recent lease.
    pool = leased_pool
    before = _snapshot(pool)
    run = pool.playbook("release_instance.yml", spot_pool_instance_id="")
    assert run.rc == 0, run.stdout[-3000:]
    assert task_result(run, "spot_pool_release")["changed"] is False
    assert debug_msgs(run)[0].startswith("no lease: none (nothing released from pool 'default': no instance_id")
    assert _snapshot(pool) == before


# -- a full disk during get -----------------------------------------------------------------------------------------
def _fill(directory, leave: int) -> Path:
    """Fill the file system of `directory` until `leave` bytes are free; returns the filler file."""
    filler = Path(directory) / "filler"
    info = os.statvfs(directory)
    size = max(0, info.f_bavail * info.f_frsize - leave)
    with open(filler, "wb") as handle:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            written = handle.write(chunk[:min(size, len(chunk))])
            size -= written
    return filler


@pytest.fixture
def small_state_fs(tmp_path):
    """A 4 MB tmpfs for a pool's state directory (the tests run as root); unmounted in teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_get_leaves_no_lease_nobody_holds(make_pool, ec2, aws_env, small_state_fs):
    pool = make_pool(ec2, aws_env)
    pool.state_dir = small_state_fs / "pools"
    filler = None
    try:
        assert pool.init(size=3).rc == 0

        # 16 KB free: the lease fits, starting the refill job (its code copy, its log) does not. The get stands,
        # with a warning; the lease in the file is the one the caller was given.
        filler = _fill(small_state_fs, leave=16 << 10)
        run = pool.playbook("get_instance.yml")
        assert run.rc == 0, run.stdout[-3000:]
        got = task_result(run, "spot_pool_get")
        assert [lease["id"] for lease in pool.state()["leases"]] == [got["instance_id"]]
        assert got["refill"]["started"] is False and "No space left on device" in got["refill"]["error"]
        assert any("No space left on device" in warning for warning in got.get("warnings", [])), got

        # Nothing free: the lease cannot be written, so the get fails and leaves the file as it was.
        filler.unlink()
        filler = _fill(small_state_fs, leave=0)
        before = pool.state_bytes()
        run = pool.playbook("get_instance.yml")
        assert run.rc != 0
        msg = task_result(run, "spot_pool_get")["msg"]
        assert "No space left on device" in msg and "nothing was leased" in msg, msg
        assert pool.state_bytes() == before
        assert [lease["id"] for lease in pool.state()["leases"]] == [got["instance_id"]]
    finally:
        if filler is not None:
            filler.unlink()
        problems = end_pool(pool)  # before the unmount: nothing of the pool may keep the file system busy
    assert not problems, problems


# -- init checks where the pool will live before it makes anything in EC2 ----------------------------------------
def test_an_init_refused_for_its_state_directory_makes_nothing_in_ec2(make_pool, ec2, aws_env, tmp_path):
    """A state directory still to be made under a parent others may write to is refused before the pool's launch
    template is made: a template left behind would make every later init of the name fail as another pool's."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    pool = make_pool(ec2, aws_env, "gw")
    private = pool.state_dir
    pool.state_dir = shared / "state"
    for check in (True, False):
        run = pool.init(size=1, check=check)
        assert run.rc != 0, run.stdout[-3000:]
        msg = task_result(run, "spot_pool_init")["msg"]
        assert f"the parent {shared} of state directory {pool.state_dir} can be written by other users" in msg, msg
    assert ec2.describe_launch_templates()["LaunchTemplates"] == [] and pool.tagged_instances(any_pool=True) == []
    assert sorted(shared.iterdir()) == []

    pool.state_dir = private
    run = pool.init(size=1)
    assert run.rc == 0, run.stdout[-3000:]
    assert len(task_result(run, "spot_pool_init")["launched"]) == 1
