"""The hand-out path's light DynamoDB client (dynamoquery.py): its request, its answers and errors as boto3 gives
them, and that it loads neither boto3 nor a service model. DynamoStore's own tests run with it too (the
`store_client` fixture of test_dynamo.py, the `dynamodb-light` kit of test_store.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import dynamoquery
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.dynamoquery import DynamoDBClient
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain.errors import PoolError
from tests.support.moto import REGION
from tests.support.moto import use_profile_only
from tests.unit.test_store import dynamodb_client
from tests.unit.test_store import light_dynamodb_client

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"access_key": "testing", "secret_key": "testing"}
CANCELLED = (b'{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException",'
             b'"Message":"Transaction cancelled, please refer cancellation reasons for specific reasons '
             b'[ConditionalCheckFailed, None]","CancellationReasons":[{"Code":"ConditionalCheckFailed",'
             b'"Message":"The conditional request failed"},{"Code":"None"}]}')
HEADERS = {"X-Amzn-RequestId": "R1", "Content-Type": "application/x-amz-json-1.0"}


# -- pure parts ----------------------------------------------------------------------------------------------------
def test_a_request_is_the_keyword_arguments_as_json_with_the_operation_in_the_target_header():
    assert dynamoquery.request_headers("UpdateItem") == {
        "X-Amz-Target": "DynamoDB_20120810.UpdateItem", "Content-Type": "application/x-amz-json-1.0",
        "User-Agent": "ec2spot.pool-dynamodb"}
    body = dynamoquery.request_body({"TableName": "t", "Key": {"pool": {"S": "p"}, "blob": {"B": b"\x00\xff"}},
                                     "ConsistentRead": True})
    assert json.loads(body) == {"TableName": "t", "Key": {"pool": {"S": "p"}, "blob": {"B": "AP8="}},
                                "ConsistentRead": True}  # bytes base64-encoded, as boto3 sends B values
    with pytest.raises(TypeError, match="set is not a DynamoDB request value"):
        dynamoquery.request_body({"Key": {"x"}})


def test_a_cancelled_transaction_has_its_reasons_beside_the_error_as_boto3_has_them():
    assert dynamoquery.parse_error(400, HEADERS, CANCELLED) == {
        "Error": {"Code": "TransactionCanceledException",
                  "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
                             "[ConditionalCheckFailed, None]"},
        "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons "
                   "[ConditionalCheckFailed, None]",
        "CancellationReasons": [{"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
                                {"Code": "None"}],
        "ResponseMetadata": {"RequestId": "R1", "HTTPStatusCode": 400, "RetryAttempts": 0,
                             "HTTPHeaders": {"x-amzn-requestid": "R1", "content-type": "application/x-amz-json-1.0"}}}


@pytest.mark.parametrize("body, code, message", [
    (b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow"}',
     "ProvisionedThroughputExceededException", "slow"),
    (b'{"__type":"ResourceNotFoundException","Message":"no table"}', "ResourceNotFoundException", "no table"),
    (b'{"__type":"AccessDeniedException:http://internal.amazon.com/x","message":"no"}', "AccessDeniedException", "no"),
    (b'{"message":"what"}', "500", "what"),  # no code in the answer: the HTTP status, as botocore does
    (b"<html>Bad gateway</html>", "500", "<html>Bad gateway</html>"),  # not DynamoDB's answer at all
])
def test_the_error_code_is_the_type_after_the_hash(body, code, message):
    error = dynamoquery.parse_error(500 if code == "500" else 400, {}, body)["Error"]
    assert error == {"Code": code, "Message": message}


def test_an_answer_is_its_json_with_boto3s_response_metadata():
    assert dynamoquery.parse_answer(200, HEADERS, b'{"Count":0,"Items":[]}') == {
        "Count": 0, "Items": [], "ResponseMetadata": {
            "RequestId": "R1", "HTTPStatusCode": 200, "RetryAttempts": 0,
            "HTTPHeaders": {"x-amzn-requestid": "R1", "content-type": "application/x-amz-json-1.0"}}}
    assert dynamoquery.parse_answer(200, {}, b"")["ResponseMetadata"]["RequestId"] == ""


# -- against moto: the same answers and errors as boto3's client ---------------------------------------------------
def without_metadata(response):
    return {name: value for name, value in response.items() if name != "ResponseMetadata"}


def outcome(call):
    try:
        return "answer", without_metadata(call())
    except botocore.exceptions.ClientError as exc:
        return "ClientError", exc.operation_name, without_metadata(exc.response)


def test_answers_and_errors_equal_boto3s(fault_proxy):
    """The same calls through boto3's client and the light one: the same answers, the same ClientError responses
    (ResponseMetadata aside: request ids differ)."""
    light, boto = light_dynamodb_client(fault_proxy.url), dynamodb_client(fault_proxy.url)
    DynamoStore(boto, "ec2spot-pool-q", "p").ensure_table()
    key = {"pool": {"S": "p"}, "item": {"S": "a"}}
    conditional = {"TableName": "ec2spot-pool-q", "Key": key, "UpdateExpression": "SET #n = :one",
                   "ConditionExpression": "attribute_not_exists(#n)", "ExpressionAttributeNames": {"#n": "n"},
                   "ExpressionAttributeValues": {":one": {"N": "1"}}, "ReturnValues": "ALL_NEW",
                   "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
    transaction = {"TransactItems": [
        {"ConditionCheck": {"TableName": "ec2spot-pool-q", "Key": key, "ConditionExpression": "#n = :two",
                            "ExpressionAttributeNames": {"#n": "n"}, "ExpressionAttributeValues": {":two": {"N": "2"}}}},
        {"Put": {"TableName": "ec2spot-pool-q", "Item": {"pool": {"S": "p"}, "item": {"S": "b"}}}}]}
    query = {"TableName": "ec2spot-pool-q", "ConsistentRead": True, "KeyConditionExpression": "#p = :p",
             "ExpressionAttributeNames": {"#p": "pool"}, "ExpressionAttributeValues": {":p": {"S": "p"}}}
    seen = []
    for client in (boto, light):
        fault_proxy.clear_records()
        client.delete_item(TableName="ec2spot-pool-q", Key=key)
        seen.append([outcome(lambda: client.update_item(**conditional)),  # written
                     outcome(lambda: client.update_item(**conditional)),  # ConditionalCheckFailed, with the item
                     outcome(lambda: client.transact_write_items(**transaction)),  # cancelled, with its reasons
                     outcome(lambda: client.get_item(TableName="ec2spot-pool-q", Key=key, ConsistentRead=True)),
                     outcome(lambda: client.query(**query)),
                     outcome(lambda: client.describe_table(TableName="no-such-table"))])
        assert fault_proxy.count() == 7  # one request per call: neither client retries on its own
    assert seen[1] == seen[0]
    assert seen[1][1][2]["Item"] == {"pool": {"S": "p"}, "item": {"S": "a"}, "n": {"N": "1"}}
    assert seen[1][2][2]["CancellationReasons"][0]["Code"] == "ConditionalCheckFailed"


def test_an_injected_error_is_a_client_error_with_the_code_and_is_not_retried_by_the_client(fault_proxy):
    client = light_dynamodb_client(fault_proxy.url)
    fault_proxy.fail("Query", "ThrottlingException", times=1)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.query(TableName="t", KeyConditionExpression="#p = :p", ExpressionAttributeNames={"#p": "pool"},
                     ExpressionAttributeValues={":p": {"S": "p"}})
    assert caught.value.response["Error"] == {"Code": "ThrottlingException",
                                              "Message": "Rate of requests exceeds the allowed throughput."}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fault_proxy.count("Query") == 1


def test_no_region_no_credentials_and_no_answer_fail_as_botocore_does_and_the_store_names_the_table(
        monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(botocore.exceptions.NoRegionError):
        DynamoDBClient(dict(KEYS)).get_item(TableName="t", Key={})
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        DynamoDBClient({"region": REGION, "endpoint_url": "http://127.0.0.1:9"}).get_item(TableName="t", Key={})
    unreachable = DynamoDBClient(dict(KEYS, region=REGION, endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        unreachable.get_item(TableName="t", Key={})
    with pytest.raises(PoolError, match="DynamoDB DescribeTable on table ec2spot-pool failed: Could not connect"):
        DynamoStore(unreachable, "ec2spot-pool", "p", str(tmp_path)).ensure_table()


def test_the_endpoint_is_the_option_then_the_environment_then_the_region():
    assert DynamoDBClient(dict(KEYS, region="eu-west-1"), environ={}).endpoint_url \
        == "https://dynamodb.eu-west-1.amazonaws.com"
    assert DynamoDBClient(dict(KEYS, region="cn-north-1"), environ={}).endpoint_url \
        == "https://dynamodb.cn-north-1.amazonaws.com.cn"
    environ = {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_DYNAMODB": "http://b", "AWS_ENDPOINT_URL_EC2": "c"}
    assert DynamoDBClient(dict(KEYS, region="eu-west-1"), environ=environ).endpoint_url == "http://b"
    assert DynamoDBClient(dict(KEYS, region="eu-west-1", endpoint_url="http://c"), environ=environ).endpoint_url \
        == "http://c"


def test_a_profile_gives_the_keys_and_the_region(monkeypatch, tmp_path, fault_proxy):
    use_profile_only(monkeypatch, tmp_path)
    client = DynamoDBClient({"profile": "ci", "endpoint_url": fault_proxy.url})
    with pytest.raises(botocore.exceptions.ClientError, match="ResourceNotFoundException"):
        client.describe_table(TableName="no-such-table")  # signed for the profile's region: moto answered
    assert fault_proxy.records("DescribeTable")[0].error_code == "ResourceNotFoundException"


# -- what it loads ---------------------------------------------------------------------------------------------------
PROBE = """
import json, sys
credentials = sys.argv[2]
if credentials == "chain":  # from the environment, through botocore's session: its loader must load nothing
    import botocore.loaders
    loaded = []
    load_data = botocore.loaders.Loader.load_data
    botocore.loaders.Loader.load_data = lambda self, name: loaded.append(name) or load_data(self, name)
