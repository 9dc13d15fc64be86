# -*- coding: utf-8 -*-
# Copyright: ec2spot.pool contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# This module_utils file is PRIVATE to the ec2spot.pool collection: its names and behaviour may change in any
# release. Do not import it from other collections, playbooks or standalone modules; use amazon.aws instead.
"""One signed AWS request without a service model: what the hand-out path's two light clients share.

`ec2query.py` (get's DescribeInstances, EC2's Query protocol) and `dynamoquery.py` (the DynamoDB store's client,
DynamoDB's JSON protocol) each build their own body and read their own answer; the rest is here, once: the
credentials, region and endpoint a boto3 client made from the module's connection options would use, the HTTP
session (CA bundle / validate_certs, proxies, timeouts) and the SigV4 signature. botocore's signer, credential
chain and HTTP session load no service model (why that matters, with the measured costs: retry.py, written once).

Everything botocore is imported inside the functions, so that importing this module costs nothing. Failures are
botocore's own exceptions (ProfileNotFound, EndpointConnectionError, ...): each caller words them its way.

The fast path, for what importing botocore's credential chain and HTTP session costs (retry.py): when the keys are
the options' or the environment's (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; the first two places
of botocore's chain, in its order) and no profile is named, credentials() returns them as Keys without botocore;
when the region is the option's or the environment's, region() needs no botocore session; signed_request() then
signs with SigV4 as AWS publishes it (sigv4_headers: hashlib and hmac), and when no proxy applies to the endpoint
http_session() sends with the standard library (HTTPSession). A named profile, keys from anywhere else (config
files, SSO, container and instance roles), a region from a config file or a proxy take today's botocore path. Either
way a request that gets no answer raises botocore's exception for it (EndpointConnectionError, ConnectTimeoutError,
ReadTimeoutError, SSLError, ...), imported only then (exceptions()).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from urllib.parse import quote
from urllib.parse import unquote
from urllib.parse import urlsplit

# The botocore settings of aws_config that apply to one plain request; the others (retries, signature version...)
# are the callers' own.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15
# The variables that name a profile for botocore (AWS_DEFAULT_PROFILE is its older name): with one set, the keys
# are the profile's business (botocore drops its environment provider for an explicit profile), so botocore decides.
PROFILE_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")
# Headers never signed: a proxy or the HTTP layer may change them (AWS's SigV4 guide; botocore leaves out the same).
UNSIGNED_HEADERS = frozenset(("user-agent", "expect", "transfer-encoding", "x-amzn-trace-id"))
ALGORITHM = "AWS4-HMAC-SHA256"


def exceptions():
    """botocore.exceptions, imported now. In `except signing.exceptions().ClientError:` Python evaluates the
    expression only when an exception reaches the clause, so a call that succeeds imports no botocore."""
    import botocore.exceptions  # pylint: disable=import-outside-toplevel

    return botocore.exceptions


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


class Keys(object):
    """Credentials found without botocore: the keys as given (botocore's frozen credentials have the same three
    attributes, so a signer takes either)."""

    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key, secret_key, token=None):
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = token or None

    def get_frozen_credentials(self):
        return self

    def __repr__(self):  # never the secret
        return "Keys(%r, ***)" % (self.access_key,)


def fast_keys(params, environ=None):
    """Keys from the options, else from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN, or its older
    name AWS_SECURITY_TOKEN), as the first two places of botocore's chain give them; None when a profile is named
    (option or environment) or the keys are elsewhere: then botocore's chain decides (credentials())."""
    environ = os.environ if environ is None else environ
    if params.get("profile") or any(environ.get(name) for name in PROFILE_VARIABLES):
        return None
    if params.get("access_key") and params.get("secret_key"):
        return Keys(params["access_key"], params["secret_key"], params.get("session_token"))
    if environ.get("AWS_CREDENTIAL_EXPIRATION"):  # botocore makes these refreshable: its business
        return None
    access_key, secret_key = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        return Keys(access_key, secret_key, environ.get("AWS_SESSION_TOKEN") or environ.get("AWS_SECURITY_TOKEN"))
    return None


