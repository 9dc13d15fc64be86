"""What a hand-out costs in each store: claims per second, claim latency, and DynamoDB requests per hand-out.

Run from the repository root after `make setup`:  .venv/bin/python bench/store_claims.py   (or `make bench-store`)

Part 1 (the client): what the hand-out path pays for its DynamoDB client, in fresh processes, alternating: import,
construct and one Query with the light client (dynamoquery.py: botocore's signer, no boto3, no service model)
against `import boto3`, a boto3 DynamoDB client and the same Query.

Part 2 (the stores): the real `claim_ready(verify=False)` of each store, by 1, 8 and 32 concurrent claimers, each
a process of its own (forked: the file store's flock serializes processes, not threads, so processes are the honest
test of it; the DynamoDB claimers are processes too, as controllers are), on a pool of exactly as many ready
entries as claims in the run, so every claim finds one:
  file      the JSON file store (state.FileStore) in a temporary directory
  dynamodb  the DynamoDB store (dynamo.DynamoStore) with the light client, on a moto server started here on
            127.0.0.1, reached through the fault proxy (tests/support/faultproxy.py, its own process), which applies
            DynamoDB requests one at a time as DynamoDB applies a conditional write atomically (moto alone does
            not), and counts them: requests per hand-out, by operation.
moto's latency is not DynamoDB's (a Python server on the same 2 CPUs as the claimers, with every request serialized
by the proxy): the DynamoDB figures compare the design's request counts and the contention behaviour, not what a
table in AWS would answer.

Every run checks that no instance was claimed twice and that the store's leases are exactly the claims made.
Performance is reported, never asserted: the exit status is 0 unless a correctness check or a run fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The collection as Ansible sees it (`make setup` links this checkout there), as tests/conftest.py does.
sys.path.insert(0, str(REPO / "build" / "collections"))

from bench.get_latency import load_note, percentile  # noqa: E402  # one definition of each for the benchmarks
from tests.support.moto import FAKE_CREDENTIALS, REGION, MotoServer  # noqa: E402
from tests.support.pool_entries import pool_entry  # noqa: E402

TABLE = "ec2spot-pool-bench"
LEASE_TTL = 3600
CONCURRENCY = (1, 8, 32)
DYNAMODB_OPERATIONS = ("Query", "UpdateItem", "DeleteItem", "GetItem", "TransactWriteItems")


class BenchFailure(Exception):
    """A run failed or a correctness check failed: the numbers would mean nothing."""


def pool_modules():
    """The DynamoDB store, its light client and the file store's names (`state`), as Ansible would load them."""
    # pylint: disable=import-outside-toplevel
    try:
        from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws import dynamoquery
        from ansible_collections.ec2spot.pool.plugins.module_utils._pool.domain import pool
        from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import dynamodb as dynamo
        from ansible_collections.ec2spot.pool.plugins.module_utils._pool.stores import filestore
    except ImportError as exc:
        raise SystemExit("cannot import the collection from build/collections (%s): run `make setup` first" % exc)
    return dynamo, dynamoquery, types.SimpleNamespace(FileStore=filestore.FileStore, new_state=pool.new_state)


