# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# This module_utils file is PRIVATE to the ec2spot.pool collection: its names and behaviour may change in any
# release. Do not import it from other collections, playbooks or standalone modules; use amazon.aws instead.
"""A light DynamoDB client for the hand-out path: what DynamoStore calls, without boto3.

Why: `spot_pool_get` with `store: dynamodb` must cost about what `ansible localhost -m ping` costs, and a boto3
DynamoDB client costs `import boto3` plus loading and parsing DynamoDB's service model when it is made (retry.py has
the reason and its measured costs, once). DynamoDB's API is JSON over HTTP (protocol json 1.0): each call is a POST
of the request's JSON with `X-Amz-Target: DynamoDB_20120810.<Operation>`, signed with SigV4, answered with JSON. So
this client sends the keyword arguments as they are and returns the answer as it comes, signed and sent by
signing.py (shared with ec2query.py: its own SigV4 and http.client when the keys are the options' or the
environment's, else botocore's signer, credential chain and HTTP session): no service model is loaded, boto3 is not
imported, and on the fast path no botocore.

It is a stand-in for the boto3 client for DynamoStore's calls: the same method names, keyword arguments and return
shapes (plus boto3's `ResponseMetadata`); errors are `botocore.exceptions.ClientError` with the `response` boto3
gives (`Error.Code` from `__type` after the '#', `Error.Message`, and the error's other fields beside them, e.g.
`CancellationReasons` of a TransactionCanceledException, `Item` of a ConditionalCheckFailedException), so
DynamoStore's handling and its throttling retry (retry.py's rule) apply unchanged. Like the collection's boto3
clients (connection.BOTOCORE_CONFIG) it makes one attempt per call: DynamoStore's retry is the only retry layer.
No connection, timeout or unreachable endpoint fails as botocore does (EndpointConnectionError, ReadTimeoutError,
... all BotoCoreError); no credentials: NoCredentialsError; no region: NoRegionError.

What it does not do, having no model: validate parameters (DynamoDB answers ValidationException instead), turn
timestamps of answers into datetimes (TableDescription.CreationDateTime stays epoch seconds) or binary attribute
values into bytes (B and BS stay base64 text in answers; bytes given in a request are sent base64-encoded, as boto3
does). No paginators, waiters or `meta`: DynamoStore uses none.
"""

from __future__ import annotations

import base64
import json
import os
import threading

from . import signing

API_VERSION = "DynamoDB_20120810"
CONTENT_TYPE = "application/x-amz-json-1.0"
USER_AGENT = "ec2spot.pool-dynamodb"
# The answer's header DynamoDB puts its request id in.
REQUEST_ID_HEADER = "x-amzn-requestid"


# -- pure parts ----------------------------------------------------------------------------------------------------
def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")  # B and BS attribute values, as boto3 sends them
    raise TypeError("%s is not a DynamoDB request value" % type(value).__name__)


def request_headers(operation):
    """The headers of a call to `operation` (before signing)."""
    return {"X-Amz-Target": "%s.%s" % (API_VERSION, operation), "Content-Type": CONTENT_TYPE,
            "User-Agent": USER_AGENT}


def request_body(params):
    """The JSON body of a call: the keyword arguments as they are (DynamoDB's JSON names are boto3's)."""
    return json.dumps(params, separators=(",", ":"), default=_json_default).encode("utf-8")


