"""A pytest plugin: under CI (CI=true) a skipped test fails the run, with the skip's reason.

Some tests skip themselves when the machine lacks what they need: root for a tmpfs, `unshare` for controllers in
PID namespaces of their own, GNU make. On a developer's machine that is a fair answer; in CI it would be a green run
of a test that never ran, and CI has root and every tool. So when the environment says CI (as CI's runner and
.ci/run do) every skip, of a test or of a whole module at collection, is reported as a failure that names the
reason and where it was raised. xfail stays as it is: it is not a missing capability.

Both test trees load it: tests/conftest.py and worker/tests/conftest.py list it in `pytest_plugins`.
"""

from __future__ import annotations

import os

import pytest

CI_VALUES = ("true", "1", "yes")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def skip_as_failure(report) -> None:
    """Turn a skipped report into a failed one that says why it was skipped."""
    where, reason = "", str(report.longrepr)
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        path, lineno, reason = report.longrepr
        where = f"{path}:{lineno}: "
    reason = reason.removeprefix("Skipped: ")  # pytest.skip() adds it, a skipif marker does not
    report.outcome = "failed"
    report.longrepr = f"{where}skipped under CI={os.environ.get('CI')}, where no test may skip: {reason}"


def pytest_report_header(config):  # pylint: disable=unused-argument
    if in_ci():
        return "skips fail this run: CI is set (tests/support/ciskip.py)"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        skip_as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):  # pylint: disable=unused-argument
    report = yield
    if in_ci() and report.skipped:
        skip_as_failure(report)
    return report
