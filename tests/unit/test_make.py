"""`make test` must fail when its pytest run tests nothing.

pytest ends a run that collected no test with exit code 5. `make test` (which CI runs) hands every non-zero code
on, so a test tree that went missing, a wrong path or a conftest that deselects everything fails CI instead of
passing as a green run of nothing. The `pytest` target is the one `make test` runs, with the same options
(pytest-xdist's `-n` included); only its paths are pointed at an empty folder here.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.ansible import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make, as `make test` does")
def test_a_pytest_run_that_collects_no_test_fails_make_test(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    # Not this run's own make and xdist settings: the child is a run of its own, as in CI.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_", "MAKE", "MFLAGS")) and key != "TEST_PATHS"}
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "pytest", f"TEST_PATHS={empty}"],
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    output = proc.stdout + proc.stderr
    assert "no tests ran" in output, output
    assert proc.returncode != 0, f"make pytest passed a run that collected no test:\n{output}"
    assert "Error 5" in proc.stderr, output  # make stopped on pytest's own "no tests collected", nothing else
