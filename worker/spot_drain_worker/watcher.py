"""The IMDSv2 watcher: polls the Spot instance-action and the rebalance recommendation and writes the
drain signal. Only a well-formed answer counts: a 404 means "nothing", and an error, a timeout or a
body that does not parse is an IMDS error (counted, backed off), never a notice."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

from .drain import DrainSignal
from .metrics import WorkerMetrics

log = logging.getLogger("spot_drain_worker.watcher")

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
INTERRUPTION_ACTIONS = ("terminate", "stop", "hibernate")
# IMDS answers from the hypervisor in milliseconds; a slow answer must not stall the watcher.
IMDS_TIMEOUT_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 30.0


class ImdsError(Exception):
    """IMDS did not give a usable answer."""


class ImdsClient:
    """GET with an IMDSv2 session token: fetched with a TTL, refreshed before it expires, fetched
    anew when IMDS answers 401 (the token expired early or the instance was restored)."""

    def __init__(self, base_url: str, token_ttl_seconds: int, *, timeout: float = IMDS_TIMEOUT_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.base_url = base_url.rstrip("/")
        self.token_ttl_seconds = token_ttl_seconds
        self.timeout = min(timeout, IMDS_TIMEOUT_SECONDS)
        self.clock = clock
        self._token: str | None = None
        self._token_refresh_at = 0.0
        # IMDS is link-local: an HTTP(S)_PROXY from the environment must never see these requests.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, headers: dict) -> tuple[int, str]:
        request = urllib.request.Request(self.base_url + path, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ImdsError(f"{method} {path}: {exc}") from None

    def token(self) -> str:
        if self._token is None or self.clock() >= self._token_refresh_at:
            status, body = self._request(
                "PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(self.token_ttl_seconds)})
            if status != 200 or not body.strip():
                raise ImdsError(f"PUT {TOKEN_PATH}: HTTP {status}")
            self._token = body.strip()
            # Refresh at three quarters of the lifetime, well before IMDS starts answering 401.
            self._token_refresh_at = self.clock() + self.token_ttl_seconds * 0.75
        return self._token

    def get(self, path: str) -> str | None:
        """The body of a 200, None for a 404; anything else raises ImdsError."""
        for _attempt in range(2):  # once more with a new token after a 401
            status, body = self._request("GET", path, {"X-aws-ec2-metadata-token": self.token()})
            if status == 401:
                self._token = None
                continue
            if status == 200:
                return body
            if status == 404:
                return None
            raise ImdsError(f"GET {path}: HTTP {status}")
        raise ImdsError(f"GET {path}: HTTP 401 with a fresh token")


@dataclasses.dataclass(frozen=True)
class InterruptionNotice:
    action: str
    time: float | None  # epoch seconds of the interruption, when IMDS gave one


def parse_time(text: str) -> float:
    moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def parse_instance_action(body: str) -> InterruptionNotice:
    """`{"action": "terminate", "time": "2026-11-22T10:00:00Z"}` -> InterruptionNotice."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ImdsError(f"instance-action is not JSON: {body[:100]!r}") from None
    if not isinstance(document, dict) or document.get("action") not in INTERRUPTION_ACTIONS:
        raise ImdsError(f"instance-action has no known action: {body[:100]!r}")
    when = document.get("time")
    try:
        notice_time = parse_time(when) if isinstance(when, str) else None
    except ValueError:
        notice_time = None
    if notice_time is None:
        # The action alone is a real notice: drain on the grace period rather than ignore it.
        log.warning("instance-action without a usable time: %r", body[:100])
    return InterruptionNotice(document["action"], notice_time)


def parse_rebalance(body: str) -> float | None:
    """`{"noticeTime": "..."}` -> epoch seconds (None if absent); not JSON -> ImdsError."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ImdsError(f"rebalance recommendation is not JSON: {body[:100]!r}") from None
    if not isinstance(document, dict):
        raise ImdsError(f"rebalance recommendation is not an object: {body[:100]!r}")
    try:
        return parse_time(document["noticeTime"]) if isinstance(document.get("noticeTime"), str) else None
    except ValueError:
        return None


def drain_deadline(now: float, grace_seconds: float, notice_time: float | None, margin_seconds: float) -> float:
    """min(now + grace, notice time - margin), never in the past."""
    deadline = now + grace_seconds
    if notice_time is not None:
        deadline = min(deadline, notice_time - margin_seconds)
    return max(deadline, now)


class InterruptionWatcher:
    def __init__(self, client: ImdsClient, signal: DrainSignal, *, poll_interval_seconds: float,
                 grace_period_seconds: float, notice_margin_seconds: float, metrics: WorkerMetrics,
                 clock: Callable[[], float] = time.time):
        self.client = client
        self.signal = signal
        self.poll_interval_seconds = poll_interval_seconds
        self.grace_period_seconds = grace_period_seconds
        self.notice_margin_seconds = notice_margin_seconds
        self.metrics = metrics
        self.clock = clock
        self.consecutive_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- what a notice does (also used by POST /simulate/interruption) ----

    def handle_notice(self, notice: InterruptionNotice, source: str = "IMDS") -> bool:
        deadline = drain_deadline(self.clock(), self.grace_period_seconds, notice.time,
                                  self.notice_margin_seconds)
        reason = f"spot interruption notice ({notice.action}) from {source}"
        changed = self.signal.request_drain(reason, deadline)
        if changed:
            self.metrics.interruption_signals.labels("notice").inc()
        return changed

    def handle_rebalance(self, notice_time: float | None, source: str = "IMDS") -> bool:
        changed = self.signal.stop_admission(f"rebalance recommendation from {source}")
        if changed:
            self.metrics.interruption_signals.labels("rebalance").inc()
            log.warning("rebalance recommendation: no new jobs, work continues")
        return changed

    # ---- polling ----

    def poll_once(self) -> None:
        body = self.client.get(INSTANCE_ACTION_PATH)
        if body is not None:
            self.handle_notice(parse_instance_action(body))
            return
        body = self.client.get(REBALANCE_PATH)
        if body is not None:
            self.handle_rebalance(parse_rebalance(body))

    def next_delay(self) -> float:
        if not self.consecutive_errors:
            return self.poll_interval_seconds
        backoff = self.poll_interval_seconds * 2 ** min(self.consecutive_errors, 10)
        return min(backoff, max(BACKOFF_CAP_SECONDS, self.poll_interval_seconds))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
                self.consecutive_errors = 0
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one bad answer
                self.consecutive_errors += 1
                self.metrics.imds_errors.inc()
                log.warning("IMDS error %d in a row: %s", self.consecutive_errors, exc,
                            exc_info=not isinstance(exc, ImdsError))
            self._stop.wait(self.next_delay())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="imds-watcher", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(IMDS_TIMEOUT_SECONDS * 3)
