"""roles/drain_worker, without an instance: the settings it refuses before changing anything, and the
environment file's tokens. (The service itself is tested on a real systemd by the molecule scenario.)

Every run is in check mode against localhost with every path in a temporary directory, so even a role
that failed to refuse could change nothing here; the tokens go in through a vars file, never argv."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from tests.support.ansible import BIN, REPO, ansible_env, run_playbook

JOBS = "jobs-token-for-the-role-0123"
CONTROL = "control-token-for-the-role-01"
QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs"


def write_playbook(tmp_path, variables: dict, tasks: list | None = None, role_tasks: str | None = None) -> str:
    isolated = {
        "drain_worker_name": "drain-worker-role-test",
        "drain_worker_install_dir": str(tmp_path / "opt"),
        "drain_worker_config_dir": str(tmp_path / "etc"),
        "drain_worker_controller_dist_dir": str(tmp_path / "dist"),
        "drain_worker_os_packages": [],
    }
    (tmp_path / "vars.json").write_text(json.dumps(dict(isolated, **variables)))
    role = {"name": "ec2spot.pool.drain_worker"}
    if role_tasks:
        role["tasks_from"] = role_tasks
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars_files": [str(tmp_path / "vars.json")],
            "tasks": [{"name": "Run the role", "ansible.builtin.include_role": role}] + (tasks or [])}
    path = tmp_path / "play.yml"
    path.write_text(json.dumps([play]))
    return str(path)


def played_tasks(run) -> list[tuple[str, dict]]:
    return [(task["task"]["name"], task["hosts"]["localhost"])
            for play in run.json()["plays"] for task in play["tasks"] if "localhost" in task["hosts"]]


REFUSED = {
    "network host without a jobs token": ({}, "drain_worker_jobs_token must be set: the worker listens on 0.0.0.0"),
    "a control token is not a jobs token": (
        {"drain_worker_control_token": CONTROL}, "drain_worker_jobs_token must be set"),
    "short jobs token": ({"drain_worker_jobs_token": "short-jobs-tok"},
                         "drain_worker_jobs_token must be at least 16 characters long"),
    "one token for both": ({"drain_worker_jobs_token": JOBS, "drain_worker_control_token": JOBS},
                           "drain_worker_jobs_token must differ from drain_worker_control_token"),
    "simulation that a control token would turn off": (
        {"drain_worker_jobs_token": JOBS, "drain_worker_control_token": CONTROL,
         "drain_worker_allow_simulate_interruption": True},
        "drain_worker_allow_simulate_interruption=true has no effect"),
    "a queue without its job table": (
        {"drain_worker_jobs_token": JOBS, "drain_worker_queue_url": QUEUE},
        "drain_worker_jobs_table must be set with drain_worker_queue_url"),
    "a queue URL that is not one": (
        {"drain_worker_jobs_token": JOBS, "drain_worker_queue_url": "jobs", "drain_worker_jobs_table": "jobs"},
        "drain_worker_queue_url jobs is not an SQS queue URL"),
    "queue settings without a queue": (
        {"drain_worker_jobs_token": JOBS, "drain_worker_jobs_table": "jobs", "drain_worker_aws_region": "eu-west-1",
         "drain_worker_jobs_table_create": False, "drain_worker_aws_endpoint_url": "http://127.0.0.1:5000"},
        "drain_worker_jobs_table, drain_worker_jobs_table_create=false, drain_worker_aws_region, "
        "drain_worker_aws_endpoint_url only apply to the SQS queue"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_role_refuses_before_changing_anything(tmp_path, case):
    variables, message = REFUSED[case]
    run = run_playbook(write_playbook(tmp_path, variables), check=True)
    assert run.rc != 0, run.stdout
    tasks = played_tasks(run)
    failed = [(name, result) for name, result in tasks if result.get("failed")]
    assert [name.split(" : ")[-1] for name, _result in failed] == [
        "Stop before changing anything when a setting would stop the worker"]
    assert message in failed[0][1]["msg"]
    assert not any(result.get("changed") for _name, result in tasks)
    # Only the argument validation, the check and the refusal ran: no build, no file.
    assert len(tasks) <= 4, [name for name, _result in tasks]
    assert not (tmp_path / "opt").exists() and not (tmp_path / "etc").exists()
    for token in (JOBS, CONTROL, "short-jobs-tok"):
        assert token not in run.stdout and token not in run.stderr


@pytest.mark.parametrize("variables", [
    {"drain_worker_jobs_token": JOBS},
    {"drain_worker_jobs_token": JOBS, "drain_worker_control_token": CONTROL},
    {"drain_worker_host": "127.0.0.1"},
    {"drain_worker_host": "::1", "drain_worker_control_token": CONTROL},
    {"drain_worker_allow_simulate_interruption": True},
    {"drain_worker_jobs_token": JOBS, "drain_worker_queue_url": QUEUE, "drain_worker_jobs_table": "jobs",
     "drain_worker_jobs_table_create": False, "drain_worker_aws_region": "eu-west-1"},
], ids=["jobs token", "both tokens", "loopback", "loopback v6 with control token", "development mode", "sqs queue"])
def test_role_accepts_settings_the_worker_accepts(tmp_path, variables):
    check = {"name": "Show the verdict", "ansible.builtin.debug": {"var": "_drain_worker_setting_problems"}}
    run = run_playbook(write_playbook(tmp_path, variables, [check], role_tasks="validate"), check=True)
    assert run.rc == 0, run.stdout[-2000:]
    assert played_tasks(run)[-1][1]["_drain_worker_setting_problems"] == []
    assert JOBS not in run.stdout and CONTROL not in run.stdout


def render_environment_file(tmp_path, cases: dict) -> dict:
    """worker.env as the role renders it, for each case's variables (over the role's defaults)."""
    rendered = {}
    for name, variables in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        render = {"name": "Render the environment file", "ansible.builtin.template": {
            "src": str(REPO / "roles" / "drain_worker" / "templates" / "worker.env.j2"),
            "dest": str(directory / "worker.env"), "mode": "0640"}}
        play = {"hosts": "localhost", "connection": "local", "gather_facts": False,
                "vars_files": [str(REPO / "roles" / "drain_worker" / "defaults" / "main.yml"),
                               str(directory / "vars.json")],
                "tasks": [render]}
        (directory / "vars.json").write_text(json.dumps({"drain_worker_name": "w", **variables}))
        (directory / "play.yml").write_text(json.dumps([play]))
        run = run_playbook(str(directory / "play.yml"))
        assert run.rc == 0, run.stdout[-2000:]
        rendered[name] = (directory / "worker.env").read_text()
        assert stat.S_IMODE((directory / "worker.env").stat().st_mode) == 0o640
    return rendered


def test_environment_file_carries_the_jobs_token_only_when_set(tmp_path):
    rendered = render_environment_file(tmp_path, {"with": {"drain_worker_jobs_token": JOBS},
                                                  "without": {"drain_worker_jobs_token": ""}})
    assert f'JOBS_TOKEN="{JOBS}"' in rendered["with"].splitlines()
    assert "JOBS_TOKEN" not in rendered["without"]


def test_environment_file_selects_the_sqs_queue_only_when_set(tmp_path):
    rendered = render_environment_file(tmp_path, {
        "sqs": {"drain_worker_queue_url": QUEUE, "drain_worker_jobs_table": "jobs",
                "drain_worker_jobs_table_create": False, "drain_worker_aws_region": "eu-west-1"},
        "sqlite": {}})
    lines = rendered["sqs"].splitlines()
    assert f'QUEUE_URL="{QUEUE}"' in lines and 'JOBS_TABLE="jobs"' in lines
    assert 'JOBS_TABLE_CREATE="false"' in lines and 'AWS_REGION="eu-west-1"' in lines
    assert "AWS_ENDPOINT_URL" not in rendered["sqs"]
    # No credential variable is ever written: the instance profile provides them.
    assert "AWS_ACCESS_KEY_ID" not in rendered["sqs"] and "AWS_SECRET_ACCESS_KEY" not in rendered["sqs"]
    for name in ("QUEUE_URL", "JOBS_TABLE", "AWS_REGION", "AWS_ENDPOINT_URL"):
        assert name not in rendered["sqlite"]


def test_environment_file_task_never_shows_a_token(tmp_path):
    # Check mode with --diff at -vvv: the most a run can show. The task's result and diff stay hidden.
    (tmp_path / "etc").mkdir()
    play = write_playbook(tmp_path, {"drain_worker_jobs_token": JOBS, "drain_worker_control_token": CONTROL},
                          [{"name": "Stop before the handlers", "ansible.builtin.meta": "end_play"}],
                          role_tasks="configure")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--check", "--diff", "-vvv", play], cwd=REPO,
                          env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Write the worker environment file" in proc.stdout and "censored" in proc.stdout
    for token in (JOBS, CONTROL):
        assert token not in proc.stdout and token not in proc.stderr
    assert list((tmp_path / "etc").iterdir()) == []  # check mode wrote nothing


def install_run(tmp_path, variables: dict, check: bool = False):
    """The role's install tasks for real on localhost (a virtualenv in tmp_path, dependencies from the molecule
    scenarios' wheelhouse: no index), stopping before the handlers would restart a service."""
    stop = [{"name": "Stop before the handlers", "ansible.builtin.meta": "end_play"}]
    run = run_playbook(write_playbook(tmp_path, variables, stop, role_tasks="install"), check=check)
    assert run.rc == 0, run.stdout[-3000:]
    return {name.split(" : ")[-1]: result for name, result in played_tasks(run)}