def response_metadata(status, headers):
    """boto3's ResponseMetadata of an answer (one attempt: RetryAttempts is 0)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return {"RequestId": lowered.get(REQUEST_ID_HEADER, ""), "HTTPStatusCode": status, "HTTPHeaders": lowered,
            "RetryAttempts": 0}


def parse_error(status, headers, body):
    """The `response` of the ClientError boto3 raises for a DynamoDB error answer, as botocore's JSON parser builds
    it: Error.Code is `__type` after the '#' (the HTTP status when the answer says none), Error.Message its
    `message` (or `Message`), and every other field of the error beside them (CancellationReasons, Item, ...)."""
    try:
        data = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body) if body else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):  # not DynamoDB's answer: a gateway's page, say; botocore's generic error
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        return {"Error": {"Code": str(status), "Message": text[:200]},
                "ResponseMetadata": response_metadata(status, headers)}
    code = str(data.get("__type") or status)
    code = code.split(":", 1)[0].rsplit("#", 1)[-1]
    response = {name: value for name, value in data.items() if name != "__type"}
    response["Error"] = {"Code": code, "Message": data.get("message", data.get("Message", ""))}
    response["ResponseMetadata"] = response_metadata(status, headers)
    return response


def parse_answer(status, headers, body):
    """The return value of a successful call: the answer's JSON and boto3's ResponseMetadata."""
    data = json.loads(body.decode("utf-8")) if body else {}
    data["ResponseMetadata"] = response_metadata(status, headers)
    return data


# -- the client ------------------------------------------------------------------------------------------------------
class DynamoDBClient:
    """DynamoDB's calls that DynamoStore makes, as a boto3 client's methods (keyword arguments only).

    Made from a module's connection options (connection.connection_argument_spec: region, endpoint_url, profile,
    access_key/secret_key/session_token, aws_ca_bundle/validate_certs, aws_config's proxies and timeouts). Nothing
    is imported or resolved until the first call; credentials, region, endpoint and the HTTP session (whose
    connections are kept alive between calls, as a boto3 client's are) are resolved once then. Thread-safe."""

    def __init__(self, params, environ=None):
        self.params = params
        self.environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._resolved = None

    def _resolve(self):
        with self._lock:
            if self._resolved is None:
                credentials, session = signing.credentials(self.params, self.environ)
                region = signing.region(self.params, session, self.environ)
                if not region:
                    raise signing.exceptions().NoRegionError()
                if credentials is None:
                    raise signing.exceptions().NoCredentialsError()
                url = signing.endpoint_url("dynamodb", region, self.params.get("endpoint_url"), self.environ)
                self._resolved = (credentials, region, url,
                                  signing.http_session(self.params, url, environ=self.environ))
            return self._resolved

    @property
    def endpoint_url(self):
        return self._resolve()[2]

    def call(self, operation, params):
        """One call of `operation` (DynamoDB's name, e.g. "UpdateItem") with `params`; the answer as boto3 returns
        it, or botocore's ClientError / BotoCoreError."""
        credentials, region, url, http = self._resolve()
        try:
            body = request_body(params)
        except (TypeError, ValueError) as exc:
            raise signing.exceptions().ParamValidationError(report="%s: %s" % (operation, exc))
        request = signing.signed_request(credentials, "dynamodb", region, url, body, request_headers(operation))
        response = http.send(request)  # BotoCoreError when there is no answer (refused, timed out, TLS)
        headers = dict(response.headers.items())
        if response.status_code == 200:
            try:
                return parse_answer(response.status_code, headers, response.content)
            except ValueError as exc:  # a BotoCoreError, which DynamoStore words (boto3's parser error is not one)
                raise signing.exceptions().HTTPClientError(
                    error="the answer to %s is not JSON (%s): %r" % (operation, exc, response.content[:200]))
        error = parse_error(response.status_code, headers, response.content)
        raise signing.exceptions().ClientError(error, operation)

    def close(self):
        """Close the kept-alive connections (as boto3's client.close())."""
        with self._lock:
            if self._resolved is not None:
                self._resolved[3].close()
                self._resolved = None

    # boto3's method names, the operations DynamoStore (and its tests and benchmark) use.
    def query(self, **params):
        return self.call("Query", params)

    def scan(self, **params):
        return self.call("Scan", params)

    def get_item(self, **params):
        return self.call("GetItem", params)

    def put_item(self, **params):
        return self.call("PutItem", params)

    def update_item(self, **params):
        return self.call("UpdateItem", params)

    def delete_item(self, **params):
        return self.call("DeleteItem", params)

    def transact_write_items(self, **params):
        return self.call("TransactWriteItems", params)

    def describe_table(self, **params):
        return self.call("DescribeTable", params)

    def create_table(self, **params):
        return self.call("CreateTable", params)

    def delete_table(self, **params):
        return self.call("DeleteTable", params)
