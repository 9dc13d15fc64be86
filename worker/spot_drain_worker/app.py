"""The HTTP layer: an app factory and one blueprint. Handlers read the runtime's state and call its
narrow interface; they never start threads or decide how a drain goes."""

from __future__ import annotations

import hmac
import json
import math

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from .config import Config
from .errors import PayloadTooLarge
from .runtime import WorkerRuntime
from .watcher import INTERRUPTION_ACTIONS, InterruptionNotice, parse_time

EXTENSION = "spot_drain_worker"
RETRY_AFTER_SECONDS = 5
MAX_IDEMPOTENCY_KEY_LENGTH = 255
SIMULATED_NOTICE_LEAD_SECONDS = 120  # what AWS gives: the notice comes two minutes ahead
# Deeper JSON is refused: Python's parser and encoder recurse per level, so a payload near the
# interpreter's recursion limit would fail later (storing it, reading it back, in the runner).
MAX_JSON_DEPTH = 64

api = Blueprint("api", __name__)


def _runtime() -> WorkerRuntime:
    return current_app.extensions[EXTENSION]


def _error(status: int, message: str, **headers):
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def _bearer_token() -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def _token_matches(supplied: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    if supplied is None or expected is None:
        return False
    return hmac.compare_digest(supplied.encode(), expected.encode())


def _jobs_auth_error(*, control_token_too: bool = False):
    """None when the caller may use the job endpoints, else the 401 response. Only when JOBS_TOKEN is
    set; `control_token_too` also admits the control token (requeue is an operator's tool as well)."""
    config = _runtime().config
    if config.jobs_token is None:
        return None
    supplied = _bearer_token()
    if _token_matches(supplied, config.jobs_token):
        return None
    if control_token_too and _token_matches(request.headers.get("X-Control-Token") or supplied,
                                            config.control_token):
        return None
    message = ("missing jobs token (Authorization: Bearer <JOBS_TOKEN>)" if supplied is None
               else "wrong jobs token")
    return _error(401, message, **{"WWW-Authenticate": "Bearer"})


def _control_auth_error():
    """None when the caller may use the control endpoints, else the error response."""
    config = _runtime().config
    if not config.production:
        return None
    if config.control_token is None:
        return _error(403, "control endpoints need CONTROL_TOKEN to be set on the worker "
                           "(production mode: ALLOW_SIMULATE_INTERRUPTION=false)")
    supplied = request.headers.get("X-Control-Token")
    if supplied is None:
        supplied = _bearer_token()
    if not supplied:
        return _error(401, "missing control token (Authorization: Bearer <CONTROL_TOKEN>)",
                      **{"WWW-Authenticate": "Bearer"})
    if not _token_matches(supplied, config.control_token):
        return _error(403, "wrong control token")
    return None


def _simulation_disabled():
    if _runtime().config.production:
        return _error(403, "disabled in production mode (ALLOW_SIMULATE_INTERRUPTION=false or "
                           "CONTROL_TOKEN set)")
    return None


def _drain_view(runtime: WorkerRuntime) -> dict:
    snapshot = runtime.signal.snapshot()
    remaining = None
    if snapshot.deadline is not None:
        remaining = round(max(0.0, snapshot.deadline - runtime.clock()), 3)
    return {"state": snapshot.state, "reason": snapshot.reason,
            "seconds_until_deadline": remaining, "outcome": snapshot.outcome}


def _reject_constant(name: str):
    # NaN and Infinity are not JSON; stored, they would make every later answer invalid JSON.
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(value, limit: int) -> bool:
    """True when `value` nests more than `limit` arrays/objects (iterative: no recursion to overflow)."""
    containers = (dict, list)
    stack = [(value, 1)] if isinstance(value, containers) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, containers))
    return False


