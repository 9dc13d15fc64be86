# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# This module_utils file is PRIVATE to the ec2spot.pool collection: its names and behaviour may change in any
# release. Do not import it from other collections, playbooks or standalone modules; use amazon.aws instead.
"""The one EC2 call `spot_pool_get` makes: DescribeInstances of the instance it is about to hand out, as a signed
EC2 Query API request.

Why not boto3 (nor botocore, where it can): retry.py says, once. This module builds the form body itself, signs
it, sends it with the same connection options the module takes (region, endpoint_url, profile, keys, CA bundle /
validate_certs, proxies from the environment), and reads the few fields it needs from the XML answer.

The credentials, region, endpoint, HTTP session and signature are signing.py's, shared with dynamoquery.py: with
keys of the options or the environment, a region and no proxy, its own SigV4 and http.client, no botocore at all.
Everything botocore is imported inside the functions that need it, so that importing this module costs nothing;
the pure parts (body, endpoint, XML answer) are plain functions with plain-value tests, and which answers are asked
again after which pauses is retry.py's rule (its HAND_OUT policy).
"""

from __future__ import annotations

import os
import time

from ..domain.errors import PoolError
from . import retry
from . import signing

API_VERSION = "2016-11-15"
# What to do about an error code, for the message: the get has changed nothing, the user must act.
_AUTH_HINT = ("check the credentials the module uses (access_key/secret_key/session_token, profile, or the "
              "AWS_* environment variables) and that they allow ec2:DescribeInstances")
_HINTS = dict(dict.fromkeys(retry.EC2_DENIED_CODES | {retry.NO_CREDENTIALS}, _AUTH_HINT),
              **dict.fromkeys(retry.OPT_IN_CODES, "enable EC2 in this region for the account"))


class QueryError(PoolError):
    """DescribeInstances failed; `code` is AWS's error code, or ours (NoCredentials, NoRegion, EndpointError)."""

    def __init__(self, code, text, status=None):
        self.code = code
        self.status = status
        hint = _HINTS.get(code)
        super().__init__("DescribeInstances failed: %s (%s)%s" % (text, code, "; %s" % hint if hint else ""),
                         error_code=code)


# -- pure parts ----------------------------------------------------------------------------------------------------
def request_body(instance_ids):
    """The form body of a DescribeInstances by id. The ids go into a filter, as ec2.describe_instances does: an id
    EC2 no longer knows is then absent from the answer instead of failing the call (InvalidInstanceID.NotFound)."""
    from urllib.parse import urlencode  # pylint: disable=import-outside-toplevel

    params = [("Action", "DescribeInstances"), ("Version", API_VERSION), ("Filter.1.Name", "instance-id")]
    params += [("Filter.1.Value.%d" % number, instance_id) for number, instance_id in enumerate(instance_ids, 1)]
    return urlencode(params)


def endpoint_for(region, endpoint_url=None, environ=None):
    """The URL to ask: the module's endpoint_url, else the one botocore would take from the environment
    (AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL), else EC2's regional endpoint."""
    url = signing.endpoint_url("ec2", region, endpoint_url, environ)
    if url is None:
        raise QueryError("NoRegion", "no AWS region set: set the region option or AWS_REGION")
    return url


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _child(element, name):
    return next((child for child in element if _local(child.tag) == name), None)


def parse_states(body):
    """{instance id: state name} from a DescribeInstances answer (XML, EC2's namespace)."""
    from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel

    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise QueryError("MalformedResponse", "the answer is not XML (%s): %r" % (exc, body[:200]))
    states = {}
    for instances in root.iter():
        if _local(instances.tag) != "instancesSet":
            continue
        for item in instances:
            instance_id = _child(item, "instanceId")
            state = _child(item, "instanceState")
            name = _child(state, "name") if state is not None else None
            if instance_id is not None and name is not None:
                states[instance_id.text] = name.text
    return states


def parse_error(body):
    """(code, message) of an EC2 error answer (<Response><Errors><Error><Code/><Message/>...)."""
    from xml.etree import ElementTree  # pylint: disable=import-outside-toplevel

    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, body.decode("utf-8", "replace")[:200] if isinstance(body, bytes) else str(body)[:200]
    error = next((element for element in root.iter() if _local(element.tag) == "Error"), None)
    if error is None:
        return None, None
    code, message = _child(error, "Code"), _child(error, "Message")
    return (code.text if code is not None else None), (message.text if message is not None else None)


# -- the call --------------------------------------------------------------------------------------------------------
def _credentials(params, environ=None):
    """Frozen credentials as a boto3 client with these options would find them (signing.credentials), and the
    botocore session that found them (None when the keys were given or are the environment's)."""
    try:
        credentials, session = signing.credentials(params, environ)
    except signing.exceptions().BotoCoreError as exc:  # evaluated (imported) only when something was raised
        raise QueryError(type(exc).__name__, str(exc))
    if credentials is None:
        raise QueryError(retry.NO_CREDENTIALS,
                         "no AWS credentials found: set access_key/secret_key or profile, or the "
                         "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE environment variables")
    return credentials.get_frozen_credentials(), session


class InstanceStates:
    """Callable: ids -> {id: EC2 state name} for those EC2 lists, with one signed DescribeInstances request.

    Built from a module's connection options; nothing is imported or resolved until it is first called."""

    def __init__(self, params, sleep=time.sleep, environ=None):
        self.params = params
        self.sleep = sleep
        self.environ = os.environ if environ is None else environ
        self.calls = 0

    def __call__(self, instance_ids):
        credentials, session = _credentials(self.params, self.environ)
        region = signing.region(self.params, session, self.environ)
        url = endpoint_for(region, self.params.get("endpoint_url"), self.environ)
        if not region:
            raise QueryError("NoRegion", "no AWS region set: set the region option or AWS_REGION")
        http = signing.http_session(self.params, url, environ=self.environ)
        body = request_body(instance_ids)
        attempt = 0
        try:
            while True:
                attempt += 1
                self.calls += 1
                request = signing.signed_request(credentials, "ec2", region, url, body, {
                    "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                    "User-Agent": "ec2spot.pool-get"})
                try:
                    response = http.send(request)
                except signing.exceptions().BotoCoreError as exc:  # no answer: refused, timed out, TLS
                    raise QueryError("EndpointError", "cannot reach %s: %s" % (url, exc))
                if response.status_code == 200:
                    return parse_states(response.content)
                code, message = parse_error(response.content)
                retryable = code in retry.QUERY_RETRYABLE_CODES or (code is None and response.status_code >= 500)
                if not retryable or attempt >= retry.HAND_OUT.attempts:
                    raise QueryError(code or "HTTP%d" % response.status_code,
                                     message or "HTTP %d from %s" % (response.status_code, url),
                                     status=response.status_code)
                self.sleep(retry.pause(attempt, policy=retry.HAND_OUT))
        finally:
            http.close()
