"""What checking the refill job's code copy costs a `spot_pool_get` that starts the job.

Takes a real module payload (`ansible localhost -m ec2spot.pool.spot_pool_info` with ANSIBLE_KEEP_REMOTE_FILES,
in a temp dir), then times, in this process, the step `jobcontrol.start_refill` runs before it spawns the job:
finding the copy by the payload's zip directory and checking it (our own regular file, mode 0600, sha256 of its
bytes equal to the digest in its name). Reported, never asserted.

    .venv/bin/python bench/code_copy.py [--runs 300]
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "build", "collections"))

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import jobcontrol  # noqa: E402 pylint: disable=wrong-import-position


def module_payload(work: str) -> str:
    """The zip Ansible ships with spot_pool_info (the same module_utils as spot_pool_get's)."""
    env = dict(os.environ, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=os.path.join(work, "remote"),
               ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m",
                    "ec2spot.pool.spot_pool_info", "-a", "state_dir=%s pool_name=bench" % os.path.join(work, "none")],
                   env=env, cwd=REPO, capture_output=True, check=False)
    wrapper = open(glob.glob(os.path.join(work, "remote", "*", "AnsiballZ_spot_pool_info.py"))[0]).read()
    path = os.path.join(work, "payload.zip")
    with open(path, "wb") as handle:
        handle.write(base64.b64decode(re.search(r"^zip_data='([^']*)'", wrapper, re.M).group(1)))
    return path


def timed(function, runs: int) -> list[float]:
    for _warmup in range(20):
        function()
    samples = []
    for _run in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ec2spot-bench-code-")
    try:
        payload = module_payload(work)
        state_dir = os.path.join(work, "state")
        os.mkdir(state_dir, 0o700)

        def check():
            os.close(jobcontrol._stable_code_root(os.path.join(state_dir, "code"), root=payload)[1])  # pylint: disable=protected-access

        start = time.perf_counter()
        check()  # the first start of a collection version makes the copy
        first = (time.perf_counter() - start) * 1000
        with zipfile.ZipFile(payload) as members:
            count = len(members.infolist())
        samples = timed(check, args.runs)
        print("payload %d bytes, %d members" % (os.path.getsize(payload), count))
        print("first start (makes the copy): %.1f ms" % first)
        print("every later start (find + check the copy): median %.3f ms, p90 %.3f ms over %d runs"
              % (statistics.median(samples), sorted(samples)[int(len(samples) * 0.9)], len(samples)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
