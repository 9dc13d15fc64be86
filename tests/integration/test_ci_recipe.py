"""The README's CI recipe (GitHub Actions), run as written: its commands come from README.md itself.

The recipe's steps run the way a runner runs them: each `run:` in its own `bash -e`, in a workspace that has the
repository's `playbooks/`, with the job's `env:`, a `$GITHUB_ENV` file whose `NAME=value` lines become the
environment of the later steps, and `if: always()` deciding which steps run after a failure. Only the steps that
call ansible-playbook are run; the step that uses the instance is not (its address comes from the emulator and may
be a real host's): the test decides whether it succeeded. "Another job" holds a lease of the same pool throughout:
whatever fails or is retried, its lease and its instance must survive.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml

from tests.support.ansible import REPO, ansible_env

POOL = "ci"


def readme_recipe() -> dict:
    """The GitHub Actions job of README.md's "Using it in a CI pipeline"."""
    section = (REPO / "README.md").read_text().split("## Using it in a CI pipeline", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert "tests/integration/test_ci_recipe.py" in block, "the recipe must say that this test runs it"
    job = yaml.safe_load(block)["jobs"]["integration"]
    assert [step.get("name") for step in job["steps"] if "run" in step] == [
        "Get an instance from the warm pool", "Use it", "Release it"], job["steps"]
    return job


class Runner:
    """A GitHub Actions runner, as far as the recipe needs one."""

    def __init__(self, job: dict, workspace: Path, env: dict[str, str]):
        self.job = job
        self.workspace = workspace
        workspace.mkdir()
        (workspace / "playbooks").symlink_to(REPO / "playbooks")  # what actions/checkout provides
        self.github_env = workspace.parent / "github_env"
        self.github_env.write_text("")
        self.env = ansible_env({**env, **{k: str(v) for k, v in job.get("env", {}).items()},
                                "GITHUB_ENV": str(self.github_env), "GITHUB_WORKSPACE": str(workspace)})
        self.failed = False

    def step(self, name: str) -> dict:
        return next(step for step in self.job["steps"] if step.get("name") == name)

    def exported(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.github_env.read_text().splitlines() if "=" in line)

    def run(self, name: str, succeeds: bool | None = None) -> subprocess.CompletedProcess | None:
        """Run one step if its `if:` lets it; `succeeds` stands for a step the test does not execute."""
        step = self.step(name)
        if self.failed and "always()" not in str(step.get("if", "")):
            return None
        if succeeds is not None:
            self.failed = self.failed or not succeeds
            return None
        assert "ansible-playbook" in step["run"], step
        # GitHub's default shell for `run` on Linux: bash -e {0}.
        proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=self.workspace,
                              env={**self.env, **self.exported()}, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, check=False)
        self.failed = self.failed or proc.returncode != 0
        return proc


@pytest.fixture
def recipe_pool(make_pool, aws_env, tmp_path):
    """Pool `ci` in the recipe's region, in the default state directory ($XDG_STATE_HOME/ec2spot) the recipe uses."""
    job = readme_recipe()
    region = job["env"]["AWS_REGION"]
    env = dict(aws_env, AWS_REGION=region, AWS_DEFAULT_REGION=region)
    pool = make_pool(boto3.client("ec2", region_name=region, endpoint_url=aws_env["AWS_URL"]), env, POOL)
    pool.state_dir = Path(pool.env["XDG_STATE_HOME"]) / "ec2spot"
    pool.env.update(AWS_REGION=region, AWS_DEFAULT_REGION=region)
    return job, pool, Runner(job, tmp_path / "workspace", pool.env)


def another_job_leases(pool) -> dict:
    rc, lease = pool.module("spot_pool_get", refill=False)
    assert rc == 0, lease
    return lease


def assert_survives(pool, lease):
    assert lease["instance_id"] in [entry["id"] for entry in pool.state()["leases"]], "another job's lease ended"
    assert pool.instance(lease["instance_id"])["State"]["Name"] == "running", "another job's instance was ended"


def leases_of(pool) -> list[tuple[str, str]]:
    """The leases, by instance and lease id. (Not the file's bytes: the refill job a get starts may write it.)"""
    return [(entry["id"], entry.get("lease_id")) for entry in pool.state()["leases"]]


def release_result(proc) -> str:
    return re.search(r"ok: \[localhost\] => \{\n\s+\"msg\": \"(.*)\"", proc.stdout).group(1)


def test_recipe_with_a_failing_get_step_leaves_another_job_s_lease_alone(recipe_pool):
    job, pool, runner = recipe_pool
    assert pool.init(size=1).rc == 0
    other = another_job_leases(pool)  # the pool's only instance, and its most recent lease

    get = runner.run("Get an instance from the warm pool")
    assert get.returncode != 0 and "has 0 ready of 1" in get.stdout, get.stdout[-2000:]
    assert runner.exported() == {}
    assert runner.run("Use it") is None, "skipped after the failed get"
    leases = leases_of(pool)

    release = runner.run("Release it")
    assert release is not None and release.returncode == 0, release.stdout[-3000:]
    assert release_result(release).startswith("no lease: none (nothing released from pool 'ci': no instance_id"), \
        release.stdout[-2000:]
    assert leases_of(pool) == leases
    assert_survives(pool, other)


@pytest.mark.parametrize("use_succeeds", [True, False], ids=["job-passed", "job-failed"])
def test_recipe_with_a_retried_release_step_changes_nothing_the_second_time(recipe_pool, use_succeeds):
    job, pool, runner = recipe_pool
    assert pool.init(size=2).rc == 0

    get = runner.run("Get an instance from the warm pool")
    assert get.returncode == 0, get.stdout[-3000:] + get.stderr[-2000:]
    mine = runner.exported()
    assert re.fullmatch(r"i-[0-9a-f]+", mine["SPOT_POOL_INSTANCE_ID"]) and len(mine["SPOT_POOL_LEASE_ID"]) == 32
    other = another_job_leases(pool)  # leased after ours: now the pool's most recent lease
    assert other["instance_id"] != mine["SPOT_POOL_INSTANCE_ID"]
    runner.run("Use it", succeeds=use_succeeds)

    first = runner.run("Release it")
    assert first.returncode == 0, first.stdout[-3000:]
    assert release_result(first) == f"{mine['SPOT_POOL_INSTANCE_ID']}: terminate"
    assert pool.instance(mine["SPOT_POOL_INSTANCE_ID"])["State"]["Name"] in ("shutting-down", "terminated")
    assert_survives(pool, other)
    leases = leases_of(pool)

    retried = runner.run("Release it")
    assert retried.returncode == 0, retried.stdout[-3000:]
    assert release_result(retried) == (
        f"no lease: none (nothing released from pool 'ci': lease {mine['SPOT_POOL_LEASE_ID']} is not held any "
        f"more (instance {mine['SPOT_POOL_INSTANCE_ID']} is not touched))")
    assert leases_of(pool) == leases, "the retried release changed the leases"
    assert_survives(pool, other)
