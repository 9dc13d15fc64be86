"""Fixtures of the unit tests that call module_utils directly."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.connection import BOTOCORE_CONFIG
from tests.support.moto import REGION


@pytest.fixture
def client(aws_env):
    """An EC2 client on a clean moto server, configured as the collection configures its own."""
    return boto3.client("ec2", region_name=REGION, endpoint_url=aws_env["AWS_URL"], config=Config(**BOTOCORE_CONFIG))


@pytest.fixture
def proxy_client(fault_proxy):
    """The same, through the fault proxy: honest instant fleets, ClientToken idempotency, injected EC2 errors."""
    return boto3.client("ec2", region_name=REGION, endpoint_url=fault_proxy.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(**BOTOCORE_CONFIG))
