"""What the hand-out path's two light clients (ec2query.py, dynamoquery.py) share: signing.py, with plain values."""

from __future__ import annotations

import calendar
import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import signing

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def test_the_endpoint_is_the_option_then_the_services_variable_then_the_shared_one_then_the_region():
    environ = {"AWS_ENDPOINT_URL": "http://all", "AWS_ENDPOINT_URL_DYNAMODB": "ddb.local:8000"}
    assert signing.endpoint_url("dynamodb", "eu-west-1", "http://option", environ) == "http://option"
    assert signing.endpoint_url("dynamodb", "eu-west-1", None, environ) == "https://ddb.local:8000"
    assert signing.endpoint_url("ec2", "eu-west-1", None, environ) == "http://all"
    assert signing.endpoint_url("ec2", "eu-west-1", None, {}) == "https://ec2.eu-west-1.amazonaws.com"
    assert signing.endpoint_url("dynamodb", "cn-north-1", None, {}) == "https://dynamodb.cn-north-1.amazonaws.com.cn"
    assert signing.endpoint_url("dynamodb", None, None, {}) is None


def test_sockets_are_set_as_a_boto3_client_sets_them():
    """TCP_NODELAY as botocore's client sets it: without it each request waited for the server's delayed ACK."""
    assert signing.socket_options({}) == [NODELAY]
    assert signing.socket_options({"tcp_keepalive": True}) == [NODELAY, (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    session = signing.http_session({"aws_config": {"tcp_keepalive": False}}, "https://ec2.eu-west-1.amazonaws.com")
    try:
        assert session._socket_options == [NODELAY]  # pylint: disable=protected-access  # botocore keeps no other
    finally:
        session.close()


def test_keys_given_are_the_credentials_and_no_session_is_made():
    credentials, session = signing.credentials({"access_key": "AK", "secret_key": "SK", "session_token": "T"})
    assert (credentials.access_key, credentials.secret_key, credentials.token, session) == ("AK", "SK", "T", None)


# -- the fast path's SigV4 equals botocore's ------------------------------------------------------------------------
NOW = datetime.datetime(2026, 11, 30, 10, 15, 23)
EC2_FORM = ("Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=instance-id&Filter.1.Value.1=i-0123456789abcdef0"
            "&Filter.1.Value.2=i-1")
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "User-Agent": "ec2spot.pool-get"}
DDB_JSON = b'{"TableName":"ec2spot-pool","ConsistentRead":true,"KeyConditionExpression":"#p = :p"}'
DDB_HEADERS = {"X-Amz-Target": "DynamoDB_20120810.Query", "Content-Type": "application/x-amz-json-1.0",
               "User-Agent": "ec2spot.pool-dynamodb"}
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+/token=="
CASES = {
    "ec2-form": ("ec2", "eu-west-1", "https://ec2.eu-west-1.amazonaws.com", EC2_FORM, FORM_HEADERS, None),
    "ec2-form-token": ("ec2", "eu-west-1", "https://ec2.eu-west-1.amazonaws.com", EC2_FORM, FORM_HEADERS, TOKEN),
    "dynamodb-json-token": ("dynamodb", "us-east-1", "https://dynamodb.us-east-1.amazonaws.com", DDB_JSON,
                            DDB_HEADERS, TOKEN),
    "dynamodb-json": ("dynamodb", "us-east-1", "https://dynamodb.us-east-1.amazonaws.com", DDB_JSON, DDB_HEADERS,
                      None),
    "other-port": ("dynamodb", "us-east-1", "http://127.0.0.1:8000", DDB_JSON, DDB_HEADERS, TOKEN),
    "default-port-given": ("ec2", "us-east-1", "https://ec2.us-east-1.amazonaws.com:443", EC2_FORM, FORM_HEADERS,
                           None),
    "path-slash-and-query": ("dynamodb", "eu-central-1", "http://localhost:4566/?b=2&a=1&a=0&c=x%2Fy&d=",
                             DDB_JSON, DDB_HEADERS, None),
    "path-and-spaces": ("ec2", "ap-southeast-2", "https://gateway.example.com/ec2/proxy?Version=2016-11-15",
                        EC2_FORM, dict(FORM_HEADERS, **{"X-Custom": "  a   b  "}), TOKEN),
    "empty-body": ("dynamodb", "us-west-2", "https://dynamodb.us-west-2.amazonaws.com/", b"", DDB_HEADERS, None),
}


def botocore_signed(service, region, url, body, headers, token, monkeypatch):
    """The headers botocore's SigV4Auth adds to the same request at NOW."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: NOW)
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    botocore.auth.SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token), service,
                            region).add_auth(request)
    return {name: request.headers.get(name) for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_signature_is_botocores(case, monkeypatch):
    """moto checks no signature: this comparison with botocore's signer, at a fixed time, is the test of ours."""
    service, region, url, body, headers, token = CASES[case]
    keys = signing.Keys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    request = signing.signed_request(keys, service, region, url, body, headers,
                                     now=calendar.timegm(NOW.timetuple()))
    assert isinstance(request, signing.Request)  # ours, not botocore's
    ours = {name: request.headers.get(name) for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")}
    assert ours == botocore_signed(service, region, url, body, headers, token, monkeypatch)
    assert ours["X-Amz-Date"] == "20261130T101523Z"
    assert (ours["X-Amz-Security-Token"] is None) == (token is None)
    assert request.body == (body.encode() if isinstance(body, str) else body)


def test_the_host_sent_is_the_host_signed():
    assert signing.host_header("https://ec2.us-east-1.amazonaws.com:443/x") == "ec2.us-east-1.amazonaws.com"
    assert signing.host_header("http://127.0.0.1:80") == "127.0.0.1"
    assert signing.host_header("http://127.0.0.1:8000/") == "127.0.0.1:8000"
    assert signing.host_header("https://user@h.example:8443") == "h.example:8443"


# -- where the keys come from: options, then the environment; a profile is botocore's -------------------------------
ENV_KEYS = {"AWS_ACCESS_KEY_ID": "EAK", "AWS_SECRET_ACCESS_KEY": "ESK", "AWS_SESSION_TOKEN": "ET"}


def keys_of(found):
    return None if found is None else (found.access_key, found.secret_key, found.token)


@pytest.mark.parametrize("params, environ, expected", [
    ({"access_key": "AK", "secret_key": "SK"}, ENV_KEYS, ("AK", "SK", None)),  # options before the environment
    ({"access_key": "AK", "secret_key": "SK", "session_token": "T"}, {}, ("AK", "SK", "T")),
    ({}, ENV_KEYS, ("EAK", "ESK", "ET")),
    ({}, {"AWS_ACCESS_KEY_ID": "EAK", "AWS_SECRET_ACCESS_KEY": "ESK", "AWS_SECURITY_TOKEN": "OLD"},
     ("EAK", "ESK", "OLD")),
    ({"access_key": "AK"}, {"AWS_ACCESS_KEY_ID": "EAK", "AWS_SECRET_ACCESS_KEY": "ESK"}, ("EAK", "ESK", None)),
    ({}, {"AWS_ACCESS_KEY_ID": "EAK"}, None),  # partial: botocore's chain says what is wrong
    ({}, {}, None),  # config files, SSO, container and instance roles: botocore's chain
    ({"profile": "ci"}, ENV_KEYS, None),
    ({"access_key": "AK", "secret_key": "SK", "profile": "ci"}, {}, None),
    ({}, dict(ENV_KEYS, AWS_PROFILE="ci"), None),
    ({}, dict(ENV_KEYS, AWS_DEFAULT_PROFILE="ci"), None),
    ({}, dict(ENV_KEYS, AWS_CREDENTIAL_EXPIRATION="2026-11-30T11:00:00Z"), None),
])
def test_the_fast_keys_are_the_options_then_the_environment_without_a_profile(params, environ, expected):
    assert keys_of(signing.fast_keys(params, environ)) == expected


def test_the_region_is_the_option_then_the_environment_without_botocore():
    assert signing.region({"region": "eu-west-1"}, environ={"AWS_REGION": "us-east-1"}) == "eu-west-1"
    assert signing.region({}, environ={"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-west-2"}) == "us-east-1"
    assert signing.region({}, environ={"AWS_DEFAULT_REGION": "us-west-2"}) == "us-west-2"


@pytest.mark.parametrize("environ, proxy", [
    ({}, None),
    ({"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
    ({"HTTPS_PROXY": "http://P", "https_proxy": "http://p"}, "http://p"),
    ({"HTTPS_PROXY": "http://P", "https_proxy": ""}, None),  # an empty lowercase one unsets, as in urllib
    ({"HTTP_PROXY": "http://p", "REQUEST_METHOD": "GET"}, None),  # CGI: HTTP_PROXY may be the client's header
])
def test_the_environments_proxy_is_read_as_urllib_reads_it(environ, proxy):
    scheme = "http" if "HTTP_PROXY" in environ else "https"
    assert signing.environment_proxy(scheme, environ) == proxy


def test_a_proxy_takes_botocores_session_and_none_the_standard_librarys(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = "https://dynamodb.eu-west-1.amazonaws.com"
    assert isinstance(signing.http_session({}, url), signing.HTTPSession)
    proxied = signing.http_session({"aws_config": {"proxies": {"https": "http://127.0.0.1:9"}}}, url)
    assert not isinstance(proxied, signing.HTTPSession)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert not isinstance(signing.http_session({}, url), signing.HTTPSession)
    monkeypatch.setenv("NO_PROXY", "dynamodb.eu-west-1.amazonaws.com")  # NO_PROXY respected as before
    assert isinstance(signing.http_session({}, url), signing.HTTPSession)


def test_no_answer_raises_botocores_exceptions():
    """Refused: EndpointConnectionError, as URLLib3Session raises it (callers catch BotoCoreError)."""
    import botocore.exceptions

    with socket.socket() as listener:  # a port nobody listens on
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    session = signing.HTTPSession("http://127.0.0.1:%d" % port)
    request = signing.Request("POST", "http://127.0.0.1:%d" % port, {}, b"")
    with pytest.raises(botocore.exceptions.EndpointConnectionError, match="Could not connect to the endpoint URL"):
        session.send(request)


def test_a_silent_server_is_a_read_timeout():
    import botocore.exceptions

    with socket.socket() as listener:  # accepts (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        session = signing.HTTPSession(url, timeout=(5, 0.2))
        with pytest.raises(botocore.exceptions.ReadTimeoutError, match="Read timeout on endpoint URL"):
            session.send(signing.Request("POST", url, {}, b"{}"))


# -- what a get loads -----------------------------------------------------------------------------------------------
GET_LIKE = """
import json, sys
before = set(sys.modules)
from ansible_collections.ec2spot.pool.plugins.module_utils._pool.common import pool_store
from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.ec2query import InstanceStates
params = {"store": "dynamodb", "dynamodb_table": sys.argv[2], "pool_name": "p", "endpoint_url": sys.argv[1]}
store = pool_store(params)
state = store.read()  # the hand-out's strongly consistent Query
states = InstanceStates(params)(["i-00000000000000000"])  # the get's DescribeInstances
new = sorted(set(sys.modules) - before)
print(json.dumps({"read": state is None, "states": states,
                  "botocore": [name for name in new if name.split(".")[0] in ("botocore", "boto3", "urllib3")]}))
"""


@pytest.fixture
def get_like(moto_server, tmp_path):
    """Runs GET_LIKE against the moto server with `environ` over a clean AWS environment: its report."""
    import boto3

    from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores.dynamodb import DynamoStore
    from tests.support.moto import REGION
    from tests.unit.test_store import dynamodb_client

    moto_server.reset()
    url = moto_server.env()["AWS_URL"]
    DynamoStore(dynamodb_client(url), "ec2spot-fast", "p").ensure_table()
    assert boto3  # the table is made with boto3 here, in the test's process, never in the probe's
    root = Path(__file__).resolve().parents[2]
    base = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    base.update(PYTHONPATH=os.pathsep.join([str(root / "build" / "collections"), str(root)]), AWS_REGION=REGION,
                AWS_CONFIG_FILE=str(tmp_path / "config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
                AWS_EC2_METADATA_DISABLED="true")
    (tmp_path / "config").write_text("[profile ci]\nregion = %s\n" % REGION)
    (tmp_path / "credentials").write_text("[ci]\naws_access_key_id = testing\naws_secret_access_key = testing\n")

    def run(environ):
        proc = subprocess.run([sys.executable, "-c", GET_LIKE, url, "ec2spot-fast"], env=dict(base, **environ),
                              text=True, capture_output=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["read"] and report["states"] == {}  # both calls were made and answered
        return report

    return run


def test_a_get_with_the_environments_keys_loads_no_botocore(get_like):
    assert get_like({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "t"})["botocore"] == []


def test_a_get_with_a_profile_takes_botocores_chain(get_like):
    """The control: with AWS_PROFILE the keys are the profile's, found by botocore (which the probe sees)."""
    report = get_like({"AWS_PROFILE": "ci", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
    assert "botocore.credentials" in report["botocore"] and "botocore.session" in report["botocore"]


def test_a_kept_alive_connection_the_server_closed_is_replaced_not_failed():
    """The DynamoDB store makes several calls on one session: a connection the server closed while it was idle is
    not reused (as urllib3 checks), so the next call opens a new one instead of failing."""
    import threading

    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: 2\r\n\r\n{}"
    closed, served = threading.Event(), []

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        listener.settimeout(30)
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]

        def serve():
            while len(served) < 2:
                conn = listener.accept()[0]
                with conn:
                    request = b""
                    while b"\r\n\r\n{}" not in request:
                        request += conn.recv(65536)
                    served.append(request)
                    conn.sendall(answer)  # keep-alive by HTTP/1.1's default, then closed while idle
                closed.set()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        session = signing.HTTPSession(url)
        request = signing.Request("POST", url, {"X-Amz-Target": "DynamoDB_20120810.Query"}, b"{}")
        assert session.send(request).status_code == 200
        assert closed.wait(30)
        response = session.send(request)
        server.join(30)
        session.close()
    assert (response.status_code, response.content, len(served)) == (200, b"{}", 2)
    assert b"Host: 127.0.0.1:" in served[0] and b"Content-Length: 2" in served[0]
