"""Fixtures for the worker tests: short timings, a fake IMDS on loopback, and real worker processes
that are always stopped and reaped, also when a test fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The repository root: the collection's tests/support (the moto server, the fault proxy) is shared.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from fake_imds import FakeImds  # noqa: E402
from worker_process import WorkerProcess, free_port  # noqa: E402


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


# ---- the SQS backend: one moto server per test process, a fault proxy and fresh names per test ----


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    from tests.support.moto import MotoServer
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """A fresh queue, dead-letter queue and table name on the moto server, and a fault proxy in front of
    it that the workers talk through (it serialises DynamoDB writes, which moto does not apply atomically,
    and injects AWS errors on demand). Nothing is reset: names are unique, so tests can share the server."""
    from sqs_support import AwsFixture
    from tests.support.faultproxy import FaultProxy
    from tests.support.moto import FAKE_CREDENTIALS
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    proxy = FaultProxy(moto_server).start()
    try:
        yield AwsFixture(moto_server, proxy)
    finally:
        proxy.stop()


@pytest.fixture
def start_sqs_worker(tmp_path, worker_env, aws):
    """start_sqs_worker(**overrides) -> a running worker on the test's SQS queue and table."""
    started: list[WorkerProcess] = []

    def start(**overrides) -> WorkerProcess:
        env = dict(worker_env, **aws.worker_env(), PORT=str(free_port()))
        env.update({k: str(v) for k, v in overrides.items()})
        worker = WorkerProcess(env, tmp_path / f"sqs-worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
