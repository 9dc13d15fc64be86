"""The one AWS emulator used by the tests, the demo and the benchmarks: a moto server on loopback.

Everything that talks to "AWS" in this repository (modules run by ansible-playbook, detached refill jobs,
test code with boto3) reaches it over real HTTP on 127.0.0.1, so processes that outlive a module see the
same EC2 as the test that checks them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
REGION = "us-east-1"
AMI = "ami-12c6146b"  # an AMI every moto server knows
# A pool's launch specification for tests that call module_utils directly (what spot_pool_init would store).
POOL_LAUNCH = {"image_id": AMI, "instance_types": ["t3.micro"], "availability_zones": ["us-east-1a"],
               "fallback": True, "region": REGION}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MotoServer:
    """A moto server process on 127.0.0.1; `start()` waits until it answers, `stop()` reaps it."""

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "MotoServer":
        moto_server = Path(sys.executable).with_name("moto_server")
        cmd = [str(moto_server)] if moto_server.exists() else [sys.executable, "-m", "moto.server"]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ, **FAKE_CREDENTIALS)
        self.proc = subprocess.Popen(
            cmd + ["-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        )
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode} before answering")
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server on {self.url} did not answer within {timeout}s")

    def reset(self) -> None:
        """Forget every resource (moto's own reset API)."""
        req = urllib.request.Request(self.url + "/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for anything that should use this emulator: Ansible (AWS_URL), boto3 (AWS_ENDPOINT_URL)."""
        url = endpoint or self.url
        return dict(FAKE_CREDENTIALS, AWS_URL=url, AWS_ENDPOINT_URL=url, AWS_REGION=REGION,
                    AWS_DEFAULT_REGION=REGION)

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
