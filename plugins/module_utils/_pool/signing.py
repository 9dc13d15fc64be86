# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One signed AWS request without a service model: what the hand-out path's two light clients share.

`ec2query.py` (get's DescribeInstances, EC2's Query protocol) and `dynamoquery.py` (the DynamoDB store's client,
DynamoDB's JSON protocol) each build their own body and read their own answer; the rest is here, once: the
credentials, region and endpoint a boto3 client made from the module's connection options would use, the HTTP
session (CA bundle / validate_certs, proxies, timeouts) and the SigV4 signature. botocore's signer, credential
chain and HTTP session load no service model (a boto3 client loads and parses its service's JSON model when it is
created: 0.2-0.3 s for EC2).

Everything botocore is imported inside the functions, so that importing this module costs nothing. Failures are
botocore's own exceptions (ProfileNotFound, EndpointConnectionError, ...): each caller words them its way.
"""

from __future__ import annotations

import os

# The botocore settings of aws_config that apply to one plain request; the others (retries, signature version...)
# are the callers' own.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15


def endpoint_url(service, region, endpoint_url=None, environ=None):
    """The URL to ask: the module's endpoint_url, else the one botocore would take from the environment
    (AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL), else the service's regional endpoint; None when there is
    neither a URL nor a region. `service` is the endpoint prefix (ec2, dynamodb)."""
    environ = os.environ if environ is None else environ
    url = endpoint_url or environ.get("AWS_ENDPOINT_URL_%s" % service.upper()) or environ.get("AWS_ENDPOINT_URL")
    if url:
        return url if "://" in url else "https://" + url
    if not region:
        return None
    # Regions of other partitions than aws and aws-cn (GovCloud is in aws's domain) need endpoint_url.
    return "https://%s.%s.amazonaws.com%s" % (service, region, ".cn" if region.startswith("cn-") else "")


def credentials(params):
    """(credentials, botocore session or None) as a boto3 client with these options would find them: keys given,
    else the profile, else botocore's default chain (environment, config files, container and instance roles).
    The credentials are None when the chain finds none; a bad profile raises botocore's error."""
    # pylint: disable=import-outside-toplevel
    from botocore.credentials import Credentials

    if params.get("access_key") and params.get("secret_key"):
        return Credentials(params["access_key"], params["secret_key"], params.get("session_token")), None
    import botocore.session

    session = botocore.session.Session(profile=params.get("profile") or None)
    return session.get_credentials(), session


def region(params, session=None):
    """The region option, else the profile's region (or the default profile's), as boto3 takes it from the
    environment and the config file; None when there is none."""
    name = params.get("region")
    if not name:
        # pylint: disable=import-outside-toplevel
        import botocore.session

        session = session or botocore.session.Session(profile=params.get("profile") or None)
        name = session.get_config_variable("region")
    return name


def socket_options(config):
    """The socket options a boto3 client sets: TCP_NODELAY always (URLLib3Session alone sets none, and then a
    request's headers and body, sent in two writes, wait for the server's delayed ACK: +40 ms per request,
    measured through the fault proxy), SO_KEEPALIVE when aws_config's tcp_keepalive asks for it."""
    import socket  # pylint: disable=import-outside-toplevel

    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    if config.get("tcp_keepalive"):
        options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    return options


def http_session(params, url, connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT):
    """botocore's HTTP session with the module's CA bundle / validate_certs, aws_config's proxies, timeouts and
    tcp_keepalive, else the environment's proxies (unless NO_PROXY covers the endpoint's host)."""
    # pylint: disable=import-outside-toplevel
    from urllib.request import getproxies
    from urllib.request import proxy_bypass

    from botocore.httpsession import URLLib3Session

    verify = params.get("aws_ca_bundle") or params.get("validate_certs", True)
    config = params.get("aws_config") or {}
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    proxies = config.get("proxies") or ({} if proxy_bypass(host) else getproxies())
    return URLLib3Session(verify=verify, proxies=proxies, socket_options=socket_options(config),
                          timeout=(config.get("connect_timeout", connect_timeout),
                                   config.get("read_timeout", read_timeout)))


def signed_request(credentials, service, region, url, body, headers):
    """The prepared request, signed with SigV4 for `service` in `region` (sign once per attempt: it carries the
    time). `credentials` may be refreshable: the signature takes their current frozen values."""
    # pylint: disable=import-outside-toplevel
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    frozen = credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials") else credentials
    SigV4Auth(frozen, service, region).add_auth(request)
    return request.prepare()
