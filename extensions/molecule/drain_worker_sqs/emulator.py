"""The drain_worker_sqs scenario's "AWS": a moto server on the host end of the veth, and the host's view of it.

    emulator.py start STATE_DIR ADDRESS PORT       start moto on ADDRESS:PORT (that address only), detached;
                                                   make the queue, its dead-letter queue and the job table
    emulator.py stop [STATE_DIR] ADDRESS           stop it (by its pid file, else by its exact command line)
    emulator.py cleanup                            last resort after a failed run: machine.sh down and stop,
                                                   with the scenario's own names from molecule.yml
    emulator.py item ENDPOINT TABLE JOB            the job's record in the table, as JSON
    emulator.py wait ENDPOINT TABLE JOB STATUS SECONDS   poll the record until it has STATUS
    emulator.py depth ENDPOINT QUEUE_URL           the queue's visible / in-flight / delayed counts, as JSON
    emulator.py enqueue ENDPOINT QUEUE_URL TABLE   record a job and send its message, exactly as another
                                                   worker's POST /jobs would (the worker's own SqsQueue)

Run with the controller's Python (the repository's .venv: moto, boto3 and the worker are installed there). The
credentials below are for the emulator only: moto accepts any key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGION = "us-east-1"
QUEUE = "drain-worker-jobs"       # inventory/group_vars/all.yml names the same
TABLE = "drain-worker-jobs"
EMULATOR_ONLY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def fail(message: str) -> None:
    print(f"emulator.py: {message}", file=sys.stderr)
    sys.exit(1)


def clients(endpoint: str):
    import boto3
    os.environ.update(EMULATOR_ONLY_CREDENTIALS)
    return (boto3.client("sqs", region_name=REGION, endpoint_url=endpoint),
            boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint))


def moto_command(address: str, port: str) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", address, "-p", port]


def is_our_moto(pid: int, address: str) -> bool:
    """True when `pid` runs moto.server bound to `address` (pids are reused: check before any signal)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"moto.server" in argv and b"-H" in argv and argv[argv.index(b"-H") + 1] == address.encode()


def start(state_dir: str, address: str, port: str) -> None:
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://{address}:{port}"
    # A new session and no inherited descriptors: moto outlives this script and the Ansible task, which waits
    # for every process holding its stdout.
    with open(state / "moto.log", "ab") as log:
        proc = subprocess.Popen(moto_command(address, port), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=dict(os.environ, **EMULATOR_ONLY_CREDENTIALS))
    (state / "moto.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            fail(f"moto exited with {proc.returncode}: {(state / 'moto.log').read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=1):
                break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                fail(f"moto on {endpoint} did not answer within 30 s")
            time.sleep(0.1)
    sqs, dynamodb = clients(endpoint)
    dlq_url = sqs.create_queue(QueueName=QUEUE + "-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # maxReceiveCount above the worker's MAX_ATTEMPTS, as the worker's README asks.
    queue_url = sqs.create_queue(QueueName=QUEUE, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "10"})})["QueueUrl"]
    # The shape the worker expects (sqsqueue.SqsQueue.check): one string hash key, `id`.
    dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    print(json.dumps({"pid": proc.pid, "queue_url": queue_url, "dlq_url": dlq_url, "table": TABLE}))


def stop(state_dir: str | None, address: str) -> None:
    pids = []
    pid_file = Path(state_dir) / "moto.pid" if state_dir else None
    if pid_file and pid_file.exists():
        pids.append(int(pid_file.read_text()))
    # Without a pid file (a run that died early, or a cleanup from another shell): the moto bound to this
    # scenario's own address, found by its exact command line.
    pids += [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in pids and is_our_moto(int(p), address)]
    for pid in pids:
        if not is_our_moto(pid, address):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while is_our_moto(pid, address) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_our_moto(pid, address):
            os.kill(pid, signal.SIGKILL)
    if pid_file:
        pid_file.unlink(missing_ok=True)
    left = [p for p in os.listdir("/proc") if p.isdigit() and is_our_moto(int(p), address)]
    if left:
        fail(f"moto on {address} still runs: pids {left}")


def cleanup() -> None:
    """machine.sh down, then stop, with the names molecule.yml gives this scenario (stated there only)."""
    import yaml
    env = {k: str(v) for k, v in yaml.safe_load((HERE / "molecule.yml").read_text())["ansible"]["env"].items()
           if k.startswith("DW_")}
    machine = subprocess.run([str(HERE.parent / "nspawn" / "machine.sh"), "down"], env=dict(os.environ, **env),
                             check=False)
    stop(None, env["DW_HOST_ADDR"])
    sys.exit(machine.returncode)


def item(endpoint: str, table: str, job_id: str) -> dict | None:
    _sqs, dynamodb = clients(endpoint)
    found = dynamodb.get_item(TableName=table, Key={"id": {"S": job_id}}, ConsistentRead=True).get("Item")
    if found is None:
        return None
    return {k: (int(v["N"]) if "N" in v and v["N"].isdigit() else next(iter(v.values()))) for k, v in found.items()}


def wait(endpoint: str, table: str, job_id: str, status: str, seconds: str) -> dict:
    deadline = time.monotonic() + float(seconds)
    while True:
        record = item(endpoint, table, job_id)
        if record is not None and record.get("status") == status:
            return record
        if time.monotonic() > deadline:
            fail(f"job {job_id} not {status} within {seconds} s: {record}")
        time.sleep(0.1)


def depth(endpoint: str, queue_url: str) -> dict:
    sqs, _dynamodb = clients(endpoint)
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return {"visible": int(attributes["ApproximateNumberOfMessages"]),
            "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
            "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"])}


def enqueue(endpoint: str, queue_url: str, table: str) -> dict:
    from spot_drain_worker.sqsqueue import SqsQueue
    sqs, dynamodb = clients(endpoint)
    queue = SqsQueue(queue_url=queue_url, table=table, sqs=sqs, dynamodb=dynamodb, max_attempts=5,
                     retry_backoff_seconds=1)
    job, _created = queue.enqueue({"task": "from-the-host"})
    return {"id": job.id}


def main(argv: list[str]) -> None:
    commands = {"start": (start, 3), "stop": (stop, 2), "cleanup": (cleanup, 0), "item": (item, 3),
                "wait": (wait, 5), "depth": (depth, 2), "enqueue": (enqueue, 3)}
    if not argv or argv[0] not in commands:
        fail(__doc__)
    function, arity = commands[argv[0]]
    args = argv[1:]
    if argv[0] == "stop" and len(args) == 1:
        args = [None] + args
    if len(args) != arity:
        fail(__doc__)
    result = function(*args)
    if result is not None or argv[0] in ("item",):
        print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
