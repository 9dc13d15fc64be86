"""Settings from environment variables, validated once at start-up.

Every problem is reported as a `ConfigError` whose message names the variable, so a typo in the
systemd EnvironmentFile stops the worker with a line that says what to fix instead of a stack trace
later (or, worse, a worker that silently runs with the default).
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

# The retry backoff never exceeds the cap, so a larger base would silently mean the cap.
from .errors import ConfigError
from .queues import BACKOFF_CAP_SECONDS as MAX_RETRY_BACKOFF_SECONDS
from .queues import SQS_MAX_PAYLOAD_BYTES


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

DEFAULT_JOB_HANDLER = "spot_drain_worker.handlers:simulate_work"
# The path the seed documented IMDS_URL with; the worker appends its own paths to the base.
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
# AWS posts a Spot interruption notice two minutes before the interruption time.
SPOT_NOTICE_LEAD_SECONDS = 120
MIN_TOKEN_LENGTH = 16
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


@dataclasses.dataclass(frozen=True)
class Config:
    database_path: str = "./jobs.db"
    spot_watcher_enabled: bool = True
    imds_url: str = "http://169.254.169.254"
    poll_interval_seconds: float = 5.0
    grace_period_seconds: float = 110.0
    job_processing_seconds: float = 5.0
    # Off by default: a worker reachable from the network must not let anyone stop it.
    allow_simulate_interruption: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    max_attempts: int = 5
    lease_seconds: float = 30.0
    # repr=False: a Config that ends up in a log line or a traceback must not carry the tokens.
    control_token: str | None = dataclasses.field(default=None, repr=False)
    jobs_token: str | None = dataclasses.field(default=None, repr=False)
    job_handler: str = DEFAULT_JOB_HANDLER
    max_payload_bytes: int = 65536
    retry_backoff_seconds: float = 2.0
    notice_margin_seconds: float = 10.0
    imds_token_ttl_seconds: int = 21600
    server_threads: int = 8
    # SQS backend (QUEUE_URL set): the queue, the DynamoDB job table, the region, the long-poll wait.
    queue_url: str | None = None
    jobs_table: str | None = None
    jobs_table_create: bool = True
    aws_region: str | None = None
    sqs_wait_seconds: int = 5

    @property
    def production(self) -> bool:
        """Production mode: the test-only control endpoints are off and /drain needs the token."""
        return not self.allow_simulate_interruption or self.control_token is not None

    @property
    def graceful_timeout_seconds(self) -> float:
        """How long the server waits for the worker process on stop: above the grace period so
        the drain, not the server, decides when a job's lease is released."""
        return self.grace_period_seconds + 10.0


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false (got {raw!r})")


def _number(name: str, raw: str, *, minimum: float, maximum: float | None = None,
            integer: bool = False, exclusive_minimum: bool = False) -> float:
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} (got {raw!r})") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (got {raw!r})")
    too_small = value <= minimum if exclusive_minimum else value < minimum
    if too_small:
        relation = "greater than" if exclusive_minimum else "at least"
        raise ConfigError(f"{name} must be {relation} {minimum:g} (got {raw!r})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g} (got {raw!r})")
    return value


