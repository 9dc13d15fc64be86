"""What the hand-out path's two light clients (ec2query.py, dynamoquery.py) share: signing.py, with plain values."""

from __future__ import annotations

import socket

from ansible_collections.ec2spot.pool.plugins.module_utils._pool import signing

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
