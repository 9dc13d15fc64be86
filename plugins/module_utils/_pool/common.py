# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The little every module's main() shares: which store, and how a PoolError becomes a failed result."""

from __future__ import annotations

from ._aws import retry
from ._aws.connection import BOTOCORE_CONFIG
from ._aws.connection import no_region
from .domain.errors import PoolError
from .stores.opening import open_store
from .stores.spec import StoreSpec


def pool_store(params, make_dynamodb_client=None, region=None):
    """The pool's store, as the module's options (pool_argument_spec) say (stores/spec.py StoreSpec.from_options):
    a FileStore, or with store=dynamodb a DynamoStore on the client `make_dynamodb_client()` makes (default:
    dynamodb_client(params), for spot_pool_get; an AnsibleAWSModule passes its own, see aws_pool_store). Bad
    options raise InvalidRequest before any client is made or any call is sent; an empty option that names where
    the pool lives among them."""
    spec = StoreSpec.from_options(params)
    if spec.kind == "file":
        return open_store(spec)
    if make_dynamodb_client is None:
        return open_store(spec, dynamodb_client(params))
    if not (region or params.get("region")):
        raise no_region()
    return open_store(spec, make_dynamodb_client())


def dynamodb_client(params):
    """spot_pool_get's DynamoDB client: the light one of dynamoquery.py (signed JSON requests: no boto3, no service
    model, which would cost a hand-out about 0.1 s more), from the module's connection options. Its credentials,
    region and endpoint are resolved here, so that a missing region or credentials fail before any call."""
    # pylint: disable=import-outside-toplevel
    import importlib.util
    from ._aws import signing
    from ._aws.dynamoquery import DynamoDBClient

    # Found, not imported: with keys from the options or the environment, a hand-out imports no botocore (signing).
    if importlib.util.find_spec("botocore") is None:
        raise PoolError("store=dynamodb needs the Python library botocore on the controller (No module named "
                        "'botocore'): pip install boto3")
    client = DynamoDBClient(params)
    try:
        client.endpoint_url  # pylint: disable=pointless-statement
    except signing.exceptions().NoRegionError:  # the except clauses import botocore only when one is reached
        raise no_region()
    except signing.exceptions().NoCredentialsError:
        raise PoolError("store=dynamodb found no AWS credentials: set access_key/secret_key, profile, or the AWS_* "
                        "environment variables", error_code=retry.NO_CREDENTIALS)
    except signing.exceptions().BotoCoreError as exc:
        raise PoolError("cannot connect to DynamoDB: %s" % exc, error_code=type(exc).__name__)
    return client


def aws_pool_store(module):
    """pool_store() for an AnsibleAWSModule: its DynamoDB client, made as its EC2 client is (ec2_client)."""
    return pool_store(module.params, lambda: module.client("dynamodb", config=BOTOCORE_CONFIG), module.region)


def fail(module, error):
    """Fail the module with the error's message and details; AWS errors keep amazon.aws's error shape."""
    exception = getattr(error, "exception", None)
    if exception is not None and hasattr(module, "fail_json_aws"):
        module.fail_json_aws(exception, msg=error.message, **error.details)
    module.fail_json(msg=error.message, **error.details)


def ec2_client(module):
    """The EC2 client of an AnsibleAWSModule, with the collection's single retry layer (see BOTOCORE_CONFIG)."""
    return module.client("ec2", config=BOTOCORE_CONFIG)
