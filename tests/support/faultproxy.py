"""A fault-injection HTTP proxy in front of the moto server: genuine EC2 errors and slow answers on demand.

The modules, the detached refill job and the demo reach EC2 over real HTTP through an endpoint URL, so faults
are injected by a real server on 127.0.0.1 rather than by mocks. The proxy forwards every request to moto and,
for requests that match a rule, answers instead with the error AWS itself sends (EC2 query-protocol XML and the
HTTP status AWS uses for that code), or forwards only after a delay.

Three things go beyond plain forwarding, because moto alone would give dishonest answers:

- Instant fleets. moto's CreateFleet ignores the AvailabilityZone of an override and launches only the cheapest
  (in practice the first) override. The proxy therefore answers `CreateFleet Type=instant` itself: it registers
  the fleet in moto with zero capacity (so the FleetId is real), launches the capacity through RunInstances on the
  first override that is not failed by an offering rule (round-robin over the survivors for `diversified`), and
  reports each failed override in the answer's `errorSet`, as AWS does.
- Offerings. `fail_offering()` fails one (market, instance type, zone, subnet) whichever API asks for it: a
  RunInstances for that offering gets the error as its answer, a CreateFleet gets it in `errorSet` for that override.
- EC2 quotas. moto's Service Quotas knows only VPC quotas (GetServiceQuota for service code `ec2` is
  NoSuchResourceException there). `set_service_quota()` makes the proxy answer GetServiceQuota for one EC2 quota
  code itself, with the shape AWS answers in; other codes go on to moto.
- Idempotency. moto ignores `ClientToken`; AWS returns the first answer again for a repeated token (and
  `IdempotentParameterMismatch` for a different request with the same token). The proxy does that for RunInstances
  and instant CreateFleet, so a caller that retries after a crash sees what it would see on AWS.

Every request is recorded (action, parameters, what the proxy did) so tests can count calls. Rules and records
can be changed while the proxy runs, from the test process (thread-safe methods) or from any process through
the JSON control API under `/__faults__` on the same port.

Status codes: the EC2 API reference splits codes into client errors (400-series) and server errors (500-series).
Observed on the wire: InsufficientInstanceCapacity 500, RequestLimitExceeded 503 (botocore's EC2 retry policy
matches exactly that pair), UnauthorizedOperation 403, AuthFailure 401, DryRunOperation 412. Note what follows
for callers: botocore retries every 500/502/503/504 answer (legacy mode: up to 5 attempts), so an
InsufficientInstanceCapacity that fires once is retried transparently unless the client turns retries down.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import http.server
import itertools
import json
import socket
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union
from xml.sax.saxutils import escape

import pytest

from tests.support.moto import MotoServer

CONTROL_PREFIX = "/__faults__"
EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
EC2_API_VERSION = "2016-11-15"

# The HTTP status AWS sends with each error code; any code not listed is a client error with 400.
ERROR_STATUS: dict[str, int] = {
    # Server errors (500-series) in the EC2 error reference.
    "InsufficientInstanceCapacity": 500,
    "InsufficientAddressCapacity": 500,
    "InsufficientCapacity": 500,
    "InsufficientHostCapacity": 500,
    "InsufficientReservedInstanceCapacity": 500,
    "InsufficientVolumeCapacity": 500,
    "InternalError": 500,
    "InternalFailure": 500,
    "RequestLimitExceeded": 503,
    "EC2ThrottledException": 503,
    "ServiceUnavailable": 503,
    "Unavailable": 503,
    # Client errors whose status is not 400.
    "AuthFailure": 401,
    "UnauthorizedOperation": 403,
    "DryRunOperation": 412,
}

# Messages worded as AWS words them; {instance_type}, {availability_zone}, {subnet_id} come from the offering.
DEFAULT_MESSAGES: dict[str, str] = {
    "InsufficientInstanceCapacity": (
        "We currently do not have sufficient {instance_type} capacity in the Availability Zone you requested "
        "({availability_zone}). Our system will be working on provisioning additional capacity. You can currently "
        "get {instance_type} capacity by not specifying an Availability Zone in your request or choosing a "
        "different Availability Zone."
    ),
    "UnfulfillableCapacity": "Unable to fulfill capacity due to your request configuration. Please adjust your "
                             "request and try again.",
    "Unsupported": "The requested configuration is currently not supported. Please check the documentation for "
                   "supported configurations.",
    "InsufficientCapacityOnHost": "There is not enough capacity on the Dedicated Host to launch the instance.",
    "MaxSpotInstanceCountExceeded": "Max spot instance count exceeded",
    "VcpuLimitExceeded": (
        "You have requested more vCPU capacity than your current vCPU limit of 32 allows for the instance bucket "
        "that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request "
        "to request an adjustment to this limit."
    ),
    "MaxFleetCountExceeded": "You've reached your quota for maximum Fleet Requests for this account.",
    "SpotMaxPriceTooLow": "Your Spot request price is lower than the minimum required Spot request fulfillment "
                          "price for {instance_type}.",
    "InsufficientFreeAddressesInSubnet": "There are not enough free addresses in subnet '{subnet_id}' to satisfy "
                                         "the requested number of instances.",
    "InstanceLimitExceeded": "You have requested more instances than your current instance limit allows for the "
                             "specified instance type.",
    "InvalidParameterValue": "Invalid value for parameter.",
    "RequestLimitExceeded": "Request limit exceeded.",
    "Throttling": "Rate exceeded",
    "InternalError": "An internal error has occurred",
    "Unavailable": "The server is overloaded and can't handle the request.",
    "AuthFailure": "AWS was not able to validate the provided access credentials",
    "UnauthorizedOperation": "You are not authorized to perform this operation.",
    "IdempotentParameterMismatch": "Arguments on this idempotent request are inconsistent with arguments used in "
                                   "previous request(s).",
    # DynamoDB (JSON protocol: answered as JSON, see json_error_body).
    "ProvisionedThroughputExceededException": "The level of configured provisioned throughput for the table was "
                                              "exceeded. Consider increasing your provisioning level with the "
                                              "UpdateTable API.",
    "ThrottlingException": "Rate of requests exceeds the allowed throughput.",
    "AccessDeniedException": "User: arn:aws:iam::123456789012:user/ci is not authorized to perform this action "
                             "because no identity-based policy allows the action",
}

# Actions whose ClientToken the proxy honours the way AWS does (moto ignores it).
IDEMPOTENT_ACTIONS = ("RunInstances", "CreateFleet")

# A matcher for one value: a string (equal), a collection of strings (one of), a predicate, or None (anything).
Matcher = Union[str, Iterable[str], Callable[[Any], bool], None]


def status_for(code: str) -> int:
    return ERROR_STATUS.get(code, 400)


def _matches(matcher: Matcher, value: Any) -> bool:
    if matcher is None:
        return True
    if callable(matcher):
        return bool(matcher(value))
    if isinstance(matcher, str):
        return value == matcher
    return value in set(matcher)


def _matcher_json(matcher: Matcher) -> Any:
    if matcher is None or isinstance(matcher, str):
        return matcher
    if callable(matcher):
        return "<predicate>"
    return sorted(matcher)


@dataclass(frozen=True)
class Offering:
    """Where a launch asks for capacity: market (spot/on-demand), instance type, zone, subnet (None: unspecified)."""

    market: str
    instance_type: str | None
    availability_zone: str | None
    subnet_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"market": self.market, "instance_type": self.instance_type,
                "availability_zone": self.availability_zone, "subnet_id": self.subnet_id}


class _Rule:
    """What rules share: an id, how many more times they fire (None: forever) and how often they fired."""

    id: int
    times: int | None
    fired: int

    def _take(self) -> bool:
        """Consume one firing; the caller holds the proxy's lock."""
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass(eq=False)
class RequestRule(_Rule):
    """Answer a whole request with an error, or forward it late: matches on Action and form parameters."""

    action: Matcher
    code: str | None = None
    message: str | None = None
    status: int | None = None
    params: dict[str, Matcher] = field(default_factory=dict)
    times: int | None = None
    delay: float = 0.0
    id: int = 0
    fired: int = 0

    def matches(self, action: str | None, params: Mapping[str, str]) -> bool:
        return _matches(self.action, action) and all(
            _matches(matcher, params.get(name)) for name, matcher in self.params.items())

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "request", "action": _matcher_json(self.action), "code": self.code,
                "message": self.message, "status": self.status, "times": self.times, "delay": self.delay,
                "fired": self.fired, "params": {k: _matcher_json(v) for k, v in self.params.items()}}