def venv_has(tmp_path, module: str) -> bool:
    python = tmp_path / "opt" / "venv" / "bin" / "python"
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def test_install_adds_the_sqs_extra_when_the_queue_is_set(tmp_path):
    # The wheelhouse the molecule scenarios give their containers (built once, cached under build/): it must
    # hold the `sqs` extra's dependencies, or the --no-index installs below fail.
    wheelhouse = subprocess.run([str(REPO / "extensions" / "molecule" / "nspawn" / "wheelhouse.sh"),
                                 str(BIN / "python")], capture_output=True, text=True, timeout=400, check=True)
    sqlite = {"drain_worker_wheelhouse": wheelhouse.stdout.strip(), "drain_worker_python": str(BIN / "python")}
    sqs = dict(sqlite, drain_worker_queue_url=QUEUE, drain_worker_jobs_table="jobs")
    install = "Install the worker and its dependencies into the virtualenv"
    predict = "Report the installation check mode would make"

    assert install_run(tmp_path, sqlite)[install]["changed"]
    assert venv_has(tmp_path, "spot_drain_worker") and not venv_has(tmp_path, "boto3")

    # Switching the installed SQLite worker to the queue: same version, but the extra is missing.
    predicted = install_run(tmp_path, sqs, check=True)
    assert predicted[predict]["changed"] and predicted[install].get("skipped")
    assert "with [sqs] (installed: 0.1.0; missing: boto3)" in predicted[predict]["msg"]
    assert not venv_has(tmp_path, "boto3")  # check mode installed nothing

    switched = install_run(tmp_path, sqs)
    assert switched[install]["changed"] and "spot-drain-worker[sqs]==0.1.0" in switched[install]["cmd"]
    assert venv_has(tmp_path, "boto3")

    again = install_run(tmp_path, sqs)
    assert not [name for name, result in again.items() if result.get("changed")]
    assert again[install].get("skipped")


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most renderers) give a Markdown heading."""
    import re
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_role_readme_links_resolve():
    # The IAM policy and the queue's semantics are stated once, in the worker's README; the role's README links
    # there. A renamed heading would leave the role's readers at the top of the worker's README.
    import re
    readme = REPO / "roles" / "drain_worker" / "README.md"
    links = re.findall(r"\]\((\.\./[^)#]+)#([^)]+)\)", readme.read_text())
    assert ("../../worker/README.md", "iam-policy-for-the-instance-profile") in links
    for path, anchor in links:
        target = (readme.parent / path).resolve()
        headings = [line.lstrip("#") for line in target.read_text().splitlines() if line.startswith("#")]
        assert anchor in {github_anchor(h) for h in headings}, (path, anchor)
