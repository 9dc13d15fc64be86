"""What only the SQS backend does (messages, visibility, the dead-letter queue, the start-up check), against
the moto server (SQS + DynamoDB on 127.0.0.1), in-process, with an injected clock.

moto keeps SQS visibility on the wall clock: where a test needs a lease to run out it sets the message's
visibility to 0 itself (what the timeout would do) and moves the injected clock past the lease."""

from __future__ import annotations

import json

import pytest
from clocks import FakeClock
from sqs_support import config_for

from spot_drain_worker.config import ConfigError
from spot_drain_worker.metrics import WorkerMetrics
from spot_drain_worker.sqsqueue import SqsQueue, visibility

pytestmark = pytest.mark.timeout(60)


class CountingClient:
    """A boto3 client that counts its calls by operation."""

    def __init__(self, client):
        self._client = client
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attribute(*args, **kwargs)
        return call


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_queue(aws, clock, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.proxy.url)

    def make(**changes) -> SqsQueue:
        config = config_for(aws, **changes)
        SqsQueue.check(config)
        queue = SqsQueue.from_config(config, clock=clock, metrics=WorkerMetrics())
        queue.sqs = CountingClient(queue.sqs)
        return queue
    return make


@pytest.fixture
def queue(make_queue):
    return make_queue()


def lease_runs_out(aws, job) -> None:
    """What the visibility timeout does when it ends (moto would take wall-clock seconds)."""
    aws.sqs.change_message_visibility(QueueUrl=aws.queue_url, ReceiptHandle=job.handle.receipt,
                                      VisibilityTimeout=0)


def messages(aws) -> int:
    attributes = aws.sqs.get_queue_attributes(QueueUrl=aws.queue_url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_visibility_rounds_up_and_caps():
    assert [visibility(s) for s in (0, 0.01, 1, 1.5, 10**9)] == [0, 1, 1, 2, 43200]


def test_check_creates_the_table_on_demand(queue, aws):
    table = aws.dynamodb.describe_table(TableName=aws.table)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_enqueue_claim_complete_deletes_the_message_after_the_status(queue, aws, clock):
    job, created = queue.enqueue({"n": 1})
    assert created and aws.item(job.id)["status"] == "queued" and messages(aws) == 1
    claimed = queue.claim("w1", 30)
    assert (claimed.id, claimed.status, claimed.attempts, claimed.payload) == (job.id, "processing", 1, {"n": 1})
    assert claimed.lease_expires_at == clock.now + 30
    clock.now += 10
    assert queue.extend(claimed, 30)
    assert queue.complete(claimed, {"ok": True})
    stored = queue.get(job.id)
    assert (stored.status, stored.result, stored.attempts) == ("done", {"ok": True}, 1)
    assert messages(aws) == 0
    assert queue.metrics.messages_received._value.get() == 1 and queue.metrics.heartbeats._value.get() == 1


def test_a_throttled_visibility_change_is_no_lost_lease_and_is_made_at_the_next_beat(queue, aws, clock):
    # Issue 17, item 2: only the fenced record write says whether the lease is held. Each beat makes one
    # attempt (botocore's backoff would hold the beat past the lease), so six throttled answers (what
    # outlasted botocore's retries in the issue) take six beats, every one of which renews the record.
    job_id = queue.enqueue({})[0].id
    claimed = queue.claim("w1", 30)
    aws.proxy.fail("ChangeMessageVisibility", "RequestThrottled", times=6)
    for _beat in range(6):
        clock.now += 10
        assert queue.extend(claimed, 30)
        assert float(aws.item(job_id)["lease_expires_at"]) == clock.now + 30
    assert aws.proxy.count("ChangeMessageVisibility", outcome="injected") == 6
    assert queue.extend(claimed, 30)  # the seventh beat's change goes through
    assert aws.proxy.records("ChangeMessageVisibility")[-1].status == 200
    assert queue.complete(claimed)


def test_a_dead_job_s_message_goes_to_the_dead_letter_queue(make_queue, aws):
    queue = make_queue(max_attempts=1)
    job_id = queue.enqueue({"poison": True})[0].id
    assert queue.fail(queue.claim("w", 10), "boom") == "dead"
    assert messages(aws) == 0 and aws.dlq_job_ids() == [job_id]
    queue.requeue(job_id)
    assert messages(aws) == 1  # a requeue sends a fresh message


def test_failed_job_waits_for_its_backoff(queue, aws, clock):
    job_id = queue.enqueue({})[0].id
    assert queue.fail(queue.claim("w", 10), "boom") == "failed"
    stored = queue.get(job_id)
    assert stored.run_after == clock.now + 2.0 and stored.status == "failed"
    assert queue.claim("w", 10) is None  # the message is invisible for the backoff (2 s)
    # A message that comes back early (visibility lost) is put back until the backoff ends.
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"job_id": job_id}))
    assert queue.claim("w", 10) is None
    clock.now += 2.0
    # The copy and the original both come back; the first claim wins, the second sees processing.
    aws.sqs.purge_queue(QueueUrl=aws.queue_url)
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"job_id": job_id}))
    assert queue.claim("w", 10).attempts == 2


