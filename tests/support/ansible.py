"""Run the collection's modules and playbooks the way users do: real `ansible` / `ansible-playbook` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)

    def task_results(self) -> list[dict]:
        """Per-task results on localhost, in order (from the ansible.posix.json callback)."""
        out = []
        for play in self.json()["plays"]:
            for task in play["tasks"]:
                res = task["hosts"].get("localhost")
                if res is not None:
                    out.append(dict(res, _task=task["task"]["name"]))
        return out


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / "build" / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra or {})
    return env


def run_playbook(playbook: str | Path, extra_vars: dict | None = None, env: dict[str, str] | None = None,
                 check: bool = False, json_output: bool = True, timeout: float = 300,
                 wrapper: list[str] | None = None) -> Run:
    """One `ansible-playbook` run; `wrapper` is a command that runs it (e.g. nsenter into a controller's
    namespaces, tests/integration/controllers.py)."""
    cmd = list(wrapper or [])
    cmd += [str(BIN / "ansible-playbook"), str(REPO / "playbooks" / playbook) if isinstance(playbook, str)
            and "/" not in playbook else str(playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    extra = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"} if json_output else {}
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env({**(env or {}), **extra}), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_module(module: str, args: dict, env: dict[str, str] | None = None, check: bool = False,
               timeout: float = 300, wrapper: list[str] | None = None) -> tuple[int, dict]:
    """One ad-hoc `ansible localhost -m ec2spot.pool.<module>` call; returns (rc, result). `wrapper`: as in
    run_playbook."""
    cmd = list(wrapper or []) + [str(BIN / "ansible"), "localhost", "-m", f"ec2spot.pool.{module}", "-a",
                                 json.dumps(args)]
    if check:
        cmd.append("--check")
    extra = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env({**(env or {}), **extra}), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    try:
        data = json.loads(proc.stdout)
        result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(f"no JSON result (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc
    return proc.returncode, result