def credentials(params, environ=None):
    """(credentials, botocore session or None) as a boto3 client with these options would find them: keys given,
    else the profile, else botocore's default chain (environment, config files, container and instance roles).
    The credentials are None when the chain finds none; a bad profile raises botocore's error.
    Keys of the options or the environment without a profile are found without botocore (fast_keys)."""
    keys = fast_keys(params, environ)
    if keys is not None:
        return keys, None
    # pylint: disable=import-outside-toplevel
    from botocore.credentials import Credentials

    if params.get("access_key") and params.get("secret_key"):
        return Credentials(params["access_key"], params["secret_key"], params.get("session_token")), None
    import botocore.session

    session = botocore.session.Session(profile=params.get("profile") or None)
    return session.get_credentials(), session


def region(params, session=None, environ=None):
    """The region option, else the profile's region (or the default profile's), as boto3 takes it from the
    environment and the config file; None when there is none. Without a botocore session or a profile, the
    environment's AWS_REGION / AWS_DEFAULT_REGION is the answer without botocore."""
    name = params.get("region")
    if not name:
        environ = os.environ if environ is None else environ
        if session is None and not params.get("profile") and not any(environ.get(var) for var in PROFILE_VARIABLES):
            name = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
            if name:
                return name
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


def environment_proxy(scheme, environ=None):
    """The proxy the environment names for `scheme` (urllib's getproxies_environment for one scheme: lowercase
    names win, an empty lowercase one unsets, HTTP_PROXY is ignored under CGI), or None."""
    environ = os.environ if environ is None else environ
    wanted = scheme + "_proxy"
    found = None
    for name, value in environ.items():
        if name.lower() == wanted and value and not (scheme == "http" and "REQUEST_METHOD" in environ):
            found = value
    if wanted in environ:
        found = environ[wanted] or None
    return found


def _proxies(params, url, environ=None):
    """The proxies a request to `url` goes through: aws_config's, else the environment's unless NO_PROXY covers
    the endpoint's host (today's rule, urllib's functions), {} when none."""
    config = params.get("aws_config") or {}
    if config.get("proxies"):
        return config["proxies"]
    scheme = url.split("://", 1)[0].lower()
    import sys  # pylint: disable=import-outside-toplevel

    if environment_proxy(scheme, environ) is None and sys.platform.startswith("linux"):
        return {}  # nothing to bypass: urllib (and its import) is not needed. Other systems have system proxies.
    # pylint: disable=import-outside-toplevel
    from urllib.request import getproxies
    from urllib.request import proxy_bypass

    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return {} if proxy_bypass(host) else getproxies()


def http_session(params, url, connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, environ=None):
    """The HTTP session with the module's CA bundle / validate_certs, aws_config's proxies, timeouts and
    tcp_keepalive, else the environment's proxies (unless NO_PROXY covers the endpoint's host): the standard
    library's (HTTPSession) when no proxy applies to the endpoint, else botocore's."""
    verify = params.get("aws_ca_bundle") or params.get("validate_certs", True)
    config = params.get("aws_config") or {}
    proxies = _proxies(params, url, environ)
    timeout = (config.get("connect_timeout", connect_timeout), config.get("read_timeout", read_timeout))
    if not proxies.get(url.split("://", 1)[0].lower()):
        return HTTPSession(url, verify=verify, timeout=timeout, socket_options=socket_options(config))
    from botocore.httpsession import URLLib3Session  # pylint: disable=import-outside-toplevel

    return _BotocoreSession(URLLib3Session(verify=verify, proxies=proxies, socket_options=socket_options(config),
                                           timeout=timeout))


def signed_request(credentials, service, region, url, body, headers, now=None):
    """The prepared request, signed with SigV4 for `service` in `region` (sign once per attempt: it carries the
    time). `credentials` may be refreshable: the signature takes their current frozen values. Keys (fast_keys)
    are signed here (sigv4_headers, at `now` if given), others by botocore's signer, as before."""
    if isinstance(credentials, Keys):
        if isinstance(body, str):
            body = body.encode("utf-8")
        signed = dict(headers)
        signed.update(sigv4_headers(credentials, service, region, "POST", url, signed, body, now))
        return Request("POST", url, signed, body)
    # pylint: disable=import-outside-toplevel
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    frozen = credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials") else credentials
    SigV4Auth(frozen, service, region).add_auth(request)
    return request.prepare()


