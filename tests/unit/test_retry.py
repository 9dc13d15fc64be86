"""The one retry rule (_aws/retry.py): the pause rule over plain values, the numbers AWSRetry is given, and every
retryable, permission and connection code of the package written there and nowhere else."""

from __future__ import annotations

import ast
import random

import pytest

from ansible_collections.amazon.aws.plugins.module_utils.cloud import BackoffIterator
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import retry
from tests.support.pool_imports import POOL

PLUGINS = POOL.parents[1]
RETRY_FILE = POOL / "_aws" / "retry.py"
# Codes a reader of AWS's docs expects the rule to know (the test's own list, so that an emptied retry.py fails).
EXPECTED = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "ProvisionedThroughputExceededException",
    "InternalError", "ServiceUnavailable", "AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
    "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException",
    "EndpointConnectionError", "ReadTimeoutError", "NoCredentials", "OptInRequired", "TransactionConflict",
}


# -- the pause rule ---------------------------------------------------------------------------------------------------
def test_the_bounds_double_from_the_first_delay_up_to_the_cap():
    assert [retry.bound(attempt) for attempt in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert [retry.bound(attempt, retry.HAND_OUT) for attempt in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_pause_is_a_uniform_draw_under_the_bound():
    assert retry.pause(3, rand=lambda: 0.0) == 0.0
    assert retry.pause(3, rand=lambda: 0.25) == 1.0
    assert retry.pause(3, rand=lambda: 0.25, policy=retry.HAND_OUT) == 0.5
    assert retry.pause(9, rand=lambda: 1.0) == 15.0  # capped
    draws = random.Random(7)
    pauses = [retry.pause(attempt, draws.random) for attempt in (1, 2, 3) for _draw in range(200)]
    assert all(0.0 <= value < retry.bound(1 + number // 200) for number, value in enumerate(pauses))
    assert max(pauses[400:]) > retry.bound(2)  # full jitter: the third pause reaches above the second's bound


def test_scale_stretches_every_pause_and_zero_removes_them():
    assert [retry.pause(attempt, lambda: 1.0, scale=0.01) for attempt in (1, 2, 3)] == [0.01, 0.02, 0.04]
    assert retry.pause(2, lambda: 1.0, scale=0) == 0


def test_the_attempts_the_users_are_told():
    """README: the boto3 calls make at most 4 attempts; spot_pool_get's docs: its check at most 3."""
    assert (retry.CALLS.attempts, retry.HAND_OUT.attempts) == (4, 3)
    assert [retry.bound(attempt) for attempt in range(1, retry.CALLS.attempts)] == [1.0, 2.0, 4.0]


# -- AWSRetry is given the same numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize("scale, done", [(1.0, 0), (0.01, 0), (1.0, 1), (0.5, 1)])
def test_awsretry_pauses_under_the_same_bounds(scale, done):
    args = retry.backoff_args(retry.CALLS, scale=scale, done=done)
    assert args["retries"] == retry.CALLS.attempts - done
    bounds = BackoffIterator(args["delay"], args["backoff"], args["max_delay"], jitter=False)
    drawn = [bound for bound, _attempt in zip(bounds, range(args["retries"] - 1))]
    assert drawn == [retry.bound(attempt, scale=scale) for attempt in range(done + 1, retry.CALLS.attempts)]


def test_the_boto3_calls_retry_what_the_light_clients_retry_and_more():
    assert retry.EC2_RETRYABLE_CODES <= retry.AWSRETRY_CODES
    assert retry.EC2_RETRYABLE_CODES < retry.QUERY_RETRYABLE_CODES
    assert not retry.QUERY_RETRYABLE_CODES & (retry.EC2_DENIED_CODES | retry.DYNAMODB_DENIED_CODES)


# -- the codes are written once, here ----------------------------------------------------------------------------------
def _string_constants(path):
    return {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def _codes_of_retry():
    return set().union(*(value for name, value in vars(retry).items() if name.endswith("_CODES"))) | {
        *retry.CONNECTION_ERRORS, *retry.TRANSACTION_PASSING_REASONS}


def test_retry_py_knows_the_codes_and_the_reader_sees_them_there():
    codes = _codes_of_retry()
    assert EXPECTED <= codes, sorted(EXPECTED - codes)
    assert codes <= _string_constants(RETRY_FILE)


@pytest.mark.parametrize("path", sorted(set(PLUGINS.rglob("*.py")) - {RETRY_FILE}),
                         ids=lambda path: str(path.relative_to(PLUGINS)))
def test_no_other_file_writes_a_retry_or_permission_code(path):
    assert sorted(_string_constants(path) & _codes_of_retry()) == []


def test_retry_py_imports_only_the_standard_library():
    """get's hand-out path imports it (through the light clients): botocore must not come with it."""
    tree = ast.parse(RETRY_FILE.read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "collections", "random"}
