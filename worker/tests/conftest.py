"""Fixtures for the worker tests: short timings, a fake IMDS on loopback, and real worker processes
that are always stopped and reaped, also when a test fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This tree's worker package first (see worker_process.PACKAGE_ROOT), then the collection's root.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
# The repository root: the collection's tests/support (the moto server, the fault proxy) is shared.
sys.path.insert(2, str(Path(__file__).resolve().parents[2]))

from fake_imds import FakeImds  # noqa: E402
from worker_process import WorkerProcess, free_port  # noqa: E402

# Under CI=true a skipped test fails the run, as in the collection's tests (tests/conftest.py).
pytest_plugins = ["tests.support.ciskip"]


@pytest.fixture
def fake_imds():
    with FakeImds() as imds:
        yield imds


@pytest.fixture
def run_log(tmp_path) -> Path:
    return tmp_path / "runs.log"


@pytest.fixture
def worker_env(tmp_path, run_log, fake_imds) -> dict:
    """Environment for a worker with test timings; tests change keys before starting it."""
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "SPOT_WATCHER_ENABLED": "true",
        "IMDS_URL": fake_imds.url,  # never the real 169.254.169.254
        "POLL_INTERVAL_SECONDS": "0.05",
        "GRACE_PERIOD_SECONDS": "20",
        "JOB_PROCESSING_SECONDS": "0.2",
        "ALLOW_SIMULATE_INTERRUPTION": "true",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "MAX_ATTEMPTS": "3",
        "LEASE_SECONDS": "1",
        "RETRY_BACKOFF_SECONDS": "0.05",
        "NOTICE_MARGIN_SECONDS": "1",
        "JOB_HANDLER": "handlers_for_tests:record_and_sleep",
        "RUN_LOG": str(run_log),
        "CONTROL_TOKEN": "",
    }


@pytest.fixture
def start_worker(tmp_path, worker_env):
    """start_worker(**overrides) -> a running WorkerProcess; every one is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(**overrides) -> WorkerProcess:
        env = dict(worker_env, **{k: str(v) for k, v in overrides.items()})
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


# ---- the SQS backend: the collection's moto server and fault proxy, fresh names per test ----

# The session's moto server and fault proxy are the collection's own fixtures (tests/conftest.py,
# tests/support/faultproxy.py), not a second copy.
from tests.conftest import moto_server  # noqa: E402,F401 pylint: disable=unused-import
from tests.support.faultproxy import fault_proxy, fault_proxy_server  # noqa: E402,F401 pylint: disable=unused-import


@pytest.fixture
def aws(fault_proxy, monkeypatch):
    """A fresh queue with a dead-letter queue and a table name on the moto server; the workers talk to it
    through the fault proxy (it serialises DynamoDB writes, which moto does not apply atomically, and
    injects AWS errors on demand)."""
    from sqs_support import AwsFixture
    from tests.support.moto import FAKE_CREDENTIALS
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return AwsFixture(fault_proxy.upstream, fault_proxy)


@pytest.fixture
def start_sqs_worker(aws, start_worker):
    """start_sqs_worker(**overrides) -> a running worker (own port) on the test's SQS queue and table."""
    def start(**overrides) -> WorkerProcess:
        return start_worker(**dict(aws.worker_env(), PORT=free_port(), **overrides))
    return start
