# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# This module_utils file is PRIVATE to the ec2spot.pool collection: its names and behaviour may change in any
# release. Do not import it from other collections, playbooks or standalone modules; use amazon.aws instead.
"""The one retry rule of the collection's AWS calls: which answers are asked again, which say the credentials are
wrong or lack a permission, which mean no answer came, and how long to pause between attempts. Plain values and a
pure function; every other module takes its codes and numbers from here.

The rule: a throttled answer or a passing server error is asked again, at most `attempts` times in all, after a
pause drawn at random ("full jitter") between 0 and min(max_delay, delay * backoff ** (attempt - 1)). So a throttled
account sees no retry storm from us, and no two controllers retry in step. One layer retries: botocore's own retries
are off (connection.BOTOCORE_CONFIG), the light clients make one attempt per call. The boto3 calls (ec2.py,
DynamoStore) are retried by amazon.aws's AWSRetry.jittered_backoff, given these numbers (backoff_args) and the
service's extra codes; AWSRetry draws its pauses with the same formula.

Why the hand-out path uses no botocore, and so neither boto3 nor AWSRetry (the reason, written once here; signing.py,
ec2query.py, dynamoquery.py, connection.py and DynamoStore point to it): `spot_pool_get` must hand out an instance in
about the time Ansible needs to start a module (`ansible localhost -m ping`). Importing boto3 (which amazon.aws's
AnsibleAWSModule does at import time) costs ~0.25 s on a ~1 s module run; a boto3 client then loads and parses its
service's JSON model (several MB for EC2) when it is made, 0.2-0.3 s more on every get, which made a checking get
1.5 x a ping; importing botocore's credential chain and HTTP session alone costs 0.1-0.3 s (botocore.compat, urllib3,
http.client and many regexes). AWSRetry's module (amazon.aws's retries.py) imports botocore. So the light clients
(ec2query.py, dynamoquery.py, over signing.py) retry with `pause` below, and DynamoStore imports AWSRetry only once a
call has failed: a get that succeeds at once loads none of it. This module imports nothing but the standard library.
"""

from __future__ import annotations

import collections
import random

# -- codes worth asking again --------------------------------------------------------------------------------------
# Throttling of EC2's API (EC2 API reference, "Error codes": RequestLimitExceeded; Throttling from the Query API).
EC2_THROTTLING_CODES = frozenset(("RequestLimitExceeded", "Throttling"))
# Passing server errors (HTTP 500/503): the next attempt may well succeed.
SERVER_ERROR_CODES = frozenset(("InternalError", "InternalFailure", "Unavailable", "ServiceUnavailable"))
# What AWSRetry asks again for any service (amazon.aws retries.py, AWSRetry.found): the two sets above, and API
# Gateway's TooManyRequestsException. The boto3 EC2 calls pass no codes of their own.
AWSRETRY_CODES = EC2_THROTTLING_CODES | SERVER_ERROR_CODES | frozenset(("TooManyRequestsException",))
# An EC2 call that still failed with one of these after its attempts: a later pass may well succeed.
EC2_RETRYABLE_CODES = EC2_THROTTLING_CODES | SERVER_ERROR_CODES
# The light EC2 client (get's DescribeInstances): EC2's, and ThrottlingException, the newer services' word for it.
QUERY_RETRYABLE_CODES = EC2_RETRYABLE_CODES | frozenset(("ThrottlingException",))
# DynamoDB's throttling, passed to AWSRetry besides the codes it knows (catch_extra_error_codes).
DYNAMODB_THROTTLING_CODES = frozenset(("ProvisionedThroughputExceededException", "ThrottlingException",
                                       "RequestLimitExceeded", "LimitExceededException"))
# The reasons of a cancelled TransactWriteItems that pass (throttled, or another transaction on one of the items at
# that moment): the transaction is tried again, the conditions still guarding every item. A conflict that outlasts
# the attempts is the store's StoreConflict (run again), not an error.
TRANSACTION_CONFLICT = "TransactionConflict"
TRANSACTION_PASSING_REASONS = frozenset(("ThrottlingError", "ProvisionedThroughputExceeded", TRANSACTION_CONFLICT))

# -- no answer -------------------------------------------------------------------------------------------------------
# botocore's names for a call that got no answer (Ec2Error.code): the request may or may not have been carried out,
# and the endpoint may well answer the next attempt.
CONNECTION_ERRORS = frozenset(("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                               "ConnectionClosedError"))

# -- the credentials are wrong or lack a permission: never asked again, the user must act --------------------------
# AWS's common answers for EC2's Query API (EC2 API reference, "Common client error codes").
EC2_DENIED_CODES = frozenset(("AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
                              "ExpiredToken", "RequestExpired"))
# DynamoDB's (and IAM's generic AccessDenied).
DYNAMODB_DENIED_CODES = frozenset(("AccessDenied", "AccessDeniedException", "UnrecognizedClientException"))
# No credentials found: our code for it (ec2.py, ec2query.py), and botocore's exception names.
NO_CREDENTIALS = "NoCredentials"
NO_CREDENTIALS_CODES = frozenset((NO_CREDENTIALS, "NoCredentialsError", "PartialCredentialsError"))
# The account is blocked, or not yet set up for EC2 in the region (not opted in; its verification pending).
ACCOUNT_BLOCKED_CODES = frozenset(("Blocked",))
OPT_IN_CODES = frozenset(("OptInRequired",))
PENDING_VERIFICATION_CODES = frozenset(("PendingVerification",))

# -- the pause rule --------------------------------------------------------------------------------------------------
Policy = collections.namedtuple("Policy", "attempts delay backoff max_delay")
Policy.__doc__ = """How often and after which pauses a call is asked again.

attempts: at most this many attempts in all (the first one included).
delay: the bound of the first pause, in seconds; each next bound is `backoff` times the one before.
backoff: that factor.
max_delay: no bound exceeds this many seconds."""

# The boto3 calls (ec2.py's EC2 calls, DynamoStore's DynamoDB calls and transactions): pauses under 1, 2 and 4 s
# (the cap is never reached).
CALLS = Policy(attempts=4, delay=1.0, backoff=2.0, max_delay=15.0)
# get's DescribeInstances: a hand-out must not wait long; pauses under 0.5 and 1 s.
HAND_OUT = Policy(attempts=3, delay=0.5, backoff=2.0, max_delay=4.0)


def bound(attempt, policy=CALLS, scale=1.0):
    """The longest pause after attempt `attempt` (counted from 1) failed: capped exponential, times `scale`."""
    return min(policy.max_delay, policy.delay * policy.backoff ** (attempt - 1)) * scale


def pause(attempt, rand=random.random, policy=CALLS, scale=1.0):
    """The pause after attempt `attempt` (counted from 1) failed, before the next: full jitter, a uniform draw
    (`rand()` in [0, 1)) under bound(). `scale` stretches every pause (DynamoStore's retry_delay; 0 in tests)."""
    return rand() * bound(attempt, policy, scale)


def backoff_args(policy=CALLS, scale=1.0, done=0):
    """The keyword arguments of AWSRetry.jittered_backoff that retry as `policy` does, for a call of which `done`
    attempts were already made and paused after (amazon.aws counts `retries` as attempts, and draws each pause as
    uniform(0, min(max_delay, delay * backoff ** n)))."""
    return dict(retries=policy.attempts - done, delay=policy.delay * policy.backoff ** done * scale,
                backoff=policy.backoff, max_delay=policy.max_delay * scale)