def _json_object_body():
    """(object, None) or (None, error response). Reading the body enforces MAX_CONTENT_LENGTH."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        return None, _error(400, "request body must be a JSON object")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:  # deeper than the interpreter's recursion limit allows to parse
        body = None
        too_deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        return None, _error(400, f"malformed JSON: {exc}")
    else:
        # Fewer brackets than the limit cannot nest deeper: most payloads skip the walk.
        openers = raw.count(b"[") + raw.count(b"{")
        too_deep = openers > MAX_JSON_DEPTH and _too_deep(body, MAX_JSON_DEPTH)
    if too_deep:
        return None, _error(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels; send a flatter object")
    if not isinstance(body, dict):
        return None, _error(400, f"request body must be a JSON object, not {type(body).__name__}")
    return body, None


def _not_json_error():
    """415 unless the body is declared JSON: a browser's cross-origin "simple request" can only send
    text/plain, form or multipart bodies, so this keeps other web pages from submitting jobs."""
    if request.mimetype == "application/json":
        return None
    got = request.mimetype or "none"
    return _error(415, f"Content-Type must be application/json (got {got})")


@api.post("/jobs")
def submit_job():
    runtime = _runtime()
    if (denied := _jobs_auth_error()) is not None:
        runtime.metrics.jobs_rejected.labels("unauthorized").inc()
        return denied
    if (refused := _not_json_error()) is not None:
        runtime.metrics.jobs_rejected.labels("bad_request").inc()
        return refused
    snapshot = runtime.signal.snapshot()
    if not snapshot.admitting:
        runtime.metrics.jobs_rejected.labels("not_admitting").inc()
        return _error(503, f"not accepting jobs: {snapshot.reason}",
                      **{"Retry-After": str(RETRY_AFTER_SECONDS)})
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isprintable()):
        runtime.metrics.jobs_rejected.labels("bad_request").inc()
        return _error(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters")
    payload, error = _json_object_body()
    if error is not None:
        runtime.metrics.jobs_rejected.labels("bad_request").inc()
        return error
    try:
        job, created = runtime.queue.enqueue(payload, key)
    except PayloadTooLarge as exc:
        runtime.metrics.jobs_rejected.labels("too_large").inc()
        return _error(413, str(exc))
    if not created and job.payload != payload:
        return _error(409, "Idempotency-Key was already used with a different payload")
    if created:
        runtime.metrics.jobs_accepted.inc()
    response = jsonify(job.public())
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@api.get("/jobs/<job_id>")
def get_job(job_id: str):
    if (denied := _jobs_auth_error()) is not None:
        return denied
    job = _runtime().queue.get(job_id)
    if job is None:
        return _error(404, f"no job with id {job_id!r}")
    return jsonify(job.public())


@api.post("/jobs/<job_id>/requeue")
def requeue_job(job_id: str):
    config = _runtime().config
    if config.jobs_token is not None:
        # With a jobs token, its holders may requeue their jobs (and the operator's control token may).
        denied = _jobs_auth_error(control_token_too=True)
    else:
        denied = _control_auth_error()
    if denied is not None:
        return denied
    queue = _runtime().queue
    job = queue.requeue(job_id)
    if job is None:
        existing = queue.get(job_id)
        if existing is None:
            return _error(404, f"no job with id {job_id!r}")
        return _error(409, f"job {job_id} is {existing.status}; only dead or failed jobs are requeued")
    return jsonify(job.public())


@api.get("/health")
def health():
    runtime = _runtime()
    return jsonify(status="ok", drain=_drain_view(runtime))


@api.get("/ready")
def ready():
    runtime = _runtime()
    view = _drain_view(runtime)
    if runtime.signal.snapshot().admitting:
        return jsonify(ready=True, drain=view)
    response = jsonify(ready=False, drain=view)
    response.status_code = 503
    return response


@api.get("/metrics")
def metrics():
    runtime = _runtime()
    accept = request.accept_mimetypes
    # JSON only when the client prefers it: Prometheus (and */*) get the text format.
    if accept["application/json"] > accept["text/plain"]:
        return jsonify(runtime.metrics.as_json())
    return current_app.response_class(runtime.metrics.render_text(),
                                      mimetype="text/plain; version=0.0.4; charset=utf-8")


@api.post("/drain")
def drain():
    if (denied := _control_auth_error()) is not None:
        return denied
    runtime = _runtime()
    runtime.drain("POST /drain")
    response = jsonify(draining=True, drain=_drain_view(runtime))
    response.status_code = 202
    return response


@api.post("/shutdown")
def shutdown():
    """Development only: stop now; a job in flight is given back and runs after the restart."""
    if (denied := _simulation_disabled()) is not None:
        return denied
    runtime = _runtime()
    runtime.drain("POST /shutdown", within_seconds=0)
    response = jsonify(shutting_down=True, drain=_drain_view(runtime))
    response.status_code = 202
    return response


@api.post("/simulate/interruption")
def simulate_interruption():
    """Development only: act as if IMDS had answered. Body (optional): {"action": "terminate" |
    "stop" | "hibernate" | "rebalance", "time": "<ISO 8601>"}."""
    if (denied := _simulation_disabled()) is not None:
        return denied
    runtime = _runtime()
    body = {}
    if request.get_data(cache=True).strip():
        body, error = _json_object_body()
        if error is not None:
            return error
    action = body.get("action", "terminate")
    when = body.get("time")
    if action not in INTERRUPTION_ACTIONS + ("rebalance",):
        return _error(400, f"action must be one of {', '.join(INTERRUPTION_ACTIONS + ('rebalance',))}")
    if when is None:
        notice_time = runtime.clock() + SIMULATED_NOTICE_LEAD_SECONDS
    else:
        try:
            notice_time = parse_time(when) if isinstance(when, str) else math.nan
        except ValueError:
            notice_time = math.nan
        if math.isnan(notice_time):
            return _error(400, "time must be an ISO 8601 timestamp such as 2026-11-22T10:00:00Z")
    if action == "rebalance":
        runtime.watcher.handle_rebalance(notice_time, source="POST /simulate/interruption")
    else:
        runtime.watcher.handle_notice(InterruptionNotice(action, notice_time),
                                      source="POST /simulate/interruption")
    response = jsonify(simulated=action, drain=_drain_view(runtime))
    response.status_code = 202
    return response


def _json_http_error(exc: HTTPException):
    message = exc.description
    if exc.code == 413:
        message = f"request body larger than MAX_PAYLOAD_BYTES ({current_app.config['MAX_CONTENT_LENGTH']} bytes)"
    return _error(exc.code or 500, message)


def _queue_unavailable(exc: Exception):
    current_app.logger.error("queue error: %s", exc)
    return _error(503, "job queue temporarily unavailable; retry", **{"Retry-After": str(RETRY_AFTER_SECONDS)})


def create_app(config: Config, runtime: WorkerRuntime | None = None) -> Flask:
    """Build the app. A runtime is created if none is given; its threads are not started here."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_payload_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = runtime if runtime is not None else WorkerRuntime(config)
    app.register_blueprint(api)
    app.register_error_handler(HTTPException, _json_http_error)
    # Whatever the backend raises when it is unavailable (sqlite3.Error, botocore's errors) is a 503.
    for error in app.extensions[EXTENSION].queue.errors:
        app.register_error_handler(error, _queue_unavailable)
    return app
