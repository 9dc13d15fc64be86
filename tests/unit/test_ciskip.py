"""Under CI a test that skips fails the run (tests/support/ciskip.py), and .ci/run says it is CI.

A test that skips for lack of root, `unshare` or make passes by not running; CI has all of them, so there a skip
is a defect. Each test here runs pytest (or .ci/run) as a child process of its own, as CI does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.support.ansible import REPO

SKIPPING_TESTS = textwrap.dedent('''
    import shutil
    import pytest

    @pytest.fixture
    def needs_root():
        pytest.skip("mounting a tmpfs needs root")

    @pytest.mark.skipif(True, reason="needs PID/UTS namespaces (root, util-linux unshare)")
    def test_marked():
        pass

    def test_skips_in_its_body():
        pytest.skip("needs the controllers in PID namespaces of their own")

    def test_skips_in_a_fixture(needs_root):
        pass

    @pytest.mark.xfail(reason="a known defect, not a missing capability", strict=True)
    def test_expected_to_fail():
        assert False

    def test_runs():
        assert shutil.which("sh")
''')

SKIPPING_MODULE = textwrap.dedent('''
    import pytest

    pytest.importorskip("a_module_this_machine_lacks")

    def test_never_collected():
        pass
''')


def child_env(**extra) -> dict:
    """This environment without this run's pytest, xdist and CI settings: the child decides for itself."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_", "MAKE", "MFLAGS")) and key != "CI"}
    env.update(extra)
    return env


def run_pytest(path, *options, **env) -> subprocess.CompletedProcess:
    """pytest on `path` with the plugin loaded as the conftests load it, from the repository root."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.support.ciskip",
                           "--rootdir", str(path.parent), *options, str(path)],
                          cwd=REPO, env=child_env(**env), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)


def test_under_ci_every_skip_fails_the_run_and_says_why(tmp_path):
    tests = tmp_path / "test_skipping.py"
    tests.write_text(SKIPPING_TESTS)
    # Spread over processes as `make test` does: the failure must survive xdist's report transport.
    proc = run_pytest(tests, "-n", "2", CI="true")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    # A skip in setup (a skipif marker, a fixture) becomes an error, one in the test's body a failure.
    assert "1 failed, 1 passed, 1 xfailed, 2 errors" in output, output
    for reason in ("mounting a tmpfs needs root", "needs PID/UTS namespaces (root, util-linux unshare)",
                   "needs the controllers in PID namespaces of their own"):
        assert f"where no test may skip: {reason}" in output, (reason, output)
    assert "test_skipping.py:" in output, "the failure says where the skip was raised"


def test_without_ci_a_skip_stays_a_skip(tmp_path):
    tests = tmp_path / "test_skipping.py"
    tests.write_text(SKIPPING_TESTS)
    proc = run_pytest(tests, "-rs")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "1 passed, 3 skipped, 1 xfailed" in output, output
    assert "where no test may skip" not in output


def test_under_ci_a_module_that_skips_at_collection_fails_the_run(tmp_path):
    tests = tmp_path / "test_module_skip.py"
    tests.write_text(SKIPPING_MODULE)
    proc = run_pytest(tests, CI="true")
    output = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 5), output
    assert "where no test may skip" in output and "a_module_this_machine_lacks" in output, output
    assert run_pytest(tests).returncode == 5, "without CI the module is skipped and nothing runs"


def test_both_test_trees_load_the_plugin():
    """tests/ and worker/tests/ each register it in their conftest, so either tree run alone is covered."""
    for tree in ("tests/unit/test_defaults.py", "worker/tests/test_worker_config.py"):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-n", "0",
                               tree], cwd=REPO, env=child_env(CI="true"), capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "skips fail this run: CI is set" in proc.stdout, (tree, proc.stdout + proc.stderr)


def test_ci_run_sets_ci_for_make_test(tmp_path):
    """.ci/run exports CI=true before `make test`, also when the caller's environment does not."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_make = fake_bin / "make"
    fake_make.write_text('#!/bin/sh\necho "make $* with CI=${CI:-unset}"\n')
    fake_make.chmod(0o755)
    env = child_env(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "make test with CI=true" in proc.stdout, proc.stdout + proc.stderr