def test_a_hand_back_is_counted(queue):
    queue.enqueue({})
    assert queue.release(queue.claim("w1", 300), "drain deadline")
    assert queue.metrics.handed_back._value.get() == 1


def test_hand_backs_never_let_sqs_dead_letter_the_job(make_queue, aws, clock):
    # maxReceiveCount is 10 on the fixture's queue: 15 interruptions in a row must not reach it.
    queue = make_queue()
    job_id = queue.enqueue({})[0].id
    for _interruption in range(15):
        job = None
        while job is None:  # a renewal (fresh copy of the message) takes one more receive
            job = queue.claim("unlucky", 300)
        assert queue.release(job, "interrupted")
    assert aws.dlq_job_ids(wait=0) == []
    last = queue.claim("lucky", 300)
    assert (last.id, last.attempts) == (job_id, 1)
    assert queue.complete(last)


def test_duplicate_message_of_a_done_job_is_dropped_unrun(queue, aws):
    job_id = queue.enqueue({})[0].id
    assert queue.complete(queue.claim("w", 10), "once")
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"job_id": job_id}))
    assert queue.claim("w", 10) is None
    assert messages(aws) == 0 and queue.get(job_id).result == "once"


def test_a_message_left_behind_by_a_dead_job_goes_to_the_dead_letter_queue(make_queue, aws):
    # E.g. the move to the dead-letter queue failed after the record said dead: the next receive finishes it.
    queue = make_queue(max_attempts=1)
    job_id = queue.enqueue({})[0].id
    aws.proxy.fail("SendMessage", "InternalError", status=500)
    with pytest.raises(queue.errors):
        queue.fail(queue.claim("w", 10), "boom")
    aws.proxy.clear_rules()
    assert queue.get(job_id).status == "dead" and aws.dlq_job_ids(wait=0) == []
    aws.sqs.purge_queue(QueueUrl=aws.queue_url)  # (instead of waiting out its visibility)
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"job_id": job_id}))
    assert queue.claim("w", 10) is None
    assert messages(aws) == 0 and aws.dlq_job_ids() == [job_id]


def test_idempotency_key_sends_one_message_and_its_record_is_no_job(queue, aws):
    queue.enqueue({"a": 1}, "key-1")
    queue.enqueue({"a": 1}, "key-1")
    queue.enqueue({"a": 1}, "key-2")
    assert messages(aws) == 2
    assert queue.get("idempotency-key#x") is None and queue.get("x" * 3000) is None


def test_failed_send_leaves_no_record(queue, aws):
    aws.proxy.fail("SendMessage", "InternalError", status=500)
    with pytest.raises(queue.errors):
        queue.enqueue({"lost": True}, "key-9")
    aws.proxy.clear_rules()
    assert aws.dynamodb.scan(TableName=aws.table)["Items"] == []
    job, created = queue.enqueue({"lost": True}, "key-9")  # the retry starts afresh
    assert created and messages(aws) == 1