def _database_path(raw: str) -> str:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or a plain file path."""
    name = "DATABASE_URL"
    prefix = "sqlite:///"
    is_url = "://" in raw
    if is_url and not raw.startswith(prefix):
        raise ConfigError(f"{name} must be a sqlite:/// URL or a file path (got {raw!r})")
    path = raw[len(prefix):] if is_url else raw
    if not path or path == ":memory:" or path.startswith("file:"):
        # The queue opens one connection per thread and must survive restarts: it needs a file.
        raise ConfigError(f"{name} must name a database file (got {raw!r})")
    if is_url and ("?" in path or "#" in path):
        # sqlite3.connect takes a plain file name: a URL query would become part of the name.
        raise ConfigError(f"{name} must not have a query string or fragment (got {raw!r}); "
                          f"SQLite options are set by the worker")
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise ConfigError(f"{name} points into a directory that does not exist: {parent}")
    return str(Path(path).expanduser())


def _imds_url(raw: str) -> str:
    """The base URL of IMDS. Also takes the seed's form, the instance-action URL itself, and derives
    the base from it; any other path would make every request miss, so it is refused."""
    name = "IMDS_URL"
    example = f"http://169.254.169.254 or http://169.254.169.254{INSTANCE_ACTION_PATH}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http:// URL such as {example} (got {raw!r})")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{name} has an invalid port (got {raw!r})") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{name} must not carry a user or password (IMDS takes none): use {example}")
    if parts.query or raw.endswith("?"):
        raise ConfigError(f"{name} must not have a query string (got {raw!r}); use {example}")
    if parts.fragment or raw.endswith("#"):
        raise ConfigError(f"{name} must not have a fragment (got {raw!r}); use {example}")
    path = parts.path.rstrip("/")
    if path not in ("", INSTANCE_ACTION_PATH):
        raise ConfigError(f"{name} must be the IMDS base URL or the instance-action URL, not the path "
                          f"{parts.path!r}: use {example}")
    return f"{parts.scheme}://{parts.netloc}"


def _host(raw: str) -> str:
    name = "HOST"
    if raw.startswith("[") or raw.endswith("]"):
        raise ConfigError(f"{name} must be an address without brackets, such as ::1 (got {raw!r})")
    try:
        ipaddress.ip_address(raw)
        return raw
    except ValueError:
        pass
    if not _HOSTNAME.match(raw):
        raise ConfigError(f"{name} must be an address to listen on such as 127.0.0.1 or 0.0.0.0, without "
                          f"a port (PORT sets it) (got {raw!r})")
    return raw


_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
# sqs.REGION.amazonaws.com[.cn] and the legacy REGION.queue.amazonaws.com
_QUEUE_HOST_REGION = re.compile(r"^(?:sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?|([a-z0-9-]+)\.queue\.amazonaws\.com)$")


def _queue_url(raw: str) -> str:
    name = "QUEUE_URL"
    example = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs"
    parts = urlsplit(raw)
    segments = parts.path.strip("/").split("/")
    if parts.scheme not in ("http", "https") or not parts.hostname or len(segments) != 2:
        raise ConfigError(f"{name} must be an SQS queue URL such as {example} (got {raw!r})")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{name} must be a plain queue URL without query, fragment or user, such as {example}")
    if segments[1].endswith(".fifo"):
        raise ConfigError(f"{name} names a FIFO queue ({segments[1]}); the worker needs a standard queue")
    if not segments[0].isdigit() or not _QUEUE_NAME.match(segments[1]):
        raise ConfigError(f"{name} must end in /<account id>/<queue name>, such as {example} (got {raw!r})")
    return raw.rstrip("/")


def queue_url_region(url: str) -> str | None:
    """The region an AWS queue URL names in its host, if it does."""
    found = _QUEUE_HOST_REGION.match(urlsplit(url).hostname or "")
    return None if found is None else (found.group(1) or found.group(2))


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name may resolve to any address


def _token(name: str, raw: str) -> str:
    # The value is never part of a message, not even a wrong one.
    if len(raw) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{name} must be at least {MIN_TOKEN_LENGTH} characters long")
    return raw


def load_job_handler(spec: str, name: str = "JOB_HANDLER") -> Callable:
    """Import `module:function` and return the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{name} must look like module:function (got {spec!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{name}: cannot import module {module_name!r}: {exc}") from None
    target = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{name}: {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"{name}: {spec!r} is not callable")
    return target


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build a `Config` from the environment (unset or empty variables keep their defaults)."""
    env = os.environ if environ is None else environ
    defaults = Config()
    values: dict = {}

    def get(name: str) -> str | None:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return None
        return raw.strip()

    if (raw := get("DATABASE_URL")) is not None:
        values["database_path"] = _database_path(raw)
    if (raw := get("SPOT_WATCHER_ENABLED")) is not None:
        values["spot_watcher_enabled"] = _bool("SPOT_WATCHER_ENABLED", raw)
    if (raw := get("IMDS_URL")) is not None:
        values["imds_url"] = _imds_url(raw)
    if (raw := get("ALLOW_SIMULATE_INTERRUPTION")) is not None:
        values["allow_simulate_interruption"] = _bool("ALLOW_SIMULATE_INTERRUPTION", raw)
    if (raw := get("HOST")) is not None:
        values["host"] = _host(raw)

    numbers = {
        # variable: (field, minimum, maximum, integer, exclusive minimum)
        "POLL_INTERVAL_SECONDS": ("poll_interval_seconds", 0, 3600, False, True),
        "GRACE_PERIOD_SECONDS": ("grace_period_seconds", 0, 3600, False, True),
        "JOB_PROCESSING_SECONDS": ("job_processing_seconds", 0, 86400, False, False),
        "PORT": ("port", 1, 65535, True, False),
        "MAX_ATTEMPTS": ("max_attempts", 1, 1000, True, False),
        # The heartbeat runs three times per lease; below a second it would be all heartbeat.
        "LEASE_SECONDS": ("lease_seconds", 0.5, 86400, False, False),
        "MAX_PAYLOAD_BYTES": ("max_payload_bytes", 2, 64 * 1024 * 1024, True, False),
        "RETRY_BACKOFF_SECONDS": ("retry_backoff_seconds", 0, MAX_RETRY_BACKOFF_SECONDS, False, False),
        "NOTICE_MARGIN_SECONDS": ("notice_margin_seconds", 0, 3600, False, False),
        # IMDS accepts token lifetimes from 1 second to 6 hours.
        "IMDS_TOKEN_TTL_SECONDS": ("imds_token_ttl_seconds", 1, 21600, True, False),
        "SERVER_THREADS": ("server_threads", 1, 256, True, False),
    }
    for variable, (field, minimum, maximum, integer, exclusive) in numbers.items():
        if (raw := get(variable)) is not None:
            values[field] = _number(variable, raw, minimum=minimum, maximum=maximum,
                                    integer=integer, exclusive_minimum=exclusive)

    if (raw := get("CONTROL_TOKEN")) is not None:
        values["control_token"] = _token("CONTROL_TOKEN", raw)
    if (raw := get("JOBS_TOKEN")) is not None:
        values["jobs_token"] = _token("JOBS_TOKEN", raw)
    if (raw := get("JOB_HANDLER")) is not None:
        values["job_handler"] = raw
    _load_sqs(get, values)
    load_job_handler(values.get("job_handler", defaults.job_handler))

    config = dataclasses.replace(defaults, **values)
    _check_combinations(config)
    return config


def _load_sqs(get: Callable[[str], str | None], values: dict) -> None:
    """QUEUE_URL, JOBS_TABLE, JOBS_TABLE_CREATE, SQS_WAIT_SECONDS and the region. Credentials and
    endpoints are botocore's (instance profile; AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SQS/_DYNAMODB)."""
    queue_url, table = get("QUEUE_URL"), get("JOBS_TABLE")
    if queue_url is None:
        for name in ("JOBS_TABLE", "JOBS_TABLE_CREATE", "SQS_WAIT_SECONDS"):
            if get(name) is not None:
                raise ConfigError(f"{name} is set but QUEUE_URL is not: set QUEUE_URL for the SQS backend, or "
                                  f"unset {name} to keep the SQLite queue")
        return
    values["queue_url"] = _queue_url(queue_url)
    if table is None:
        raise ConfigError("JOBS_TABLE must be set with QUEUE_URL: the DynamoDB table that holds the jobs' "
                          "records (created when missing unless JOBS_TABLE_CREATE=false)")
    if not _TABLE_NAME.match(table):
        raise ConfigError(f"JOBS_TABLE must be a DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -), got {table!r}")
    values["jobs_table"] = table
    if (raw := get("JOBS_TABLE_CREATE")) is not None:
        values["jobs_table_create"] = _bool("JOBS_TABLE_CREATE", raw)
    if (raw := get("SQS_WAIT_SECONDS")) is not None:
        values["sqs_wait_seconds"] = int(_number("SQS_WAIT_SECONDS", raw, minimum=0, maximum=20, integer=True))
    region = get("AWS_REGION") or get("AWS_DEFAULT_REGION") or queue_url_region(values["queue_url"])
    if region is None:
        raise ConfigError("AWS_REGION (or AWS_DEFAULT_REGION) must be set with QUEUE_URL: the queue URL "
                          f"{values['queue_url']} names no region")
    if not _REGION.match(region):
        raise ConfigError(f"AWS_REGION must be a region name such as eu-west-1 (got {region!r})")
    values["aws_region"] = region


def _check_combinations(config: Config) -> None:
    """Settings that are fine one by one but together would silently do nothing, or something else
    than the README says."""
    if config.allow_simulate_interruption and config.control_token is not None:
        # A control token switches production mode on, which closes the simulate endpoints again.
        raise ConfigError("ALLOW_SIMULATE_INTERRUPTION=true has no effect while CONTROL_TOKEN is set "
                          "(a control token means production mode, where /shutdown and /simulate/* are "
                          "off): unset CONTROL_TOKEN for development, or set ALLOW_SIMULATE_INTERRUPTION=false")
    if config.jobs_token is not None and config.jobs_token == config.control_token:
        raise ConfigError("JOBS_TOKEN must differ from CONTROL_TOKEN: every job client could drain the worker")
    if config.production and config.jobs_token is None and not is_loopback(config.host):
        raise ConfigError(f"JOBS_TOKEN must be set in production mode when the worker listens on the network "
                          f"(HOST={config.host}): anyone who reaches the port could submit and read jobs. Set "
                          f"JOBS_TOKEN (16+ characters), or HOST=127.0.0.1 behind a proxy that authenticates")
    if config.queue_url is not None and config.max_payload_bytes > SQS_MAX_PAYLOAD_BYTES:
        raise ConfigError(f"MAX_PAYLOAD_BYTES must be at most {SQS_MAX_PAYLOAD_BYTES} with QUEUE_URL (a job's record "
                          f"is one DynamoDB item (400 KB), which also holds its status and times), got "
                          f"{config.max_payload_bytes}")
    if config.queue_url is not None and config.lease_seconds > 43200:
        raise ConfigError(f"LEASE_SECONDS must be at most 43200 with QUEUE_URL (SQS's longest visibility timeout), "
                          f"got {config.lease_seconds:g}")
    lead = config.poll_interval_seconds + config.notice_margin_seconds
    if config.spot_watcher_enabled and lead >= SPOT_NOTICE_LEAD_SECONDS:
        # A notice seen one poll late has its deadline (notice time - margin) behind it already: the
        # job in flight would be given back at once instead of finishing within the grace period.
        raise ConfigError(f"POLL_INTERVAL_SECONDS + NOTICE_MARGIN_SECONDS must be below {SPOT_NOTICE_LEAD_SECONDS} "
                          f"(the warning a Spot notice gives), got {config.poll_interval_seconds:g} + "
                          f"{config.notice_margin_seconds:g}: a notice would leave no time to finish a job")
