"""A fake EC2 instance metadata service on 127.0.0.1 that enforces the IMDSv2 token rules.

- PUT /latest/api/token needs `X-aws-ec2-metadata-token-ttl-seconds` between 1 and 21600 (else 400)
  and is refused with 403 when `X-Forwarded-For` is present, as on EC2.
- Every GET needs a token that this server issued and that has not expired or been revoked (else 401).
- `spot/instance-action` and `events/recommendations/rebalance` answer 404 until a test scripts them.
- `fail_next(n, status)` makes the next n metadata GETs answer `status` (e.g. 500).
"""

from __future__ import annotations

import datetime
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeImds:
    def __init__(self):
        self._lock = threading.Lock()
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.token_puts: list[int] = []  # TTLs asked for
        self.gets: list[tuple[str, int]] = []  # (path, status)
        self.instance_action: str | None = None
        self.rebalance: str | None = None
        self._failures: list[int] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                if self.path != "/latest/api/token":
                    return self._send(404)
                if self.headers.get("X-Forwarded-For"):
                    return self._send(403)
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._send(400)
                token = secrets.token_urlsafe(24)
                with fake._lock:
                    fake.tokens[token] = time.monotonic() + int(ttl)
                    fake.token_puts.append(int(ttl))
                self._send(200, token)

            def do_GET(self):
                status, body = fake._answer(self.path, self.headers.get("X-aws-ec2-metadata-token"))
                with fake._lock:
                    fake.gets.append((self.path, status))
                self._send(status, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _answer(self, path: str, token: str | None) -> tuple[int, str]:
        with self._lock:
            expiry = self.tokens.get(token or "")
            if expiry is None or expiry <= time.monotonic():
                return 401, ""
            if self._failures:
                return self._failures.pop(), ""
            if path == INSTANCE_ACTION:
                return (404, "") if self.instance_action is None else (200, self.instance_action)
            if path == REBALANCE:
                return (404, "") if self.rebalance is None else (200, self.rebalance)
            return 404, ""

    # ---- scripting ----

    def notice(self, action: str = "terminate", at: float | None = None) -> None:
        """Publish an interruption notice for epoch time `at` (default: two minutes from now)."""
        when = time.time() + 120 if at is None else at
        with self._lock:
            self.instance_action = json.dumps({"action": action, "time": iso(when)})

    def recommend_rebalance(self, at: float | None = None) -> None:
        with self._lock:
            self.rebalance = json.dumps({"noticeTime": iso(time.time() if at is None else at)})

    def set_raw_instance_action(self, body: str) -> None:
        with self._lock:
            self.instance_action = body

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def count_gets(self, path: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for p, s in self.gets if p == path and (status is None or s == status))

    def __enter__(self) -> "FakeImds":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
