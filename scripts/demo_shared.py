"""`make demo-shared`: the `make demo` cycle with two controllers that share one pool through a DynamoDB table, on
the embedded AWS emulator (a moto server on 127.0.0.1, which serves EC2 and DynamoDB on one endpoint).

Controllers A and B are two CI runners: each has its own HOME and state directory, and they share nothing but the
table (spot_pool_store=dynamodb). A inits the pool -> B gets an instance -> A gets one -> B releases A's lease by
its instance id -> A reconciles -> B terminates the pool. Every step is a real `ansible-playbook` run of the
playbooks users run. At the end no item of the pool is left in the table and no process of either controller (a
refill job) is left running; the demo fails if one is.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo import AMI, banner, playbook  # noqa: E402  # scripts/demo.py: the same steps, one controller
from tests.support.moto import FAKE_CREDENTIALS, REGION, MotoServer  # noqa: E402
from tests.support.processes import cmdline_of, pids_with_env  # noqa: E402

POOL = "demo"
TABLE = "ec2spot-pool"  # the default table: store=dynamodb is all a team sets
# Marks every process a controller starts (the refill job inherits it): how the demo proves none is left.
MARKER = "EC2SPOT_DEMO_CONTROLLER"


class Controller:
    """One Ansible controller: its own HOME and XDG_STATE_HOME (so its own state directory, refill log and code
    copy), the emulator's endpoint, and the pool's store settings."""

    def __init__(self, name: str, root: Path, aws: dict[str, str]):
        self.name = name
        home = root / name / "home"
        state = root / name / "state"
        home.mkdir(parents=True, mode=0o700)
        state.mkdir(mode=0o700)
        self.env = dict(aws, HOME=str(home), XDG_STATE_HOME=str(state), **{MARKER: f"{root}:{name}"})

    def run(self, name: str, what: str, **extra_vars) -> str:
        print(f"[controller {self.name}] {what}", flush=True)
        return playbook(name, self.env, spot_pool_name=POOL, spot_pool_store="dynamodb",
                        spot_pool_dynamodb_table=TABLE, **extra_vars)

    def processes(self) -> list[int]:
        return pids_with_env(MARKER, self.env[MARKER])


def table_summary(dynamodb) -> str:
    """What the table holds for the pool: its items by kind."""
    pages = dynamodb.get_paginator("query").paginate(
        TableName=TABLE, ConsistentRead=True, KeyConditionExpression="#p = :p",
        ExpressionAttributeNames={"#p": "pool"}, ExpressionAttributeValues={":p": {"S": POOL}})
    items = [item for page in pages for item in page["Items"]]
    if not items:
        return "no item of the pool"
    kinds = {"idle": 0, "leased": 0}
    for item in items:
        if "status" in item:
            kinds[item["status"]["S"]] = kinds.get(item["status"]["S"], 0) + 1
    lease = next((item for item in items if item["item"]["S"] == "refill-lease"), None)
    refill = "refill lease held by " + lease["holder"]["S"] if lease and "holder" in lease else "no refill running"
    return f"{len(items)} items: {kinds['idle']} idle, {kinds['leased']} leased instances; {refill}"


def instance_id_of(out: str) -> str:
    return re.search(r"SPOT_POOL_INSTANCE_ID=(\S+)", out).group(1)


def wait_for_no_process(controllers, timeout: float = 30.0) -> dict[str, list[str]]:
    """Until no process of any controller is left; what is still left after `timeout` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        left = {c.name: [" ".join(cmdline_of(pid)) for pid in c.processes()] for c in controllers}
        left = {name: commands for name, commands in left.items() if commands}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ec2spot-demo-shared-") as tmp, MotoServer() as moto:
        root = Path(tmp)
        a, b = Controller("A", root, moto.env()), Controller("B", root, moto.env())
        try:
            run_demo(root, moto, a, b)
        finally:
            # A step that failed may have left a refill job running: none outlives the demo, whatever happened.
            for pid in a.processes() + b.processes():
                os.kill(pid, signal.SIGKILL)
    return 0


def run_demo(root: Path, moto: MotoServer, a: Controller, b: Controller) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto.url,
                            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    print(f"AWS emulator (moto: EC2 and DynamoDB) on {moto.url}; two controllers under {root}, sharing "
          f"DynamoDB table {TABLE!r}, pool {POOL!r}")

    banner("1. controller A: init a pool of 3 (creates the table)")
    a.run("init_pool.yml", "init", spot_pool_size=3, spot_pool_image_id=AMI,
          spot_pool_availability_zones=["us-east-1a", "us-east-1b"])
    print(f"  table: {table_summary(dynamodb)}")

    banner("2. controller B: get an instance (one conditional write on the table; B's refill job refills)")
    b_instance = instance_id_of(b.run("get_instance.yml", "get"))
    print(f"  table: {table_summary(dynamodb)}")

    banner("3. controller A: get another instance (never B's)")
    a_instance = instance_id_of(a.run("get_instance.yml", "get"))
    if a_instance == b_instance:
        raise SystemExit(f"both controllers got {a_instance}")
    print(f"  A has {a_instance}, B has {b_instance}; table: {table_summary(dynamodb)}")

    banner(f"4. controller B: release A's lease by its instance id ({a_instance})")
    b.run("release_instance.yml", "release", spot_pool_instance_id=a_instance)
    print(f"  table: {table_summary(dynamodb)}")

    banner("5. controller A: reconcile until the pool is whole (what a schedule runs)")
    a.run("reconcile_pool.yml", "reconcile", spot_pool_wait=True)
    print(f"  table: {table_summary(dynamodb)}")

    banner("6. controller B: terminate the whole pool, whichever controller's refill job runs")
    b.run("terminate_all.yml", "terminate")
    summary = table_summary(dynamodb)
    print(f"  table: {summary}")
    left = wait_for_no_process([a, b])
    print(f"  processes of the controllers left: {left or 'none'}")
    if left or summary != "no item of the pool":
        raise SystemExit("the demo left something behind")
    print("\nShared demo finished: nothing was left running (the emulator stops now).")


if __name__ == "__main__":
    sys.exit(main())
