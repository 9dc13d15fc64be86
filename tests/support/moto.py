"""The one AWS emulator used by the tests, the demo and the benchmarks: a moto server on loopback.

Everything that talks to "AWS" in this repository (modules run by ansible-playbook, detached refill jobs,
test code with boto3) reaches it over real HTTP on 127.0.0.1, so processes that outlive a module see the
same EC2 as the test that checks them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
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


class MotoServer:
    """A moto server process on 127.0.0.1; `start()` waits until it answers, `stop()` reaps it."""

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.host = "127.0.0.1"
        # None: the server binds port 0 and `start()` reads the port the kernel gave it from the server's log. A
        # port picked here and bound later by the server could be taken in between, by another pytest-xdist
        # process's server for one: this one would then fail to bind, and `start()` would see the other answer.
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "MotoServer":
        moto_server = Path(sys.executable).with_name("moto_server")
        cmd = [str(moto_server)] if moto_server.exists() else [sys.executable, "-m", "moto.server"]
        # The log is where a server on port 0 says which port it has: without a log_path, a temporary file.
        log = open(self.log_path, "a+b") if self.log_path else tempfile.TemporaryFile()
        log_start = log.tell()
        env = dict(os.environ, **FAKE_CREDENTIALS)
        self.proc = subprocess.Popen(
            cmd + ["-H", self.host, "-p", str(self.port or 0)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with {self.proc.returncode} before answering")
                if self.port is None:
                    self.port = self._bound_port(log, log_start)
                try:
                    if self.port is not None:
                        with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                            return self
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                time.sleep(0.1)
            raise RuntimeError(f"moto server on {self.url} did not answer within {timeout}s")
        except BaseException:
            self.stop()  # whatever went wrong, no server is left behind
            raise
        finally:
            log.close()

    def _bound_port(self, log, start: int) -> int | None:
        """The port in werkzeug's " * Running on http://127.0.0.1:PORT" line, once the server has written it."""
        found = re.search(rb"Running on http://" + re.escape(self.host.encode()) + rb":(\d+)",
                          os.pread(log.fileno(), 1 << 16, start))
        return int(found.group(1)) if found else None

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


def use_profile_only(monkeypatch, tmp_path, profile: str = "ci") -> None:
    """Credentials and region only from the named profile of AWS config files in `tmp_path`: the environment's
    keys and region are removed for the test (monkeypatch puts them back)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config").write_text("[profile %s]\nregion = %s\n" % (profile, REGION))
    (tmp_path / "credentials").write_text("[%s]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
                                          % profile)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
