"""Several Ansible controllers sharing one pool through one DynamoDB table, for the shared-pool tests
(test_pool_shared.py) and the `shared_pool` fixture of tests/integration/conftest.py.

A controller here is what a CI runner is: its own HOME, XDG_STATE_HOME and state directory, its own processes
(every ansible-playbook run, every module, every detached refill job it starts), and nothing in common with the
other controllers but the AWS side: one moto server, reached through the fault proxy (which forwards DynamoDB
requests one at a time, as DynamoDB applies each conditional write atomically, and records every request so tests
can count CreateFleet calls and their ClientTokens).

Each controller lives in its own PID and UTS namespace (and a mount namespace for its /proc) when the machine
allows it (root, util-linux `unshare`): a long-lived init process per controller reaps its orphans, and every run
enters its namespaces with `nsenter`. So a controller sees only its own processes and has its own host name, as a
runner on another machine does: a pid recorded in the table by one controller's refill job means nothing to
another (a stop "by pid" across controllers is caught instead of working only because they share one kernel),
and refill lease holders (host:pid:random) differ. Without that privilege the controllers share the pid space;
`Controller.isolated` says which.

Every process of a controller, in or out of the namespaces, carries the marker CONTROLLER_ENV in its
environment (the refill job inherits the module's environment): that is how the tests find a controller's refill
job to SIGKILL it, and how the teardown proves that none outlived the test.

Not a test module: pytest does not collect it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3

from tests.integration.conftest import AMI, POOL_TAG, task_result, wait_until
from tests.support.ansible import REPO, Run, run_module, run_playbook
from tests.support.moto import REGION
from tests.support.processes import cmdline_of, pids_with_env

CONTROLLER_ENV = "EC2SPOT_TEST_CONTROLLER"
# The refill job's command line names this module (jobcontrol.REFILL_MODULE).
REFILL_MODULE = "ec2spot.pool.plugins.module_utils._pool.refill"
LIVE = ("pending", "running", "stopping", "stopped", "shutting-down")

# The init of a controller's PID namespace: sets the namespace's host name, says it is ready, then reaps the
# orphans reparented to it (the detached refill jobs, once the module that started them has exited).
NAMESPACE_INIT = """
import os, socket, sys, time
socket.sethostname(sys.argv[1])
sys.stdout.write("ready\\n")
sys.stdout.flush()
os.close(1)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether this machine lets the tests give each controller its own PID, mount and UTS namespaces."""
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--uts", "true"], capture_output=True,
                           stdin=subprocess.DEVNULL, check=False, timeout=30)
    return probe.returncode == 0


class Controller:
    """One Ansible controller of a shared pool: its own HOME, XDG_STATE_HOME (its state directory is the default
    one under it: $XDG_STATE_HOME/ec2spot) and processes; runs the real playbooks and modules with the pool's
    store settings (`store`: "dynamodb", on the shared table, or "file", in its own state directory)."""

    def __init__(self, root: Path, name: str, aws: dict[str, str], pool_name: str, table: str,
                 store: str = "dynamodb", isolate: bool = True):
        self.name = name
        self.root = root
        self.pool_name = pool_name
        self.table = table
        self.store = store
        self.home = root / "home"
        self.xdg_state_home = root / "xdg-state"
        self.state_dir = self.xdg_state_home / "ec2spot"
        self.home.mkdir(parents=True, mode=0o700)
        self.xdg_state_home.mkdir(mode=0o700)
        self.marker = str(root)
        self.env = {**aws, "HOME": str(self.home), "XDG_STATE_HOME": str(self.xdg_state_home),
                    CONTROLLER_ENV: self.marker}
        self.isolated = isolate and namespaces_available()
        self._unshare: subprocess.Popen | None = None
        self.init_pid: int | None = None  # host pid of the namespace's init
        self.torn_down = False  # stop() ended it, as a CI runner's machine goes away with its job

    def __repr__(self) -> str:
        return f"<controller {self.name} ({self.store})>"

    # -- its namespaces ----------------------------------------------------------------------------------------
    def start(self) -> "Controller":
        if not self.isolated or self._unshare is not None:
            return self
        # --kill-child: should unshare die, its namespace goes with it. No marker in the init's environment: it is
        # the controller's machine, not one of its processes.
        self._unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--kill-child", sys.executable, "-c",
             NAMESPACE_INIT, f"ctl-{self.name}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            assert self._unshare.stdout.readline() == b"ready\n", f"the namespace of {self} did not start"
            self.init_pid = wait_until(lambda: self._children(self._unshare.pid), timeout=30,
                                       interval=0.05, what=f"the init of {self}")[0]
        except BaseException:
            self.stop()
            raise
        finally:
            self._unshare.stdout.close()
        return self

    @staticmethod
    def _children(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                return [int(child) for child in handle.read().split()]
        except OSError:
            return []

    def stop(self) -> None:
        """End the controller's machine: every process left in its namespace is killed with it (SIGKILL, by the
        kernel, as when an ephemeral runner is torn down mid-job)."""
        self.torn_down = True
        if self._unshare is None:
            return
        if self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        try:
            self._unshare.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._unshare.kill()
            self._unshare.wait()
        self._unshare = None
        self.init_pid = None

    @property
    def wrapper(self) -> list[str]:
        """The command prefix that runs a command as this controller (in its namespaces)."""
        if not self.isolated:
            return []
        assert self.init_pid is not None, f"{self} was not started"
        return ["nsenter", "-t", str(self.init_pid), "--pid", "--mount", "--uts", f"--wd={REPO}", "--"]

    # -- running Ansible -------------------------------------------------------------------------------------
    def store_vars(self) -> dict:
        """The playbook variables that choose this controller's store. The file store is the default: nothing."""
        if self.store == "file":
            return {}
        return {"spot_pool_store": self.store, "spot_pool_dynamodb_table": self.table}

    def store_args(self) -> dict:
        if self.store == "file":
            return {}
        return {"store": self.store, "dynamodb_table": self.table}

    def playbook(self, name: str, check: bool = False, env: dict | None = None, **extra_vars) -> Run:
        return run_playbook(name, {"spot_pool_name": self.pool_name, **self.store_vars(), **extra_vars},
                            env={**self.env, **(env or {})}, check=check, wrapper=self.wrapper)

    def module(self, name: str, check: bool = False, env: dict | None = None, **args) -> tuple[int, dict]:
        return run_module(name, {"pool_name": self.pool_name, **self.store_args(), **args},
                          env={**self.env, **(env or {})}, check=check, wrapper=self.wrapper)

    def init(self, size: int, check: bool = False, **extra_vars) -> Run:
        return self.playbook("init_pool.yml", check=check, spot_pool_size=size, spot_pool_image_id=AMI,
                             **extra_vars)

    def get(self, **extra_vars) -> Run:
        return self.playbook("get_instance.yml", **extra_vars)

    def reconcile(self, check: bool = False, **extra_vars) -> tuple[Run, dict]:
        run = self.playbook("reconcile_pool.yml", check=check, **extra_vars)
        return run, task_result(run, "spot_pool_reconcile")

    # -- its processes -----------------------------------------------------------------------------------------
    def processes(self) -> list[int]:
        """Every live process of this controller (host pids): Ansible runs, modules, refill jobs."""
        return pids_with_env(CONTROLLER_ENV, self.marker)

    def refill_jobs(self) -> list[int]:
        return [pid for pid in self.processes() if REFILL_MODULE in " ".join(cmdline_of(pid))]

    def kill_refill_job(self, timeout: float = 60.0) -> int:
        """SIGKILL this controller's running refill job (as when its runner is torn down)."""
        [pid] = wait_until(self.refill_jobs, timeout=timeout, interval=0.05, what=f"a refill job on {self}")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: pid not in self.processes(), timeout=30, interval=0.05, what=f"refill job {pid} gone")
        return pid

    def file_state(self) -> dict | None:
        path = self.state_dir / f"{self.pool_name}.json"
        return json.loads(path.read_text()) if path.exists() else None


