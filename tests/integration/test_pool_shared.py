"""A pool shared by several controllers through one DynamoDB table (issue 11, "What must be shown"), through
ansible-playbook against moto behind the fault proxy. Each controller is a separate process tree with its own HOME,
XDG_STATE_HOME and state directory (and, where the machine allows, its own PID and UTS namespaces): they share
nothing but the AWS side. The harness is tests/integration/controllers.py; its teardown (the `shared_pool`
fixture) terminates the pool and proves that no process of any controller outlived the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.integration.conftest import task_result, wait_until
from tests.integration.controllers import at_once, namespaces_available, store_option_wired

POOL = "shared"
NO_READY = re.compile(rf"pool '{POOL}' has 0 ready of 10")
dynamodb = pytest.mark.skipif(not store_option_wired(), reason="store=dynamodb is not wired into the modules yet")


def got(run) -> dict:
    result = task_result(run, "spot_pool_get")
    assert run.rc == 0, result.get("msg")
    return result


# -- the harness itself -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not namespaces_available(), reason="needs PID/UTS namespaces (root, util-linux unshare)")
def test_controllers_are_separate_machines(shared_pool):
    """Each controller sees only its own processes and has its own host name and HOME; the teardown finds and
    kills a process a controller left behind, and says so."""
    a, b = shared_pool.start(2, store="file")
    probe = ("import os, socket, json; print(json.dumps([socket.gethostname(), os.getpid(), "
             "sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.environ['HOME']]))")
    seen = {}
    for controller in (a, b):
        out = subprocess.run(controller.wrapper + [sys.executable, "-c", probe], env=controller.env,
                             capture_output=True, text=True, check=True).stdout
        seen[controller.name] = json.loads(out)
    assert seen["a"][0] == "ctl-a" and seen["b"][0] == "ctl-b"
    assert seen["a"][1] < 10 and seen["a"][2][0] == 1, "a PID namespace of its own: its init is pid 1"
    assert seen["a"][3] == str(a.home) and seen["b"][3] == str(b.home)

    # A process a controller left behind (a refill job that never stopped) is found by the controller's marker,
    # reported by the teardown and killed with the controller's namespace.
    stray = subprocess.Popen(b.wrapper + [sys.executable, "-c", "import time; time.sleep(120)"], env=b.env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(b.processes, timeout=10, interval=0.05, what="the stray process seen as b's")
        assert not a.processes(), "and not as a's"
        problems = shared_pool.end(grace=0.5)
        assert len(problems) == 1 and "processes of <controller b (file)> outlived the test" in problems[0], problems
    finally:
        stray.kill()
        stray.wait(timeout=10)
    assert not b.processes() and not a.processes()


# -- 16 concurrent gets on a pool of 10 -------------------------------------------------------------------------
def sixteen_gets(shared_pool, controllers) -> tuple[list[dict], list[str]]:
    """16 get_instance.yml runs released at the same moment, 16 / len(controllers) from each controller, with no
    launch possible meanwhile (every offering has no capacity: the refill jobs the gets start cannot add a ready
    instance during the race). Returns (the successful results, the failures' messages)."""
    shared_pool.proxy.fail_offering("InsufficientInstanceCapacity")
    runs = at_once([controller.get for controller in controllers for _ in range(16 // len(controllers))])
    results = [task_result(run, "spot_pool_get") for run in runs]
    return ([r for run, r in zip(runs, results) if run.rc == 0],
            [r.get("msg", "") for run, r in zip(runs, results) if run.rc != 0])


def assert_ten_distinct_and_six_clear_failures(ok, failures):
    ids = [r["instance_id"] for r in ok]
    assert len(ids) == 10 and len(set(ids)) == 10, f"duplicates or a wrong count: {sorted(ids)}"
    assert len({r["lease_id"] for r in ok}) == 10
    assert len(failures) == 6 and all(NO_READY.search(msg) for msg in failures), failures
    return ids


@dynamodb
def test_sixteen_gets_from_four_controllers_hand_out_ten_distinct_instances(shared_pool):
    controllers = shared_pool.start(4)
    run = controllers[0].init(size=10)
    assert run.rc == 0, task_result(run, "spot_pool_init").get("msg")
    assert len(shared_pool.require_state()["instances"]) == 10

    ok, failures = sixteen_gets(shared_pool, controllers)
    ids = assert_ten_distinct_and_six_clear_failures(ok, failures)
    state = shared_pool.require_state()
    assert sorted(lease["id"] for lease in state["leases"]) == sorted(ids), "the table holds exactly these leases"
    assert state["instances"] == []


def test_sixteen_gets_on_one_controller_with_the_file_store(shared_pool):
    [controller] = shared_pool.start(1, store="file")
    run = controller.init(size=10)
    assert run.rc == 0, task_result(run, "spot_pool_init").get("msg")

    ok, failures = sixteen_gets(shared_pool, [controller])
    ids = assert_ten_distinct_and_six_clear_failures(ok, failures)
    state = controller.file_state()
    assert sorted(lease["id"] for lease in state["leases"]) == sorted(ids) and state["instances"] == []
    assert shared_pool.state() is None, "the file store wrote nothing to DynamoDB"