# -- SigV4, from AWS's published description ("Create a signed AWS API request", Signature Version 4) -------------
def host_header(url):
    """The Host header of a request to `url`: the host, and the port unless it is the scheme's default."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    if parts.port is not None and parts.port == default:
        return netloc.rsplit(":", 1)[0]
    return netloc


def canonical_uri(path):
    """The path with dot segments removed and each segment URI-encoded (again: AWS encodes the already encoded
    path once more for every service but S3); '/' when empty."""
    segments = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized, safe="/~")


def canonical_query(query):
    """Each name and value URI-encoded (unreserved characters kept), sorted by name then value, '&'-joined."""
    if not query:
        return ""
    pairs = []
    for pair in query.split("&"):
        name, _sep, value = pair.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join("%s=%s" % pair for pair in sorted(pairs))


def _hmac(key, text):
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sigv4_headers(credentials, service, region, method, url, headers, body, now=None):
    """The headers that sign a request (X-Amz-Date, X-Amz-Security-Token when there is a session token,
    Authorization) for `credentials` (access_key, secret_key, token) at `now` (epoch seconds, default the clock).
    Signed: every header given but the unsigned ones (UNSIGNED_HEADERS), the Host, X-Amz-Date and the token."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    added = {"X-Amz-Date": stamp}
    if credentials.token:
        added["X-Amz-Security-Token"] = credentials.token
    signed = {}
    for name, value in headers.items():  # a signature, date or token given is replaced by ours
        lname = name.lower()
        if lname not in UNSIGNED_HEADERS and lname not in ("authorization", "x-amz-date", "x-amz-security-token"):
            signed[lname] = " ".join(str(value).split())  # trimmed, inner runs of spaces made one
    for name, value in added.items():
        signed[name.lower()] = value
    signed.setdefault("host", host_header(url))
    names = sorted(signed)
    parts = urlsplit(url)
    payload = body if isinstance(body, bytes) else (body or "").encode("utf-8")
    canonical = "\n".join([method.upper(), canonical_uri(parts.path), canonical_query(parts.query),
                           "".join("%s:%s\n" % (name, signed[name]) for name in names), ";".join(names),
                           hashlib.sha256(payload).hexdigest()])
    scope = "%s/%s/%s/aws4_request" % (stamp[:8], region, service)
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_key).encode("utf-8"), stamp[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    added["Authorization"] = "%s Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        ALGORITHM, credentials.access_key, scope, ";".join(names), signature)
    return added


# -- sending ---------------------------------------------------------------------------------------------------------
class Request(object):
    """A signed request as the sessions take it (botocore's prepared request has the same four attributes)."""

    __slots__ = ("method", "url", "headers", "body")

    def __init__(self, method, url, headers, body):
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body


class Response(object):
    """An answer, with the attributes of botocore's (status_code, headers, content)."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code, headers, content):
        self.status_code = status_code
        self.headers = headers
        self.content = content


def _ssl_context(verify):
    """The TLS context of `verify`: False (validate_certs: false) checks nothing; a path is the CA bundle; True is
    the bundle botocore would take (certifi's when installed, else botocore's own)."""
    import ssl  # pylint: disable=import-outside-toplevel

    if verify is False:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True:
        verify = default_ca_bundle()
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


def default_ca_bundle():
    """botocore's default CA bundle (httpsession.get_cert_path(True)), found without importing botocore."""
    try:
        import certifi  # pylint: disable=import-outside-toplevel
    except ImportError:
        import importlib.util  # pylint: disable=import-outside-toplevel

        spec = importlib.util.find_spec("botocore")
        return os.path.join(os.path.dirname(spec.origin), "cacert.pem")
    return certifi.where()


class HTTPSession(object):
    """Kept-alive connections to one endpoint with the standard library (http.client), with botocore's timeouts
    (connect, then read), socket options and TLS verification; thread-safe (a connection serves one request at a
    time; idle ones are kept for the next). `send` raises botocore's exception when there is no answer, as
    URLLib3Session does: EndpointConnectionError (refused, unknown host), ConnectTimeoutError, ReadTimeoutError,
    SSLError, ConnectionClosedError (the connection dropped mid-answer), HTTPClientError."""

    def __init__(self, url, verify=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), socket_options=None):
        import threading  # pylint: disable=import-outside-toplevel

        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.verify = verify
        self.connect_timeout, self.read_timeout = timeout
        self._socket_options = list(socket_options or [])
        self._context = None  # the TLS context, made once (loading a CA bundle takes milliseconds)
        self._idle = []
        self._lock = threading.Lock()

    def _connect(self):
        """A new connection, connected within the connect timeout, then given the read timeout."""
        import http.client  # pylint: disable=import-outside-toplevel
        import socket  # pylint: disable=import-outside-toplevel

        if self.scheme == "https":
            with self._lock:
                if self._context is None:
                    self._context = _ssl_context(self.verify)
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                                     context=self._context)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        options = self._socket_options

        def create_connection(*args, **kwargs):  # http.client sets no socket option: set botocore's
            sock = socket.create_connection(*args, **kwargs)
            for option in options:
                sock.setsockopt(*option)
            return sock

        connection._create_connection = create_connection  # pylint: disable=protected-access
        try:
            connection.connect()  # TCP, and TLS's handshake for https
            connection.sock.settimeout(self.read_timeout)
        except BaseException:
            connection.close()
            raise
        return connection

    def _take_idle(self):
        """A kept-alive connection the server has not closed meanwhile (one readable while idle was closed, as
        urllib3 checks before reusing one), or None."""
        import select  # pylint: disable=import-outside-toplevel

        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()
            try:
                if connection.sock is not None and not select.select([connection.sock], [], [], 0)[0]:
                    return connection
            except (OSError, ValueError):
                pass
            connection.close()

    def send(self, request):
        """The answer to `request` (a Request or botocore's prepared request) as a Response."""
        import socket  # pylint: disable=import-outside-toplevel
        import ssl  # pylint: disable=import-outside-toplevel

        body = request.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        parts = urlsplit(request.url)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        headers = dict(request.headers.items())
        if not any(name.lower() == "host" for name in headers):
            headers["Host"] = host_header(request.url)  # the host signed (http.client would lowercase it)
        headers = {name: value for name, value in headers.items() if name.lower() != "content-length"}
        headers["Content-Length"] = str(len(body or b""))
        connection = self._take_idle()
        connected = connection is not None
        try:
            if connection is None:
                connection = self._connect()
                connected = True
            connection.request(request.method, target, body=body, headers=headers)
            answer = connection.getresponse()
            content = answer.read()
        except BaseException as exc:
            if connection is not None:
                connection.close()
            error = self._error(request.url, exc, connected, socket, ssl)
            if error is exc:
                raise
            raise error from exc
        if answer.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.append(connection)
        return Response(answer.status, _Headers(answer.getheaders()), content)

    @staticmethod
    def _error(url, exc, connected, socket, ssl):
        """botocore's exception for a request that got no answer, as URLLib3Session raises them."""
        import http.client  # pylint: disable=import-outside-toplevel

        if not isinstance(exc, Exception):
            return exc  # KeyboardInterrupt and the like pass through
        errors = exceptions()
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, socket.timeout):
            return errors.SSLError(endpoint_url=url, error=exc)
        if isinstance(exc, socket.timeout):
            if connected:
                return errors.ReadTimeoutError(endpoint_url=url, error=exc)
            return errors.ConnectTimeoutError(endpoint_url=url, error=exc)
        if not connected and isinstance(exc, OSError):
            return errors.EndpointConnectionError(endpoint_url=url, error=exc)
        if isinstance(exc, (OSError, http.client.HTTPException)):
            return errors.ConnectionClosedError(endpoint_url=url, error=exc)
        return errors.HTTPClientError(error=exc)

    def close(self):
        """Close the idle connections (as URLLib3Session.close() clears its pool)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class _Headers(dict):
    """An answer's headers: items() as the server spelled them (dynamoquery lowers the names itself)."""

    def __init__(self, pairs):
        super().__init__()
        for name, value in pairs:
            self[name] = value


class _BotocoreSession(object):
    """botocore's URLLib3Session (the path with a proxy) taking a Request as well as its own prepared request."""

    def __init__(self, session):
        self.session = session
        self._socket_options = session._socket_options  # pylint: disable=protected-access

    def send(self, request):
        if isinstance(request, Request):
            from botocore.awsrequest import AWSRequest  # pylint: disable=import-outside-toplevel

            request = AWSRequest(method=request.method, url=request.url, data=request.body,
                                 headers=request.headers).prepare()
        return self.session.send(request)

    def close(self):
        self.session.close()
