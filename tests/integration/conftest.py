"""Fixtures for the pool's integration tests: a private state directory per test, a helper that runs the
playbooks and modules against it, and a teardown that ends the pool and proves no refill job outlived the test.

Every pool a test creates lives in its own state directory under tmp_path, so the refill job of one test can
never touch the pool of another, and `pgrep -f <state dir>` finds exactly the processes of this test.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from tests.support.ansible import Run, run_module, run_playbook
from tests.support.moto import REGION

AMI = "ami-12c6146b"  # an image moto knows
POOL_TAG = "ec2spot:pool"
POOL_ID_TAG = "ec2spot:pool-id"
TYPE_TAG = "ec2spot:type"
# The EC2 calls that launch instances. The launcher makes instant CreateFleet calls only; rules and counts name
# RunInstances too, so that a launch that went another way would still be slowed, failed and counted.
LAUNCH_ACTIONS = ("RunInstances", "CreateFleet")


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (the refill job's has its state file path)."""
    proc = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True, check=False)  # 1: none found
    return [int(pid) for pid in proc.stdout.split() if int(pid) != os.getpid()]


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last value: {value!r})")
        time.sleep(interval)


class PoolHarness:
    """One pool in a private state directory, driven through the real playbooks and ad-hoc module calls.

    With `table` (and `dynamodb`, a boto3 DynamoDB client the test reads the table with), the pool lives in that
    DynamoDB table (store=dynamodb is passed to every run); the state directory keeps only the refill job's log
    and code copy."""

    def __init__(self, state_dir: Path, ec2, pool_name: str = "default", table: str | None = None, dynamodb=None):
        self.state_dir = state_dir
        self.pool_name = pool_name
        self.ec2 = ec2
        self.table = table
        self.dynamodb = dynamodb
        self.env: dict[str, str] = {"XDG_STATE_HOME": str(state_dir.parent / "xdg")}

    @property
    def store_args(self) -> dict:
        """The module options that name this pool's store (none for the default file store)."""
        return {"store": "dynamodb", "dynamodb_table": self.table} if self.table else {}

    # -- paths and the state file ----------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.pool_name}.json"

    @property
    def refill_log(self) -> Path:
        if self.table:
            return self.state_dir / f"dynamodb-{self.table}-{self.pool_name}.refill.log"
        return Path(str(self.state_file) + ".refill.log")

    def state(self) -> dict | None:
        if self.table:
            try:
                return DynamoStore(self.dynamodb, self.table, self.pool_name, str(self.state_dir)).read()
            except PoolError as exc:
                if exc.details.get("error_code") == "ResourceNotFoundException":
                    return None
                raise
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text())

    def table_items(self, any_pool: bool = False) -> list[dict]:
        """The table's items (this pool's, or with `any_pool` all of them), sorted by key; [] without a table."""
        if not self.table or self.table not in self.dynamodb.list_tables()["TableNames"]:
            return []
        pages = self.dynamodb.get_paginator("scan").paginate(TableName=self.table, ConsistentRead=True)
        items = [item for page in pages for item in page["Items"]
                 if any_pool or item.get("pool", {}).get("S") == self.pool_name]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))

    def state_bytes(self) -> bytes | None:
        return self.state_file.read_bytes() if self.state_file.exists() else None

    def assert_private_files(self) -> None:
        """The pool file is 0600 in a 0700 directory (it can hold user data and says where the instances are)."""
        assert stat.S_IMODE(self.state_dir.stat().st_mode) == 0o700, oct(self.state_dir.stat().st_mode)
        assert stat.S_IMODE(self.state_file.stat().st_mode) == 0o600, oct(self.state_file.stat().st_mode)

    # -- running Ansible -------------------------------------------------------------------------------------
    def vars(self, **extra) -> dict:
        store = {"spot_pool_store": "dynamodb", "spot_pool_dynamodb_table": self.table} if self.table else {}
        return {"spot_pool_state_dir": str(self.state_dir), "spot_pool_name": self.pool_name, **store, **extra}

    def playbook(self, name: str, check: bool = False, json_output: bool = True, env: dict | None = None,
                 **extra_vars) -> Run:
        return run_playbook(name, self.vars(**extra_vars), env={**self.env, **(env or {})}, check=check,
                            json_output=json_output)

    def init(self, size: int = 3, check: bool = False, **extra_vars) -> Run:
        return self.playbook("init_pool.yml", check=check, spot_pool_size=size, spot_pool_image_id=AMI,
                             **extra_vars)

    def module(self, name: str, check: bool = False, env: dict | None = None, **args) -> tuple[int, dict]:
        return run_module(name, {"state_dir": str(self.state_dir), "pool_name": self.pool_name, **self.store_args,
                                 **args},
                          env={**self.env, **(env or {})}, check=check)

    def info(self) -> dict:
        rc, result = self.module("spot_pool_info")
        assert rc == 0, result
        return result

    # -- EC2 -------------------------------------------------------------------------------------------------
    @property
    def pool_id(self) -> str | None:
        """The pool's id, as its state file said it when last seen (kept after terminate removed the file)."""
        try:
            state = self.state()
        except ValueError:  # a test's corrupt pool file
            state = None
        if isinstance(state, dict) and state.get("pool_id"):
            self._pool_id = state["pool_id"]
        return getattr(self, "_pool_id", None)

    def tagged_instances(self, states=("pending", "running", "stopping", "stopped", "shutting-down"),
                         any_pool: bool = False) -> list[dict]:
        """Every instance that carries this pool's tags (name, and id once known; with `any_pool`, the name only),
        in the given states (default: all but terminated)."""
        filters = [{"Name": f"tag:{POOL_TAG}", "Values": [self.pool_name]},
                   {"Name": "instance-state-name", "Values": list(states)}]
        if not any_pool and self.pool_id:
            filters.append({"Name": f"tag:{POOL_ID_TAG}", "Values": [self.pool_id]})
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [inst for page in pages for res in page["Reservations"] for inst in res["Instances"]]

    def instance(self, instance_id: str) -> dict:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]

    # -- processes -------------------------------------------------------------------------------------------
    def refill_pids(self) -> list[int]:
        return processes_mentioning(str(self.state_dir))


