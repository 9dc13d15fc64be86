"""Shared fixtures: one moto server per test session on 127.0.0.1, reset before each test that asks for AWS."""

from __future__ import annotations

import sys
from pathlib import Path

import boto3
import pytest

from tests.support.moto import REGION, MotoServer

# The collection as Ansible sees it: `make setup` links this checkout to build/collections/ansible_collections/
# ec2spot/pool, so unit tests import the same `ansible_collections.ec2spot.pool` package the modules use.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build" / "collections"))

# fault_proxy / fault_env: the same emulator behind an HTTP proxy that injects genuine EC2 errors.
# ciskip: under CI=true a skipped test fails the run (worker/tests/conftest.py loads it too).
pytest_plugins = ["tests.support.faultproxy", "tests.support.ciskip"]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """A clean emulator and the environment that points Ansible and boto3 at it."""
    moto_server.reset()
    env = moto_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def ec2(aws_env):
    return boto3.client("ec2", region_name=REGION, endpoint_url=aws_env["AWS_URL"])