@dataclass(eq=False)
class OfferingRule(_Rule):
    """Fail launches of one offering: a RunInstances for it, or its override in a CreateFleet.

    With `capacity` the offering is not dry but finite: it supplies that many instances in all (`capacity` counts
    down) and fails only what is asked beyond them, as a nearly exhausted capacity pool does.
    """

    code: str
    market: Matcher = None
    instance_type: Matcher = None
    availability_zone: Matcher = None
    subnet_id: Matcher = None
    message: str | None = None
    times: int | None = None
    capacity: int | None = None
    id: int = 0
    fired: int = 0

    def matches(self, offering: Offering) -> bool:
        return (_matches(self.market, offering.market) and _matches(self.instance_type, offering.instance_type)
                and _matches(self.availability_zone, offering.availability_zone)
                and _matches(self.subnet_id, offering.subnet_id))

    def message_for(self, offering: Offering) -> str:
        template = self.message or DEFAULT_MESSAGES.get(self.code, self.code)
        return template.format(**{k: v or "" for k, v in offering.as_dict().items()})

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "offering", "code": self.code, "message": self.message,
                "times": self.times, "fired": self.fired, "capacity": self.capacity,
                "market": _matcher_json(self.market),
                "instance_type": _matcher_json(self.instance_type),
                "availability_zone": _matcher_json(self.availability_zone),
                "subnet_id": _matcher_json(self.subnet_id)}


@dataclass
class FleetError:
    offering: Offering
    code: str
    message: str


@dataclass
class RequestRecord:
    """One request as the proxy saw it and what it did with it.

    outcome: `forwarded` (moto answered), `injected` (a rule answered), `fleet` (an instant fleet answered by the
    proxy), `replayed` (a repeated ClientToken got the first answer again), `proxy-error` (a bug in the proxy,
    answered as InternalError). Control API calls are not recorded.
    """

    seq: int
    started: float
    action: str | None
    params: dict[str, str]
    outcome: str = "forwarded"
    status: int = 0
    error_code: str | None = None
    rule_id: int | None = None
    delay: float = 0.0
    offerings: list[Offering] = field(default_factory=list)
    fleet_errors: list[FleetError] = field(default_factory=list)
    instance_ids: list[str] = field(default_factory=list)
    duration: float = 0.0
    done: bool = False  # the proxy has finished with it (answered, or gave up because it is stopping)
    # A JSON-protocol request's body (DynamoDB: TableName, Key, ConditionExpression...), which `params` (form and
    # query parameters only) does not show; None for the query protocol (EC2).
    document: dict[str, Any] | None = None

    def matches(self, action: Matcher, params: Mapping[str, Matcher] | None, outcome: Matcher) -> bool:
        return (_matches(action, self.action) and _matches(outcome, self.outcome)
                and all(_matches(m, self.params.get(k)) for k, m in (params or {}).items()))

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "started": self.started, "action": self.action, "params": self.params,
                "outcome": self.outcome, "status": self.status, "error_code": self.error_code,
                "rule_id": self.rule_id, "delay": self.delay, "duration": self.duration,
                "offerings": [o.as_dict() for o in self.offerings],
                "fleet_errors": [dict(e.offering.as_dict(), code=e.code, message=e.message)
                                 for e in self.fleet_errors],
                "instance_ids": self.instance_ids, "done": self.done, "document": self.document}


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]]