def light_params(url):
    return {"region": REGION, "endpoint_url": url, "access_key": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret_key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


# == Part 1: the client ===================================================================================
CLIENT_PROBE = """
import sys, time
started = time.perf_counter()
url, kind = sys.argv[1:3]
query = dict(TableName="%s", ConsistentRead=True, KeyConditionExpression="#p = :p",
             ExpressionAttributeNames={"#p": "pool"}, ExpressionAttributeValues={":p": {"S": "none"}})
if kind == "light":
    from ansible_collections.ec2spot.pool.plugins.module_utils._pool._aws.dynamoquery import DynamoDBClient
    client = DynamoDBClient({"region": "%s", "endpoint_url": url, "access_key": "testing", "secret_key": "testing"})
else:
    import boto3
    from botocore.config import Config
    client = boto3.client("dynamodb", region_name="%s", endpoint_url=url, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
made = time.perf_counter()
client.query(**query)
done = time.perf_counter()
print("%%.6f %%.6f" %% (made - started, done - started))
""" % (TABLE, REGION, REGION)


def bench_client(url, runs, out):
    """Fresh processes, alternating light and boto3: (construct incl. imports, construct + one Query) each."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "build" / "collections"), str(REPO)]))
    times = {"light": [], "boto3": []}
    for run in range(runs + 1):
        for kind in (("light", "boto3") if run % 2 else ("boto3", "light")):
            proc = subprocess.run([sys.executable, "-c", CLIENT_PROBE, url, kind], env=env, capture_output=True,
                                  text=True, timeout=60, check=False)
            if proc.returncode != 0:
                raise BenchFailure("the %s client probe failed:\n%s" % (kind, proc.stderr[-2000:]))
            if run:  # the first round warms the page cache and writes .pyc files: not counted
                times[kind].append(tuple(float(value) for value in proc.stdout.split()))
    out("")
    out("## The hand-out path's DynamoDB client: import + construct + one Query, in a fresh process (%d runs each)"
        % runs)
    out("%-44s %12s %12s %10s" % ("client", "construct", "+ 1 Query", "x boto3"))
    out("(the light client imports and resolves nothing until its first call: its imports are in the Query)")
    boto_total = statistics.median(total for _made, total in times["boto3"])
    rows = []
    for kind, label in (("boto3", "boto3 client (import boto3, client, model)"),
                        ("light", "dynamoquery.DynamoDBClient (no boto3)")):
        made = statistics.median(value for value, _total in times[kind])
        total = statistics.median(value for _made, value in times[kind])
        out("%-44s %9.1f ms %9.1f ms %10.2f" % (label, made * 1000, total * 1000, total / boto_total))
        rows.append((label, made * 1000, total * 1000, total / boto_total))
    out("(medians; the Query's own round trip to moto is in both; interpreter start-up is in neither)")
    return rows


# == Part 2: the stores ===================================================================================
def claimer(open_store, count, barrier, results):
    """One claimer process: `count` claims, each timed from call to return."""
    store = open_store()
    ids, latencies, errors = [], [], []
    barrier.wait()
    started = time.perf_counter()
    for _claim in range(count):
        called = time.perf_counter()
        try:
            claim = store.claim_ready(set(), set(), LEASE_TTL, verify=False)
        except Exception as exc:  # pylint: disable=broad-except  # reported, and fails the run
            errors.append(repr(exc))
            continue
        latencies.append(time.perf_counter() - called)
        if claim is None or claim.lease is None:
            errors.append("a claim found no ready entry in a pool big enough for every claim")
        else:
            ids.append(claim.lease["id"])
    results.put((ids, latencies, errors, started, time.perf_counter()))


def run_claims(open_store, claimers, per_claimer):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(claimers)
    results = context.Queue()
    workers = [context.Process(target=claimer, args=(open_store, per_claimer, barrier, results))
               for _worker in range(claimers)]
    for worker in workers:
        worker.start()
    collected = [results.get(timeout=900) for _worker in workers]  # drain before join, or a full pipe blocks
    for worker in workers:
        worker.join(timeout=60)
        if worker.exitcode != 0:
            raise BenchFailure("claimer %d exited with %s" % (worker.pid, worker.exitcode))
    ids = [item for result in collected for item in result[0]]
    latencies = [value for result in collected for value in result[1]]
    errors = [error for result in collected for error in result[2]]
    wall = max(result[4] for result in collected) - min(result[3] for result in collected)
    return ids, latencies, errors, wall


def seed(store, size):
    """A new pool of `size` ready entries, through the store's own whole-pool change."""
    new_state = pool_modules()[2].new_state
    with store.transaction() as tx:
        tx.state = new_state(store.pool_name, size, {"instance_types": ["t3.micro"]})
        tx.state["instances"] = [pool_entry(number) for number in range(size)]


def check(store, size, ids, errors):
    """Every claim got a distinct instance, and the store's leases are exactly the claims made."""
    final = store.read()
    duplicates = len(ids) - len(set(ids))
    leased = sorted(lease["id"] for lease in final["leases"])
    if errors or duplicates or len(ids) != size or leased != sorted(ids) or final["instances"]:
        raise BenchFailure("claims are wrong: %d claims, %d duplicates, %d leases recorded, %d left, errors %s"
                           % (len(ids), duplicates, len(leased), len(final["instances"]), errors[:3]))
    return duplicates


class FaultProxyProcess:
    """The fault proxy in a process of its own (the claimers are forked from this one, which must hold no thread),
    with its JSON control API for counting requests."""

    def __init__(self, moto):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.faultproxy", "--upstream-port",
                                      str(moto.port)], cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise BenchFailure("the fault proxy did not start (it said %r)" % self.url)

    def control(self, method, route):
        request = urllib.request.Request(self.url + "/__faults__" + route, method=method,
                                         data=b"{}" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    def counts(self):
        """{operation: requests} since the last reset, and the median time one took in the proxy and moto (ms)."""
        counted, durations = {}, []
        for record in self.control("GET", "/records"):
            counted[record["action"]] = counted.get(record["action"], 0) + 1
            durations.append(record["duration"] * 1000)
        return counted, (statistics.median(durations) if durations else 0.0)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # its main() stops the server and joins its threads
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_stores(args, workdir, moto, proxy, out):
    dynamo, dynamoquery, state = pool_modules()
    rows = []
    total_claims = total_duplicates = 0

    def open_dynamo(name):
        """A claimer's DynamoStore, its client ready before the barrier (what a get's first call pays once, imports
        and credentials, is part 1's figure, not a claim's), so that the claims' requests are all that is counted."""
        client = dynamoquery.DynamoDBClient(light_params(proxy.url))
        assert client.endpoint_url == proxy.url  # resolves credentials, region, endpoint and the HTTP session
        import botocore.auth  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import  # its signer
        return dynamo.DynamoStore(client, TABLE, name, str(workdir))

    stores = {
        "file": lambda name: (lambda: state.FileStore(str(workdir / (name + ".json")), name)),
        "dynamodb": lambda name: (lambda: open_dynamo(name)),
    }
    out("")
    out("## Claims: %d per run (a pool of %d ready entries), claimers are processes; %s"
        % (args.claims, args.claims, load_note()))
    out("file: state.FileStore in %s. dynamodb: DynamoStore + dynamoquery.DynamoDBClient on moto %s through the fault"
        % (workdir, moto.url))
    out("proxy %s (DynamoDB requests applied one at a time). moto's latency is not DynamoDB's: the dynamodb rows"
        % (proxy.url if proxy is not None else "(not started: no dynamodb run)"))
    out("compare request counts and behaviour under contention, not AWS's speed. \"moto ms per request\" is the"
        " median time")
    out("the proxy took to answer one (moto's work, plus the wait for the one-at-a-time lock).")
    out("%-9s %9s %10s %10s %10s %9s %s"
        % ("store", "claimers", "claims/s", "p50 ms", "p99 ms", "duplicates", "DynamoDB requests per hand-out"))
    for store_name in args.stores:
        for claimers in args.concurrency:
            per_claimer = max(1, args.claims // claimers)
            size = per_claimer * claimers
            pool_name = "bench-%s-%d" % (store_name, claimers)
            open_store = stores[store_name](pool_name)
            seed(open_store(), size)
            if proxy is not None:
                proxy.control("POST", "/reset")  # count the claims' requests only
            ids, latencies, errors, wall = run_claims(open_store, claimers, per_claimer)
            per_handout = "-"
            if store_name == "dynamodb":  # counted before the check below reads the pool
                counted, served_ms = proxy.counts()
                requests = {name: count for name, count in counted.items() if name in DYNAMODB_OPERATIONS}
            duplicates = check(open_store(), size, ids, errors)
            total_claims += len(ids)
            total_duplicates += duplicates
            if store_name == "dynamodb":
                by_operation = ", ".join("%s %.2f" % (name, count / len(ids)) for name, count in sorted(requests.items()))
                per_handout = "%.2f (%s); moto %.1f ms per request" % (sum(requests.values()) / len(ids), by_operation,
                                                                       served_ms)
            lat = [value * 1000 for value in latencies]
            rate = len(ids) / wall
            out("%-9s %9d %10.0f %10.2f %10.2f %9d  %s"
                % (store_name, claimers, rate, percentile(lat, 0.5), percentile(lat, 0.99), duplicates, per_handout))
            rows.append((store_name, claimers, size, rate, percentile(lat, 0.5), percentile(lat, 0.99), duplicates,
                         per_handout))
    out("")
    out("Correctness: %d claims in all, %d instances claimed twice; in every run the store's leases were exactly"
        " the claims made, and no claim found the pool empty." % (total_claims, total_duplicates))
    return rows


# == Output ===============================================================================================
def markdown(client_rows, store_rows, command):
    lines = []
    if client_rows:
        lines += ["| DynamoDB client, fresh process | construct (imports included; the light client's come with"
                  " its first call) | + one Query | x boto3 (total) |",
                  "|---|---:|---:|---:|"]
        lines += ["| %s | %.1f ms | %.1f ms | %.2f |" % row for row in client_rows]
        lines.append("")
    if store_rows:
        lines += ["| store | claimers (processes) | pool | claims/s | claim p50 | claim p99 | duplicates |"
                  " DynamoDB requests per hand-out |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        lines += ["| %s | %d | %d | %.0f | %.2f ms | %.2f ms | %d | %s |" % row for row in store_rows]
        lines.append("")
    lines.append("Measured with `%s` on %s (%s); DynamoDB on moto through the fault proxy: moto's latency is not"
                 " DynamoDB's." % (command, time.strftime("%Y-%m-%d"), load_note()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--claims", type=int, default=160,
                        help="claims per run, and the pool's size (default 160; divided among the claimers)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                        help="numbers of concurrent claimers, one run each (default 1 8 32)")
    parser.add_argument("--stores", nargs="+", choices=["file", "dynamodb"], default=["file", "dynamodb"])
    parser.add_argument("--client-runs", type=int, default=10,
                        help="fresh processes per client in part 1 (default 10; 0 skips it)")
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/store_claims.py"] + (argv if argv is not None else sys.argv[1:]))

    def out(line=""):
        print(line, flush=True)

    out("# Hand-out cost per store (%s, %s)" % (time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_note()))
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ec2spot-bench-store-"))
    os.chmod(workdir, 0o700)
    moto = MotoServer(log_path=workdir / "moto.log")
    proxy = None
    client_rows, store_rows = [], []
    try:
        moto.start()
        dynamo, dynamoquery, _state = pool_modules()
        dynamo.DynamoStore(dynamoquery.DynamoDBClient(light_params(moto.url)), TABLE, "setup",
                           str(workdir)).ensure_table()
        if args.client_runs:
            client_rows = bench_client(moto.url, args.client_runs, out)
        proxy = FaultProxyProcess(moto) if "dynamodb" in args.stores else None
        store_rows = bench_stores(args, workdir, moto, proxy, out)
    except BenchFailure as exc:
        out("FAILED: %s" % exc)
        return 1
    finally:
        if proxy is not None:
            proxy.stop()
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    out("")
    out("## For the README (%.0f s in all)" % (time.monotonic() - started))
    out("")
    out(markdown(client_rows, store_rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
