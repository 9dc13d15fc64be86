"""Start the real worker (`python -m spot_drain_worker`: gunicorn master + one gthread worker) as a
child process on 127.0.0.1, talk to it over HTTP, signal it, kill it, and always reap it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
# The worker package of this tree: the tests run the code beside them, not whichever copy a shared
# virtualenv happens to have installed (an editable install points at one checkout only).
PACKAGE_ROOT = TESTS_DIR.parent


def child_pythonpath() -> str:
    """PYTHONPATH for a worker started by a test: the test handlers, this tree's package, then the caller's."""
    return os.pathsep.join(filter(None, [str(TESTS_DIR), str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:`port` (Linux /proc/net/tcp: address and port in hex)."""
    local = f"0100007F:{port:04X}"
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return {row[9] for row in rows if row[1] == local and row[3] == "0A"}  # 0A: LISTEN


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process `pid` has open."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:["):-1])
    return found


class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class WorkerProcess:
    def __init__(self, env: dict, log_path: Path):
        self.env = env
        self.log_path = log_path
        self.port = int(env["PORT"])
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "WorkerProcess":
        full_env = dict(os.environ)
        full_env.update(self.env)
        full_env["PYTHONPATH"] = child_pythonpath()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "spot_drain_worker"], env=full_env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                answered = self.request("GET", "/health", timeout=1).status == 200
            except OSError:
                answered = False
            if answered:
                # free_port() only picked the port: another test's server (another pytest-xdist process) may have
                # bound it first, and answered. Fail loudly rather than test the wrong worker.
                if not listening_inodes(self.port) & socket_inodes(self.proc.pid):
                    self.kill9()
                    raise RuntimeError(f"port {self.port} answers, but not from this worker: another process has it")
                return self
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError(f"worker did not answer /health within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                timeout: float = 5.0, auth: bool = True) -> Response:
        """A request on a new connection. A body that is not bytes or str is sent as JSON; the job
        endpoints get the worker's JOBS_TOKEN unless `auth` is false or the caller sets Authorization."""
        headers = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        if auth and self.env.get("JOBS_TOKEN") and path.startswith("/jobs"):
            headers.setdefault("Authorization", f"Bearer {self.env['JOBS_TOKEN']}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers, Connection="close"))
            response = conn.getresponse()
            return Response(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()

    def wait_for(self, predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.log_tail()}")

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/jobs/{job_id}").json()

    def wait_job_status(self, job_id: str, status: str, timeout: float = 15.0) -> dict:
        def reached():
            try:
                job = self.job(job_id)
            except (OSError, http.client.HTTPException):  # a worker process that crashed mid-answer
                return None
            return job if job["status"] == status else None
        return self.wait_for(reached, timeout, what=f"job {job_id} to be {status}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s\n{self.log_tail()}") from None

    def kill9(self) -> None:
        """kill -9 the whole process group (master and worker): a crash, nothing runs on exit."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        """Used by fixtures: SIGTERM with a bounded wait, then SIGKILL; always reaped."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()


def run_lines(run_log: Path) -> list[list[str]]:
    """The handler's `start <job> <attempt>` / `end <job>` records, split into words."""
    if not run_log.exists():
        return []
    return [line.split() for line in run_log.read_text().splitlines() if line]