before = set(sys.modules)
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.dynamoquery import DynamoDBClient
params = {"region": "us-east-1", "endpoint_url": sys.argv[1]}
if credentials == "keys":
    params.update(access_key="testing", secret_key="testing")
client = DynamoDBClient(params)
try:
    client.describe_table(TableName="no-such-table")
except Exception as exc:
    code = exc.response["Error"]["Code"]
new = sorted(set(sys.modules) - before)
report = {"code": code, "boto3": [name for name in new if name.split(".")[0] == "boto3"],
          "model_modules": [name for name in new if name in ("botocore.client", "botocore.loaders")]}
if credentials == "chain":
    report["loaded"] = list(loaded)
    import boto3  # the control: a boto3 client does load its model, so the probe above can see a load
    boto3.client("dynamodb", region_name="us-east-1", endpoint_url=sys.argv[1])
    report["loaded_by_boto3"] = list(loaded)
print(json.dumps(report))
"""


@pytest.mark.parametrize("credentials", ["keys", "chain"])
def test_a_call_loads_neither_boto3_nor_a_service_model(fault_proxy, credentials):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "build" / "collections"), str(ROOT)]),
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.run([sys.executable, "-c", PROBE, fault_proxy.url, credentials], env=env, text=True,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["code"] == "ResourceNotFoundException"  # the call was made and answered
    assert report["boto3"] == []
    if credentials == "keys":
        assert report["model_modules"] == []  # the session and its loader are not even imported
    else:
        assert report["loaded"] == []
        assert "dynamodb" in " ".join(report["loaded_by_boto3"])
