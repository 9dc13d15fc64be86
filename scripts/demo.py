"""`make demo`: the everyday job, end to end, against a local AWS emulator (a moto server on 127.0.0.1).

init a pool of 3 -> get an instance (at once) -> use it (the drain worker on loopback) -> release it ->
terminate the pool. Every step is a real `ansible-playbook` run of the playbooks users run. Nothing leaves
127.0.0.1: the emulator's instances are not real machines (their IPs may look public: never contacted), so the
"use it" step runs the worker on this machine instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ansible import ansible_env  # noqa: E402
from tests.support.moto import MotoServer  # noqa: E402

AMI = "ami-12c6146b"  # one of the AMIs the emulator knows


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def playbook(name: str, env: dict[str, str], **extra_vars) -> str:
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), f"playbooks/{name}", "-e", json.dumps(extra_vars)]
    print("$ " + " ".join(cmd[:2] + [f"-e '{json.dumps(extra_vars)}'" if extra_vars else ""]), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(env), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    elapsed = time.monotonic() - started
    messages = re.findall(r'"msg": "(.*)"', proc.stdout)
    for message in messages:
        print("  " + message)
    print(f"  ({elapsed:.2f} s, rc={proc.returncode})", flush=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"demo step {name} failed")
    return proc.stdout


def pool_counts(state_dir: Path) -> str:
    state = json.loads((state_dir / "ec2spot" / "demo.json").read_text())
    ready = sum(1 for e in state["instances"] if e["ip"])
    return f"{ready} ready, {len(state['instances']) - ready} pending, {len(state['leases'])} leased"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ec2spot-demo-") as tmp, MotoServer() as moto:
        state_home = Path(tmp)
        env = dict(moto.env(), XDG_STATE_HOME=str(state_home))
        common = {"spot_pool_name": "demo"}
        print(f"AWS emulator (moto) on {moto.url}; pool state under {state_home}/ec2spot")

        banner("1. init: a pool of 3 Spot instances over two zones")
        playbook("init_pool.yml", env, spot_pool_size=3, spot_pool_image_id=AMI,
                 spot_pool_availability_zones=["us-east-1a", "us-east-1b"], **common)

        banner("2. get: an instance at once (the pool refills in the background)")
        out = playbook("get_instance.yml", env, **common)
        instance_id = re.search(r"SPOT_POOL_INSTANCE_ID=(\S+)", out).group(1)
        time.sleep(3)
        print(f"  pool a moment later: {pool_counts(state_home)}")

        banner("3. use it: the drain worker (on loopback: the emulator's instances are not real machines)")
        worker_demo = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_worker.py")], cwd=REPO, check=False)
        if worker_demo.returncode != 0:
            raise SystemExit("the worker demo failed")

        banner(f"4. release {instance_id}: a Spot instance is terminated")
        playbook("release_instance.yml", env, spot_pool_instance_id=instance_id, **common)

        banner("5. terminate: the whole pool, its refill job and its state file")
        playbook("terminate_all.yml", env, **common)
        left = os.listdir(state_home / "ec2spot")
        print(f"  state files left: {[name for name in left if name.endswith('.json')] or 'none'}")
        print("\nDemo finished: the emulator is stopped and nothing was left running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