def test_a_post_that_died_before_its_send_is_sent_by_the_retry(queue, aws):
    """A worker killed between the record and the message (simulated: the send never reaches SQS and the record
    is not taken back) leaves a job no worker would ever receive; the client's retry with the same
    Idempotency-Key sends its message, once."""
    def killed(*_args, **_kwargs):
        raise SystemExit("killed before the send")

    send = queue.sqs.send_message
    queue.sqs.send_message = killed
    queue._forget = lambda *_args: None  # pylint: disable=protected-access  # a dead worker cleans nothing up
    with pytest.raises(SystemExit):
        queue.enqueue({"n": 7}, "key-7")
    queue.sqs.send_message = send
    jobs = [item for item in aws.dynamodb.scan(TableName=aws.table)["Items"] if item["kind"]["S"] == "job"]
    assert messages(aws) == 0 and [item["status"]["S"] for item in jobs] == ["queued"]
    job, created = queue.enqueue({"n": 7}, "key-7")
    assert not created and messages(aws) == 1
    again, _created = queue.enqueue({"n": 7}, "key-7")  # sent now: a further retry sends nothing more
    assert again.id == job.id and messages(aws) == 1
    claimed = queue.claim("w1", 30)
    assert claimed is not None and claimed.id == job.id


def test_depth_is_cached(queue, aws):
    queue.enqueue({})
    now = [0.0]
    queue.monotonic = lambda: now[0]
    assert queue.depth() == {"visible": 1, "in_flight": 0, "delayed": 0}
    for _scrape in range(5):
        queue.depth()
    assert queue.sqs.calls["get_queue_attributes"] == 1
    now[0] += 5.0
    queue.depth()
    assert queue.sqs.calls["get_queue_attributes"] == 2


def test_check_names_what_is_wrong(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.proxy.url)
    missing = config_for(aws, queue_url=aws.queue_url.rsplit("/", 1)[0] + "/nope")
    with pytest.raises(ConfigError, match=r"QUEUE_URL .*/nope: no such queue"):
        SqsQueue.check(missing)
    aws.dynamodb.create_table(TableName=aws.table + "-other", BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                    {"AttributeName": "sk", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                         {"AttributeName": "sk", "KeyType": "RANGE"}])
    with pytest.raises(ConfigError, match=r"JOBS_TABLE .*-other: the table has the key \(pk HASH S, sk RANGE S\)"):
        SqsQueue.check(config_for(aws, jobs_table=aws.table + "-other"))
    with pytest.raises(ConfigError, match=r"JOBS_TABLE .*: no such table, and JOBS_TABLE_CREATE=false"):
        SqsQueue.check(config_for(aws, jobs_table_create=False))
    aws.proxy.fail("GetQueueAttributes", "AccessDenied", status=403,
                   message="User: arn:aws:sts::123456789012:assumed-role/worker is not authorized")
    with pytest.raises(ConfigError, match=r"QUEUE_URL .*: access denied \(AccessDenied"):
        SqsQueue.check(config_for(aws))
    aws.proxy.clear_rules()
    aws.proxy.fail("DescribeTable", "AccessDeniedException")
    with pytest.raises(ConfigError, match=r"JOBS_TABLE .*: access denied \(AccessDeniedException"):
        SqsQueue.check(config_for(aws))


def test_boto3_reads_the_per_service_endpoint_variables(aws, monkeypatch):
    # The worker relies on botocore for AWS_ENDPOINT_URL_SQS / _DYNAMODB (measured: botocore 1.44.5).
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", aws.moto.url + "/")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", aws.proxy.url)
    sqs, dynamodb = SqsQueue.clients(config_for(aws))
    assert sqs.meta.endpoint_url.rstrip("/") == aws.moto.url
    assert dynamodb.meta.endpoint_url == aws.proxy.url


def test_what_moto_does_that_these_tests_rely_on(aws):
    """moto 5.2.5, measured: ChangeMessageVisibility (0 makes a message receivable at once), the redrive
    policy (moved to the DLQ on the receive after maxReceiveCount) and long polling work. Its gap: a stale
    receipt handle (from an earlier receive) still changes the visibility, so a heartbeat alone cannot
    tell a lost lease; the worker's heartbeat is fenced in the table first for that reason (and on AWS,
    where an old handle may also be accepted)."""
    sqs, url = aws.sqs, aws.queue_url
    sqs.send_message(QueueUrl=url, MessageBody="probe")
    first = sqs.receive_message(QueueUrl=url, VisibilityTimeout=300)["Messages"][0]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    second = sqs.receive_message(QueueUrl=url, VisibilityTimeout=300, AttributeNames=["All"])["Messages"][0]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    for _receive in range(8):  # receives 3..10 (maxReceiveCount is 10)
        message = sqs.receive_message(QueueUrl=url, VisibilityTimeout=300)["Messages"][0]
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages") is None  # the 11th: moved
    dead = sqs.receive_message(QueueUrl=aws.dlq_url, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in dead] == ["probe"]