def tags_of(instance: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}


def task_result(run: Run, module: str) -> dict:
    """The result of the playbook task that ran `ec2spot.pool.<module>`.

    Each playbook runs its module in its first task. (The json callback writes the task's action into the
    result's `action` key, hiding the `action` that spot_pool_release returns: read that one from `debug_msgs`.)"""
    results = run.task_results()
    assert results and results[0].get("action") == f"ec2spot.pool.{module}", \
        f"no {module} task result (rc={run.rc}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return results[0]


def debug_msgs(run: Run) -> list[str]:
    """What the playbook's debug tasks printed."""
    return [r["msg"] for r in run.task_results() if r.get("action") == "ansible.builtin.debug" and "msg" in r]


def end_pool(harness: PoolHarness) -> list[str]:
    """Terminate the pool (which stops its refill job first); return what is still wrong after it, if anything."""
    problems = []
    harness.pool_id  # pylint: disable=pointless-statement  # remember the id before terminate removes the file
    if harness.state_file.exists() or harness.table_items() or harness.tagged_instances(states=("pending", "running")):
        # Fallbacks are terminated too: a test must leave nothing running in the emulator for the next one.
        runs = [harness.module("spot_pool_terminate", fallback_action="terminate")]
        if runs[0][0] != 0 and runs[0][1].get("pool_ids"):
            # No pool id in the store (the test lost or replaced its file): terminate ends only a pool it is told.
            # The harness's own id if it saw one, else every pool of the name (the test's pools all end anyway).
            runs = [harness.module("spot_pool_terminate", fallback_action="terminate", pool_id=pool_id)
                    for pool_id in ([harness.pool_id] if harness.pool_id else runs[0][1]["pool_ids"])]
        problems += [f"spot_pool_terminate failed: {result.get('msg')}" for rc, result in runs if rc != 0]
        left = [inst["InstanceId"] for inst in harness.tagged_instances(states=("pending", "running"))]
        if left:
            problems.append(f"instances with the pool tag still running: {left}")
    try:
        wait_until(lambda: not harness.refill_pids(), timeout=10, what="no refill process")
    except AssertionError:
        pids = harness.refill_pids()
        problems.append(f"processes outlived spot_pool_terminate: {pids}")
        for pid in pids:  # ours (their command line names our tmp dir): do not let them leak into other tests
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return problems


@pytest.fixture
def make_pool(tmp_path):
    """Factory for PoolHarness objects. Every pool made is ended with spot_pool_terminate in teardown, even when
    the test failed, and the test errors if that fails, leaves an instance running, or a process of the pool's
    state directory survives it.

    Each harness keeps the AWS environment it was made with and passes it to every run: by the time this
    teardown runs, the monkeypatched os.environ of `aws_env` may already be undone, and a run without it
    must never fall through to real AWS."""
    made: list[PoolHarness] = []

    def make(ec2, aws: dict[str, str], pool_name: str = "default", table: str | None = None,
             dynamodb=None) -> PoolHarness:
        harness = PoolHarness(tmp_path / f"state-{len(made)}", ec2, pool_name, table, dynamodb)
        harness.env.update(aws)
        made.append(harness)
        return harness

    yield make
    problems = {str(harness.state_dir): found for harness in made if (found := end_pool(harness))}
    assert not problems, f"the pool was not ended cleanly: {problems}"


@pytest.fixture
def pool(make_pool, ec2, aws_env) -> PoolHarness:
    """A pool on the plain moto server."""
    return make_pool(ec2, aws_env)


@pytest.fixture
def faulty_pool(make_pool, fault_env, fault_proxy) -> PoolHarness:
    """A pool whose every EC2 call (modules and refill job) goes through the fault proxy; `pool.proxy` sets the
    faults. The test's own EC2 client talks to moto directly, so its checks never meet an injected fault."""
    client = boto3.client("ec2", region_name=REGION, endpoint_url=fault_proxy.upstream.url)
    harness = make_pool(client, fault_env)
    harness.proxy = fault_proxy
    return harness


@pytest.fixture
def shared_pool(tmp_path, fault_env, fault_proxy):
    """One pool in a DynamoDB table of its own, shared by controllers that share nothing else (made with
    `shared_pool.controller()` / `.start(n)`; see tests/integration/controllers.py). Every request of every
    controller goes through the fault proxy. Teardown terminates the pool, fails the test if that fails, leaves
    an instance running, or any process of any controller (a refill job) survives it, and ends the controllers."""
    from tests.integration.controllers import SharedPool  # pylint: disable=import-outside-toplevel  # imports us

    shared = SharedPool(tmp_path, fault_proxy, table="ec2spot-pool-" + os.urandom(4).hex())
    try:
        yield shared
    finally:
        problems = shared.end()
    assert not problems, f"the shared pool was not ended cleanly: {problems}"