class UpstreamError(Exception):
    """moto answered an internal call (a lookup or a fleet's RunInstances) with an error."""

    def __init__(self, status: int, code: str, message: str, body: bytes):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body


def ec2_error_body(code: str, message: str, request_id: str | None = None) -> bytes:
    """The body EC2 sends with an error (query protocol)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"</Errors><RequestID>{request_id or uuid.uuid4()}</RequestID></Response>").encode()


def json_error_body(code: str, message: str) -> bytes:
    """The body a JSON-protocol service (DynamoDB) sends with an error: botocore reads the code after the `#`."""
    return json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}).encode()


def _error_answer(code: str, message: str, status: int | None = None, json_protocol: bool = False) -> _Answer:
    if json_protocol:
        return _Answer(status or status_for(code), json_error_body(code, message),
                       [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-ErrorType", code)])
    return _Answer(status or status_for(code), ec2_error_body(code, message),
                   [("Content-Type", "text/xml;charset=UTF-8")])


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_error(body: bytes) -> tuple[str, str]:
    if body.startswith(b"{"):  # a JSON-protocol error (DynamoDB)
        try:
            data = json.loads(body)
            return str(data.get("__type", "InternalError")).rsplit("#", 1)[-1], str(data.get("message", ""))
        except ValueError:
            pass
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "InternalError", body.decode(errors="replace")[:200]
    code = next((e.text for e in root.iter() if _local(e.tag) == "Code"), None) or "InternalError"
    message = next((e.text for e in root.iter() if _local(e.tag) == "Message"), None) or ""
    return code, message


def unflatten(params: Mapping[str, str]) -> dict[str, Any]:
    """EC2 query parameters (`A.1.B=x`) as nested data: numbered segments become lists in index order."""
    tree: dict[Any, Any] = {}
    for name, value in params.items():
        node = tree
        parts = [int(p) if p.isdigit() else p for p in name.split(".")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node and all(isinstance(k, int) for k in node):
            return [lists(node[k]) for k in sorted(node)]
        return {k: lists(v) for k, v in node.items()}

    return lists(tree)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """The inverse of `unflatten`: nested data as EC2 query parameters."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data, 1):
            out.update(flatten(value, f"{prefix}.{index}"))
    else:
        out[prefix] = str(data)
    return out


def _xml(name: str, value: Any) -> str:
    """Request-shaped data as EC2 response XML: member names in lowerCamelCase, lists as <item> elements."""
    tag = name[:1].lower() + name[1:]
    if isinstance(value, dict):
        inner = "".join(_xml(k, v) for k, v in value.items())
    elif isinstance(value, list):
        inner = "".join(_xml("item", v) for v in value)
    else:
        inner = escape(str(value))
    return f"<{tag}>{inner}</{tag}>"


@dataclass
class _FleetOverride:
    """One override of an instant fleet, for one market, with the offering it asks for."""

    template: dict[str, Any]
    override: dict[str, Any]
    offering: Offering

    def as_response(self) -> dict[str, Any]:
        spec = {k: self.template[k] for k in ("LaunchTemplateId", "LaunchTemplateName", "Version")
                if k in self.template}
        out: dict[str, Any] = {"LaunchTemplateSpecification": spec}
        if self.override:
            out["Overrides"] = dict(self.override)
        return out


@dataclass
class _FleetLaunch:
    override: _FleetOverride
    instance_ids: list[str]


@dataclass
class _FleetFailure:
    override: _FleetOverride
    error: FleetError