def at_once(calls: list) -> list:
    """Run every call in a thread of its own, all released at the same moment; their results, in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = call()
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # shown below, not lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


class SharedPool:
    """One pool (`pool_name`) in one DynamoDB table (`table`) on the session's moto server, reached through the
    fault proxy (`proxy`), and the controllers that share it. The test's own clients (`ec2`, `dynamodb`) talk to
    moto directly: its checks never meet an injected fault and are never counted."""

    def __init__(self, root: Path, proxy, table: str, pool_name: str = "shared"):
        self.root = root
        self.proxy = proxy
        self.table = table
        self.pool_name = pool_name
        self.aws = proxy.env()
        self.ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=proxy.upstream.url)
        self.dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=proxy.upstream.url)
        self.controllers: list[Controller] = []

    def controller(self, store: str = "dynamodb", name: str | None = None) -> Controller:
        name = name or "abcdefghijklmnopqrstuvwxyz"[len(self.controllers)]
        made = Controller(self.root / f"controller-{name}", name, self.aws, self.pool_name, self.table, store)
        self.controllers.append(made)
        return made.start()

    def start(self, count: int, store: str = "dynamodb") -> list[Controller]:
        return [self.controller(store) for _number in range(count)]

    # -- the table ---------------------------------------------------------------------------------------------
    def table_exists(self) -> bool:
        return self.table in self.dynamodb.list_tables()["TableNames"]

    def items(self) -> list[dict]:
        """Every item of this pool in the table (strongly consistent), in key order, as DynamoDB has them."""
        if not self.table_exists():
            return []
        pages = self.dynamodb.get_paginator("query").paginate(
            TableName=self.table, ConsistentRead=True, KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": "pool"}, ExpressionAttributeValues={":p": {"S": self.pool_name}})
        return sorted((item for page in pages for item in page["Items"]), key=lambda item: item["item"]["S"])

    def items_bytes(self) -> bytes:
        """The pool's items, serialised: equal bytes, equal items."""
        return json.dumps(self.items(), sort_keys=True).encode()

    def item(self, key: str) -> dict | None:
        return next((item for item in self.items() if item["item"]["S"] == key), None)

    def state(self) -> dict | None:
        """The pool as the table holds it (the pool item's body, its instances and leases), or None."""
        items = {item["item"]["S"]: item for item in self.items()}
        if "pool" not in items:
            return None
        state = json.loads(items["pool"]["body"]["S"])
        listed = sorted((int(item["pos"]["N"]), item) for key, item in items.items()
                        if key.startswith(("inst#", "lease#")))
        state["instances"] = [json.loads(item["body"]["S"]) for _pos, item in listed if item["status"]["S"] == "idle"]
        state["leases"] = [json.loads(item["body"]["S"]) for _pos, item in listed if item["status"]["S"] == "leased"]
        return state

    def require_state(self) -> dict:
        """The pool's state in the table; fails clearly when the controllers did not use the table at all."""
        state = self.state()
        assert state is not None, (f"pool {self.pool_name!r} is not in DynamoDB table {self.table!r}: did the "
                                   f"playbooks use store=dynamodb? items: {self.items()}")
        return state

    def refill_lease(self) -> dict | None:
        """The refill lease item as plain values (holder, expires, fencing), or None."""
        item = self.item("refill-lease")
        if item is None:
            return None
        return {"holder": item.get("holder", {}).get("S"), "expires": float(item.get("expires", {"N": "0"})["N"]),
                "fencing": int(item.get("fencing", {"N": "0"})["N"])}

    def expire_refill_lease(self) -> dict:
        """Let the refill lease run out now, as time passing would: its `expires` is set one second into the past,
        on the condition that its holder is still the one read (a dead job's: nobody renews it). Whoever comes next
        compares `expires` against its own clock, as after a real expiry. The lease as it was is returned.

        (The lease lasts dynamo.REFILL_LEASE_SECONDS, minutes: a test does not wait that long, and a lease made
        short for every job would make a live job under load lose it.)"""
        lease = self.refill_lease()
        assert lease is not None and lease["holder"], f"no refill lease is held: {lease}"
        self.dynamodb.update_item(
            TableName=self.table, Key={"pool": {"S": self.pool_name}, "item": {"S": "refill-lease"}},
            UpdateExpression="SET #e = :past", ConditionExpression="#h = :holder",
            ExpressionAttributeNames={"#e": "expires", "#h": "holder"},
            ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}, ":holder": {"S": lease["holder"]}})
        return lease

    # -- EC2 -------------------------------------------------------------------------------------------------
    def tagged_instances(self, states=LIVE) -> list[dict]:
        """Every instance tagged with the pool's name, in the given states (default: all but terminated)."""
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{POOL_TAG}", "Values": [self.pool_name]},
                     {"Name": "instance-state-name", "Values": list(states)}])
        return [inst for page in pages for res in page["Reservations"] for inst in res["Instances"]]

    def instance_state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]["State"]["Name"]

    def launched(self, since: float | None = None) -> list[str]:
        """Instance ids really launched (instant fleets the proxy answered; a replayed token launches none)."""
        return [i for r in self.proxy.records("CreateFleet", outcome="fleet") if since is None or r.started >= since
                for i in r.instance_ids]

    def fleets(self, since: float | None = None) -> list:
        return [r for r in self.proxy.records("CreateFleet") if since is None or r.started >= since]

    # -- teardown ----------------------------------------------------------------------------------------------
    def end(self, grace: float = 10.0) -> list[str]:
        """Terminate the pool (from a controller of each store), check that no instance runs and no item of the pool
        is left in the table, then prove that no process of any controller outlived it (killing any survivor, so
        nothing leaks into the next test), then end the controllers' namespaces. Returns what was wrong."""
        problems = []
        for store in ("dynamodb", "file"):
            # The controller whose refill job runs, if one does: a terminate stops a refill job by its pid, which
            # only works on the job's own machine (see test_a_terminate_stops_another_controllers_refill_job). A
            # test that means a terminate from elsewhere runs it itself.
            mine = [c for c in self.controllers if c.store == store and not c.torn_down]
            ender = next((c for c in mine if c.refill_jobs()), mine[0] if mine else None)
            if ender is None:
                continue
            exists = self.state() is not None if store == "dynamodb" else ender.file_state() is not None
            if exists or self.tagged_instances(states=("pending", "running")):
                rc, result = ender.module("spot_pool_terminate", fallback_action="terminate")
                if rc != 0:
                    problems.append(f"spot_pool_terminate on {ender} failed: {result.get('msg')}")
        left = [inst["InstanceId"] for inst in self.tagged_instances(states=("pending", "running"))]
        if left:
            problems.append(f"instances with the pool tag still running: {left}")
        items = [item["item"]["S"] for item in self.items()]
        if items:
            problems.append(f"items of the pool left in table {self.table}: {items}")
        for controller in self.controllers:
            try:
                wait_until(lambda c=controller: not c.processes(), timeout=grace, what=f"no process of {controller}")
            except AssertionError:
                survivors = {pid: " ".join(cmdline_of(pid)) for pid in controller.processes()}
                problems.append(f"processes of {controller} outlived the test: {survivors}")
                for pid in survivors:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            controller.stop()
        with contextlib.suppress(Exception):  # moto is reset before the next test anyway
            self.dynamodb.delete_table(TableName=self.table)
        return problems
