"""`make demo-shared` (scripts/demo_shared.py): two controllers share one pool through a DynamoDB table on the
embedded emulator, every step succeeds, and nothing is left in the table or running afterwards."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.ansible import REPO, ansible_env
from tests.support.processes import pids_with_env

STEPS = ["[controller A] init", "[controller B] get", "[controller A] get", "[controller B] release",
         "[controller A] reconcile", "[controller B] terminate"]


def test_make_demo_shared_runs_the_demo_script():
    recipe = re.search(r"^demo-shared:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe and "scripts/demo_shared.py" in recipe.group(1), "make demo-shared runs scripts/demo_shared.py"


def test_demo_shared_runs_two_controllers_on_one_table_and_leaves_nothing():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_shared.py")], cwd=REPO, env=ansible_env(),
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    positions = [output.find(step) for step in STEPS]
    assert -1 not in positions and positions == sorted(positions), f"every step, in order:\n{output}"
    a_has, b_has = re.search(r"A has (i-\w+), B has (i-\w+)", output).groups()
    assert a_has != b_has
    assert "table: no item of the pool" in output and "processes of the controllers left: none" in output, output
    # Checked here too, not only by the demo: no process of its controllers is left.
    root = re.search(r"two controllers under (\S+),", output).group(1)
    assert not [pid for name in ("A", "B") for pid in pids_with_env("EC2SPOT_DEMO_CONTROLLER", f"{root}:{name}")]