@dataclass
class _FleetMarket:
    """Fills one market's capacity of an instant fleet over its overrides, the way EC2 does."""

    proxy: "FaultProxy"
    headers: Mapping[str, str]
    tree: dict[str, Any]
    launched: list[_FleetLaunch]
    failed: list[_FleetFailure]

    def _grant(self, candidate: _FleetOverride, wanted: int) -> int:
        """How many of `wanted` this override can have; a shortfall is reported for the override."""
        granted, rule = self.proxy._grant(candidate.offering, wanted)
        if rule is not None:
            self.failed.append(_FleetFailure(candidate, FleetError(candidate.offering, rule.code,
                                                                   rule.message_for(candidate.offering))))
        return granted

    def fill(self, count: int, overrides: list[_FleetOverride], diversified: bool) -> None:
        if diversified:
            # Spread over every pool; what a pool cannot supply is spread again over the pools that supplied all
            # they were asked for, until the capacity is met or no pool is left.
            pools, remaining = list(overrides), count
            while remaining and pools:
                fewest_first = sorted(range(len(pools)), key=lambda i: self._launched_count(pools[i]))
                extra = set(fewest_first[:remaining % len(pools)])  # the odd instances go where fewest are
                shares = [remaining // len(pools) + (1 if i in extra else 0) for i in range(len(pools))]
                still = []
                for candidate, share in zip(pools, shares):
                    if not share:
                        still.append(candidate)
                        continue
                    granted = self._grant(candidate, share)
                    launched = bool(granted) and self._launch(candidate, granted)
                    if launched:
                        remaining -= granted
                    if launched and granted == share:  # a pool that refused or failed is not asked again
                        still.append(candidate)
                pools = still
            return
        remaining = count
        for candidate in overrides:  # pools in order until the capacity is met; later pools are not asked
            granted = self._grant(candidate, remaining)
            if granted and self._launch(candidate, granted):
                remaining -= granted
            if not remaining:
                return

    def _launched_count(self, candidate: _FleetOverride) -> int:
        return sum(len(launch.instance_ids) for launch in self.launched if launch.override is candidate)

    def _launch(self, candidate: _FleetOverride, count: int) -> bool:
        override, offering = candidate.override, candidate.offering
        run: dict[str, Any] = {"Action": "RunInstances", "MinCount": str(count), "MaxCount": str(count),
                               "LaunchTemplate": {k: v for k, v in candidate.template.items()
                                                  if k in ("LaunchTemplateId", "LaunchTemplateName", "Version")}}
        if candidate.template.get("LaunchTemplateSpecificationUserData"):
            run["UserData"] = candidate.template["LaunchTemplateSpecificationUserData"]
        if offering.instance_type:
            run["InstanceType"] = offering.instance_type
        if override.get("ImageId"):
            run["ImageId"] = override["ImageId"]
        if override.get("SubnetId"):
            run["SubnetId"] = override["SubnetId"]
        elif override.get("AvailabilityZone"):
            run["Placement"] = {"AvailabilityZone": override["AvailabilityZone"]}
        if offering.market == "spot":
            run["InstanceMarketOptions"] = {"MarketType": "spot"}
            if override.get("MaxPrice"):
                run["InstanceMarketOptions"]["SpotOptions"] = {"MaxPrice": override["MaxPrice"]}
        tags = [t for t in self.tree.get("TagSpecification", []) if t.get("ResourceType") in ("instance", "volume")]
        if tags:
            run["TagSpecification"] = tags
        try:
            root = self.proxy._call(self.headers, flatten(run))
        except UpstreamError as exc:  # e.g. an instance type moto rejects: EC2 reports it for this override
            self.failed.append(_FleetFailure(candidate, FleetError(offering, exc.code, exc.message)))
            self.proxy._give_back(offering, count)
            return False
        ids = [e.text for e in root.iter() if _local(e.tag) == "instanceId" and e.text]
        earlier = next((launch for launch in self.launched if launch.override is candidate), None)
        if earlier is not None:
            earlier.instance_ids.extend(ids)
        else:
            self.launched.append(_FleetLaunch(candidate, ids))
        return True


class _Server(http.server.ThreadingHTTPServer):
    """Threaded server that can close idle keep-alive connections, so `stop()` leaves no handler thread behind."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address, handler, proxy: "FaultProxy"):
        self.proxy = proxy
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # A client that gave up (read timeout) or a stop that closed its connection is not a proxy failure.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # botocore keeps connections alive; so must we
    timeout = 120  # an idle keep-alive connection is dropped after this
    # Headers and body go out in two writes; with Nagle on, the client's delayed ACK adds ~40 ms to each answer.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return "AmazonEC2"  # send_response() writes Server (as EC2 does) and Date; moto's own are dropped

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def _serve(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith(CONTROL_PREFIX):
            answer = proxy._control(self.command, self.path, body)
        else:
            answer = proxy._handle(self.command, self.path, dict(self.headers.items()), body)
        if answer is None:  # the proxy is stopping
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve


class FaultProxy:
    """Forwards to a moto server; injects EC2 errors and delays by rule; records every request.

    Usage (tests): `proxy.fail("RunInstances", "InsufficientInstanceCapacity", params={...}, times=1)`,
    `proxy.fail_offering("InsufficientInstanceCapacity", market="spot", instance_type="t3.micro",
    availability_zone="us-east-1a")`, `proxy.slow("DescribeInstances", 2.0)`, then `proxy.count("RunInstances")`.
    """

    # Headers of moto's answer that this server writes itself (framing, Server, Date).
    NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te",
                     "trailer", "upgrade", "server", "date"}

    def __init__(self, upstream: MotoServer, host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # moto's DynamoDB evaluates a ConditionExpression and then writes with no lock between (read in moto 5.x;
        # two racing conditional writes of one item both succeeded here, once in ~20 runs of 12 claimers on a busy
        # machine). DynamoDB applies each conditional write atomically: DynamoDB requests are forwarded one at a time.
        self._dynamodb_lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a record arrived or finished
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._rules: list[RequestRule | OfferingRule] = []
        self._records: list[RequestRecord] = []
        # ClientToken -> (fingerprint of the request, first successful answer); per-token locks serialise retries.
        self._tokens: dict[tuple[str, str], tuple[str, _Answer, RequestRecord]] = {}
        self._token_locks: dict[tuple[str, str], threading.Lock] = {}
        self._service_quotas: dict[str, tuple[str, float]] = {}  # EC2 quota code -> (name, value)
        self._subnet_zones: dict[str, str] = {}  # subnet ids are unique even across moto resets

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the fault proxy is not running")
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Like MotoServer.env(), but every AWS call goes through this proxy."""
        return self.upstream.env(self.url)

    def start(self) -> "FaultProxy":
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), _Handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed requests, close keep-alive connections and join every thread."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.close_open_connections()
        self._server.server_close()  # joins the handler threads (block_on_close)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- rules ---------------------------------------------------------------------------------------------------

    def add_rule(self, action: Matcher, code: str | None = None, *, message: str | None = None,
                 status: int | None = None, params: Mapping[str, Matcher] | None = None,
                 times: int | None = None, delay: float = 0.0) -> RequestRule:
        """Answer matching requests with `code` (AWS's message and status unless given) and/or after `delay` s.

        Rules are tried in the order they were added; the first that matches and has firings left applies.
        """
        if code is None and not delay:
            raise ValueError("a rule needs an error code, a delay, or both")
        rule = RequestRule(action=action, code=code, message=message, status=status, params=dict(params or {}),
                           times=times, delay=float(delay))
        return self._add(rule)

    def fail(self, action: Matcher, code: str, **kwargs: Any) -> RequestRule:
        return self.add_rule(action, code, **kwargs)

    def slow(self, action: Matcher, delay: float, **kwargs: Any) -> RequestRule:
        return self.add_rule(action, None, delay=delay, **kwargs)

    def fail_offering(self, code: str, *, market: Matcher = None, instance_type: Matcher = None,
                      availability_zone: Matcher = None, subnet_id: Matcher = None, message: str | None = None,
                      times: int | None = None) -> OfferingRule:
        """Fail launches of matching offerings with `code`, in RunInstances and per override in CreateFleet."""
        rule = OfferingRule(code=code, market=market, instance_type=instance_type,
                            availability_zone=availability_zone, subnet_id=subnet_id, message=message, times=times)
        return self._add(rule)

    def limit_offering(self, capacity: int, *, market: Matcher = None, instance_type: Matcher = None,
                       availability_zone: Matcher = None, subnet_id: Matcher = None,
                       code: str = "InsufficientInstanceCapacity", message: str | None = None) -> OfferingRule:
        """Give matching offerings `capacity` instances in all; a launch beyond them gets `code` for the rest
        (RunInstances launches at least MinCount or fails; a fleet moves the rest on to its next override)."""
        rule = OfferingRule(code=code, market=market, instance_type=instance_type,
                            availability_zone=availability_zone, subnet_id=subnet_id, message=message,
                            capacity=int(capacity))
        return self._add(rule)

    def set_service_quota(self, code: str, value: float, name: str = "") -> None:
        """Answer GetServiceQuota for EC2 quota `code` with `value` (what AWS gives once the quota was read)."""
        with self._lock:
            self._service_quotas[code] = (name or code, float(value))

    def _add(self, rule):
        with self._lock:
            rule.id = next(self._ids)
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: _Rule | int) -> bool:
        rule_id = rule if isinstance(rule, int) else rule.id
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != rule_id]
            return len(self._rules) != before

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[RequestRule | OfferingRule]:
        with self._lock:
            return list(self._rules)

    def reset(self) -> None:
        """Forget rules, records and remembered client tokens (moto itself is reset by MotoServer.reset())."""
        with self._lock:
            self._rules.clear()
            self._records.clear()
            self._tokens.clear()
            self._token_locks.clear()
            self._service_quotas.clear()

    # -- records -------------------------------------------------------------------------------------------------

    def records(self, action: Matcher = None, params: Mapping[str, Matcher] | None = None,
                outcome: Matcher = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._records if r.matches(action, params, outcome)]

    def count(self, action: Matcher = None, params: Mapping[str, Matcher] | None = None,
              outcome: Matcher = None) -> int:
        return len(self.records(action, params, outcome))

    def offering_requests(self, *, market: Matcher = None, instance_type: Matcher = None,
                          availability_zone: Matcher = None, subnet_id: Matcher = None,
                          since: float | None = None) -> list[tuple[RequestRecord, Offering]]:
        """Every launch request (RunInstances, or an override of CreateFleet) that asked for a matching offering,
        answered or not: the count a cool-down test needs."""
        probe = OfferingRule(code="", market=market, instance_type=instance_type,
                             availability_zone=availability_zone, subnet_id=subnet_id)
        return [(record, offering) for record in self.records()
                if since is None or record.started >= since
                for offering in record.offerings if probe.matches(offering)]

    def wait_for(self, action: Matcher = None, params: Mapping[str, Matcher] | None = None, *,
                 outcome: Matcher = None, count: int = 1, done: bool = False,
                 timeout: float = 30.0) -> list[RequestRecord]:
        """Block until `count` matching requests have arrived (with `done` or `outcome`: have been answered).

        A test uses it to act at a precise point of another process's work, e.g. SIGKILL a refill job while its
        CreateFleet is held by a delay rule (the launch still happens, the answer is lost, as on AWS).
        """
        deadline = time.monotonic() + timeout

        answered = done or outcome is not None  # the outcome is known only once the request is answered

        def ready() -> list[RequestRecord]:
            return [r for r in self._records if (r.done or not answered) and r.matches(action, params, outcome)]

        with self._changed:
            while len(found := ready()) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(found)} of {count} {action or 'any'} requests within {timeout}s")
                self._changed.wait(remaining)
            return found

    def clear_records(self) -> None:
        with self._lock:
            self._records.clear()

    # -- the request path ----------------------------------------------------------------------------------------

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer | None:
        params = self._params(path, headers, body)
        action = params.get("Action") or self._json_action(headers)
        record = RequestRecord(seq=0, started=time.time(), action=action, params=params,
                               document=self._json_document(headers, body))
        clock = time.monotonic()
        with self._lock:
            record.seq = next(self._seq)
            self._records.append(record)
            self._changed.notify_all()
            rule = next((r for r in self._rules if isinstance(r, RequestRule) and r.matches(action, params)
                         and r._take()), None)
        try:
            if rule is not None:
                record.rule_id = rule.id
                record.delay = rule.delay
                if rule.delay and self._stopping.wait(rule.delay):
                    return None
                if rule.code:
                    record.outcome, record.error_code = "injected", rule.code
                    return self._finish(record, _error_answer(
                        rule.code, rule.message or DEFAULT_MESSAGES.get(rule.code, rule.code), rule.status,
                        json_protocol=not params.get("Action") and action is not None))
            if action in IDEMPOTENT_ACTIONS and params.get("ClientToken"):
                return self._finish(record, self._idempotent(method, path, headers, body, action, params, record))
            return self._finish(record, self._launch_or_forward(method, path, headers, body, action, params, record))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # A bug here must not look like a dropped connection (which botocore would retry silently): answer
            # InternalError, mark the record, and print the traceback where pytest shows it.
            traceback.print_exc()
            record.outcome = "proxy-error"
            return self._finish(record, _error_answer("InternalError", f"fault proxy failed: {exc!r}"))
        finally:
            with self._lock:
                record.duration = time.monotonic() - clock
                record.done = True
                self._changed.notify_all()

    def _finish(self, record: RequestRecord, answer: _Answer) -> _Answer:
        record.status = answer.status
        if answer.status >= 400 and record.error_code is None:
            record.error_code = _parse_error(answer.body)[0]
        return answer

    def _launch_or_forward(self, method, path, headers, body, action, params, record) -> _Answer:
        if action == "RunInstances":
            offering = self._run_instances_offering(params, headers)
            record.offerings = [offering]
            wanted = int(params.get("MaxCount") or 1)
            granted, rule = self._grant(offering, wanted)
            if rule is not None:
                record.rule_id = rule.id
                if granted < int(params.get("MinCount") or 1):
                    self._give_back(offering, granted)
                    record.outcome, record.error_code = "injected", rule.code
                    return _error_answer(rule.code, rule.message_for(offering))
            if str(granted) != params.get("MinCount", "1"):
                # AWS launches as many as it can up to MaxCount (at least MinCount); moto launches exactly
                # MinCount. Asking moto for MinCount=MaxCount=what the offering has gives AWS's answer.
                body = urllib.parse.urlencode(dict(params, MinCount=str(granted), MaxCount=str(granted))).encode()
                headers = dict(headers, **{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
                path = urllib.parse.urlsplit(path).path or "/"
            answer = self._forward(method, path, headers, body)
            if answer.status == 200:
                record.instance_ids = self._instance_ids(answer.body)
            else:
                self._give_back(offering, granted)
            return answer
        if action == "CreateFleet" and params.get("Type") == "instant":
            return self._instant_fleet(params, headers, record)
        if action == "GetServiceQuota" and record.document and record.document.get("ServiceCode") == "ec2":
            with self._lock:
                quota = self._service_quotas.get(record.document.get("QuotaCode"))
            if quota is not None:
                return self._service_quota(record.document["QuotaCode"], *quota)
        return self._forward(method, path, headers, body)

    @staticmethod
    def _service_quota(code: str, name: str, value: float) -> _Answer:
        """GetServiceQuota's answer as AWS shapes it (JSON 1.1)."""
        quota = {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                 "QuotaArn": f"arn:aws:servicequotas:us-east-1:123456789012:ec2/{code}", "QuotaCode": code,
                 "QuotaName": name, "Value": value, "Unit": "None", "Adjustable": True, "GlobalQuota": False}
        return _Answer(200, json.dumps({"Quota": quota}).encode(), [("Content-Type", "application/x-amz-json-1.1")])

    def _idempotent(self, method, path, headers, body, action, params, record) -> _Answer:
        key = (action, params["ClientToken"])
        fingerprint = hashlib.sha256(json.dumps(
            sorted((k, v) for k, v in params.items() if k != "ClientToken")).encode()).hexdigest()
        with self._lock:
            token_lock = self._token_locks.setdefault(key, threading.Lock())
        with token_lock:
            with self._lock:
                seen = self._tokens.get(key)
            if seen is not None:
                first_fingerprint, first_answer, first_record = seen
                if first_fingerprint != fingerprint:
                    record.outcome = "injected"
                    return _error_answer("IdempotentParameterMismatch",
                                         DEFAULT_MESSAGES["IdempotentParameterMismatch"])
                record.outcome = "replayed"
                record.offerings = list(first_record.offerings)
                record.instance_ids = list(first_record.instance_ids)
                return first_answer
            answer = self._launch_or_forward(method, path, headers, body, action, params, record)
            if answer.status == 200:
                with self._lock:
                    self._tokens[key] = (fingerprint, answer, record)
            return answer

    def _grant(self, offering: Offering, wanted: int) -> tuple[int, OfferingRule | None]:
        """How many of `wanted` instances `offering` supplies now, and the rule that refused the rest (if any)."""
        with self._lock:
            for rule in self._rules:
                if not isinstance(rule, OfferingRule) or not rule.matches(offering):
                    continue
                if rule.capacity is None:
                    if rule._take():
                        return 0, rule
                    continue
                granted = min(wanted, rule.capacity)
                rule.capacity -= granted
                if granted == wanted:
                    return granted, None
                rule.fired += 1
                return granted, rule
        return wanted, None

    def _give_back(self, offering: Offering, count: int) -> None:
        """Return capacity granted to a launch that moto then refused."""
        if not count:
            return
        with self._lock:
            rule = next((r for r in self._rules if isinstance(r, OfferingRule) and r.capacity is not None
                         and r.matches(offering)), None)
            if rule is not None:
                rule.capacity += count

    @staticmethod
    def _params(path: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query, keep_blank_values=True))
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if body and "x-www-form-urlencoded" in content_type:
            params.update(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return params

    @staticmethod
    def _json_document(headers: Mapping[str, str], body: bytes) -> dict[str, Any] | None:
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if not body or "amz-json" not in content_type:
            return None
        try:
            document = json.loads(body)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    @staticmethod
    def _json_action(headers: Mapping[str, str]) -> str | None:
        target = next((v for k, v in headers.items() if k.lower() == "x-amz-target"), None)
        return target.rsplit(".", 1)[-1] if target else None

    # -- talking to moto -------------------------------------------------------------------------------------------

    def _forward(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> _Answer:
        target = next((v for k, v in headers.items() if k.lower() == "x-amz-target"), "")
        if target.startswith("DynamoDB_"):
            with self._dynamodb_lock:
                return self._forward_now(method, path, headers, body)
        return self._forward_now(method, path, headers, body)

    def _forward_now(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> _Answer:
        conn = http.client.HTTPConnection(self.upstream.host, self.upstream.port, timeout=120)
        try:
            send_headers = {k: v for k, v in headers.items() if k.lower() not in self.NOT_FORWARDED}
            send_headers["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=send_headers)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in self.NOT_FORWARDED]
            return _Answer(response.status, data, kept)
        except (OSError, http.client.HTTPException) as exc:
            # The emulator is gone or broke the connection: say so the way a gateway would.
            return _error_answer("InternalError", f"fault proxy could not reach moto: {exc}", 502)
        finally:
            conn.close()

    def _call(self, headers: Mapping[str, str], params: Mapping[str, str]) -> ET.Element:
        """One EC2 call to moto on the caller's behalf (same Authorization header, hence the same region)."""
        auth = {k: v for k, v in headers.items() if k.lower() in ("authorization", "x-amz-date",
                                                                  "x-amz-security-token")}
        body = urllib.parse.urlencode(dict(params, Version=EC2_API_VERSION)).encode()
        answer = self._forward("POST", "/", dict(auth, **{
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}), body)
        if answer.status != 200:
            code, message = _parse_error(answer.body)
            raise UpstreamError(answer.status, code, message, answer.body)
        return ET.fromstring(answer.body)

    @staticmethod
    def _instance_ids(body: bytes) -> list[str]:
        root = ET.fromstring(body)
        return [e.text for e in root.iter() if _local(e.tag) == "instanceId" and e.text]

    def _subnet_zone(self, headers, subnet_id: str | None) -> str | None:
        if not subnet_id:
            return None
        if subnet_id in self._subnet_zones:
            return self._subnet_zones[subnet_id]
        try:
            root = self._call(headers, {"Action": "DescribeSubnets", "SubnetId.1": subnet_id})
        except UpstreamError:
            return None
        zone = next((e.text for e in root.iter() if _local(e.tag) == "availabilityZone"), None)
        if zone:
            self._subnet_zones[subnet_id] = zone
        return zone

    def _template_instance_type(self, headers, template: Mapping[str, Any]) -> str | None:
        query = {"Action": "DescribeLaunchTemplateVersions",
                 "LaunchTemplateVersion.1": str(template.get("Version") or "$Default")}
        if template.get("LaunchTemplateId"):
            query["LaunchTemplateId"] = template["LaunchTemplateId"]
        elif template.get("LaunchTemplateName"):
            query["LaunchTemplateName"] = template["LaunchTemplateName"]
        else:
            return None
        try:
            root = self._call(headers, query)
        except UpstreamError:
            return None
        return next((e.text for e in root.iter() if _local(e.tag) == "instanceType"), None)

    def _run_instances_offering(self, params: Mapping[str, str], headers) -> Offering:
        tree = unflatten(params)
        subnet = params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId")
        instance_type = params.get("InstanceType")
        if instance_type is None and tree.get("LaunchTemplate"):
            instance_type = self._template_instance_type(headers, tree["LaunchTemplate"])
        zone = params.get("Placement.AvailabilityZone") or self._subnet_zone(headers, subnet)
        return Offering(market=params.get("InstanceMarketOptions.MarketType", "on-demand"),
                        instance_type=instance_type, availability_zone=zone, subnet_id=subnet)

    # -- instant fleets ----------------------------------------------------------------------------------------

    def _instant_fleet(self, params: dict[str, str], headers, record: RequestRecord) -> _Answer:
        tree = unflatten(params)
        capacity = tree.get("TargetCapacitySpecification", {})
        total = int(capacity.get("TotalTargetCapacity", 0))
        on_demand = int(capacity.get("OnDemandTargetCapacity", 0))
        spot = int(capacity.get("SpotTargetCapacity", 0))
        rest = max(0, total - on_demand - spot)
        if capacity.get("DefaultTargetCapacityType", "on-demand") == "spot":
            spot += rest
        else:
            on_demand += rest

        # The fleet itself is registered in moto with no capacity, so its FleetId is real (DescribeFleets,
        # DeleteFleets); invalid launch templates fail here with moto's own error, before anything launches.
        register = dict(tree)
        register["TargetCapacitySpecification"] = dict(capacity, TotalTargetCapacity="0", OnDemandTargetCapacity="0",
                                                       SpotTargetCapacity="0")
        register["TagSpecification"] = [t for t in tree.get("TagSpecification", [])
                                        if t.get("ResourceType") == "fleet"]
        register.pop("ClientToken", None)
        try:
            root = self._call(headers, flatten(register))
        except UpstreamError as exc:
            return _Answer(exc.status, exc.body, [("Content-Type", "text/xml;charset=UTF-8")])
        fleet_id = next((e.text for e in root.iter() if _local(e.tag) == "fleetId"), None)

        resolved = []  # (launch template spec, override as sent, instance type, zone)
        for config in tree.get("LaunchTemplateConfigs", []):
            template = config.get("LaunchTemplateSpecification", {})
            for override in config.get("Overrides") or [{}]:
                instance_type = override.get("InstanceType") or self._template_instance_type(headers, template)
                zone = override.get("AvailabilityZone") or self._subnet_zone(headers, override.get("SubnetId"))
                resolved.append((template, override, instance_type, zone))

        launched: list[_FleetLaunch] = []
        failed: list[_FleetFailure] = []
        for market, count, options in (("spot", spot, tree.get("SpotOptions", {})),
                                       ("on-demand", on_demand, tree.get("OnDemandOptions", {}))):
            if count <= 0:
                continue
            overrides = [_FleetOverride(template, override, Offering(market, instance_type, zone,
                                                                     override.get("SubnetId")))
                         for template, override, instance_type, zone in resolved]
            record.offerings.extend(o.offering for o in overrides)
            strategy = options.get("AllocationStrategy", "")
            if "prioritized" in strategy or any("Priority" in o.override for o in overrides):
                overrides.sort(key=lambda o: float(o.override.get("Priority", "inf")))
            _FleetMarket(self, headers, tree, launched, failed).fill(count, overrides, strategy == "diversified")

        record.outcome = "fleet"
        record.fleet_errors = [f.error for f in failed]
        record.instance_ids = [i for launch in launched for i in launch.instance_ids]
        xml = ['<?xml version="1.0" encoding="UTF-8"?>\n',
               f'<CreateFleetResponse xmlns="{EC2_XMLNS}"><requestId>{uuid.uuid4()}</requestId>',
               f"<fleetId>{escape(fleet_id or '')}</fleetId><errorSet>"]
        for failure in failed:
            xml.append("<item>" + _xml("LaunchTemplateAndOverrides", failure.override.as_response())
                       + _xml("Lifecycle", failure.override.offering.market) + _xml("ErrorCode", failure.error.code)
                       + _xml("ErrorMessage", failure.error.message) + "</item>")
        xml.append("</errorSet><fleetInstanceSet>")
        for launch in launched:
            xml.append("<item>" + _xml("LaunchTemplateAndOverrides", launch.override.as_response())
                       + _xml("Lifecycle", launch.override.offering.market)
                       + _xml("InstanceIds", launch.instance_ids)
                       + _xml("InstanceType", launch.override.offering.instance_type or "") + "</item>")
        xml.append("</fleetInstanceSet></CreateFleetResponse>")
        return _Answer(200, "".join(xml).encode(), [("Content-Type", "text/xml;charset=UTF-8")])

    # -- control API ---------------------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> _Answer:
        """JSON control API for other processes:

        GET    /__faults__                 -> {"rules": [...], "records": [...]}
        GET    /__faults__/records         -> [...] (query: action=, outcome=)
        POST   /__faults__/rules           {"action", "code", "message", "status", "params", "times", "delay"}
        POST   /__faults__/offerings       {"code", "market", "instance_type", "availability_zone",
                                            "subnet_id", "message", "times"} or with "capacity" (finite pool)
        DELETE /__faults__/rules/<id>      remove one rule;  DELETE /__faults__/rules: remove all
        POST   /__faults__/reset           forget rules, records and client tokens
        In JSON a matcher is a string (equal) or a list of strings (one of).
        """
        parts = urllib.parse.urlsplit(path)
        route = parts.path[len(CONTROL_PREFIX):].strip("/")
        query = dict(urllib.parse.parse_qsl(parts.query))

        def reply(status: int, data: Any) -> _Answer:
            return _Answer(status, json.dumps(data).encode(), [("Content-Type", "application/json")])

        try:
            data = json.loads(body) if body else {}
            if method == "GET" and route == "":
                return reply(200, {"rules": [r.as_dict() for r in self.rules()],
                                   "records": [r.as_dict() for r in self.records()]})
            if method == "GET" and route == "records":
                return reply(200, [r.as_dict() for r in self.records(query.get("action"),
                                                                     outcome=query.get("outcome"))])
            if method == "POST" and route == "rules":
                rule = self.add_rule(data.get("action"), data.get("code"), message=data.get("message"),
                                     status=data.get("status"), params=data.get("params"),
                                     times=data.get("times"), delay=data.get("delay", 0.0))
                return reply(201, rule.as_dict())
            if method == "POST" and route == "offerings":
                where = {k: data.get(k) for k in ("market", "instance_type", "availability_zone", "subnet_id",
                                                  "message")}
                if data.get("capacity") is not None:
                    rule = self.limit_offering(data["capacity"], code=data.get("code") or "InsufficientInstanceCapacity",
                                               **where)
                else:
                    rule = self.fail_offering(data["code"], times=data.get("times"), **where)
                return reply(201, rule.as_dict())
            if method == "DELETE" and route == "rules":
                self.clear_rules()
                return reply(200, {"removed": "all"})
            if method == "DELETE" and route.startswith("rules/"):
                removed = self.remove_rule(int(route.split("/", 1)[1]))
                return reply(200 if removed else 404, {"removed": removed})
            if method == "POST" and route == "reset":
                self.reset()
                return reply(200, {"reset": True})
            return reply(404, {"error": f"no control route {method} {parts.path}"})
        except (ValueError, KeyError, TypeError) as exc:
            return reply(400, {"error": str(exc)})


# -- pytest fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_proxy_server(moto_server):
    """One fault proxy per session in front of the session's moto server."""
    proxy = FaultProxy(moto_server).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def fault_proxy(fault_proxy_server, moto_server):
    """A clean emulator behind a proxy with no rules and no records; `.url`, `.env()` point at the proxy."""
    moto_server.reset()
    fault_proxy_server.reset()
    yield fault_proxy_server
    fault_proxy_server.reset()


@pytest.fixture
def fault_env(fault_proxy, monkeypatch):
    """Like `aws_env`, but Ansible, boto3 and every child process reach EC2 through the fault proxy."""
    env = fault_proxy.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def main(argv: list[str] | None = None) -> None:
    """Run a proxy in front of a running moto server until interrupted (for the demo and benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True, help="port of the moto server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    proxy = FaultProxy(MotoServer(port=args.upstream_port), port=args.port).start()
    print(proxy.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
