"""The queue for a fleet: an SQS queue is the line, a DynamoDB table is the record.

A message carries only a job id; the table item of that id holds the payload, the status, the attempts,
the result and who runs it, so `GET /jobs/<id>` answers the same on every worker (consistent reads).

- The lease is the message's visibility timeout. A claim receives one message (long polling), then moves
  the item to `processing` with one conditional write that also increments `lease`, the fencing number:
  every later write of that attempt (heartbeat, done, failed, hand-back) is conditioned on it, so a worker
  whose lease was lost cannot record anything over a newer attempt.
- The heartbeat extends both: the item's `lease_expires_at` (fenced) and the message's visibility. Only the
  fenced write decides whether the lease is held: a receiver that finds the record's lease running leaves
  the job alone, so a visibility change that fails (throttled) is logged and tried again at the next beat.
  The heartbeat's calls are not retried by botocore (its backoff would hold the beat past the lease): the
  beat, three times per lease, is their retry.
- Done: the item is written first, then the message is deleted. A crash in between leaves a message whose
  job is `done`; the next receive deletes it without running the job.
- Failed: the item goes to `failed` with the backoff, and the message's visibility becomes the backoff.
  After MAX_ATTEMPTS the item is `dead` and the message goes to the queue's dead-letter queue (sent there
  and deleted here) when the queue has a redrive policy, or is deleted.
- Hand-back (drain deadline, or a job received after the drain began): the attempt is given back in the
  item, and the message's visibility is set to 0, so another worker receives it at once. SQS counts every
  receive, hand-backs included: a message near the redrive policy's maxReceiveCount is replaced by a fresh
  copy instead, so SQS never dead-letters a job that this worker would not count as failed.
- A lease that ran out (worker killed): SQS makes the message visible again; the next worker sees the item
  still `processing` past its `lease_expires_at`, counts the lost attempt, and runs it (or buries it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from typing import Any, Callable

from .claimrule import BURY, DROP, EXPIRE, HELD, NOT_YET, RENEW, RUN, ClaimDecision, Seen, after_failure, decide_claim
from .errors import ConfigError, PayloadTooLarge
from .queues import SQS_MAX_PAYLOAD_BYTES, Job, JobQueueBase

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
except ImportError:  # the SQLite default does not need boto3; clients() says how to get it
    boto3 = None

    class BotoCoreError(Exception):
        """Stand-in while boto3 is missing (nothing raises it)."""

    class ClientError(Exception):
        """Stand-in while boto3 is missing (nothing raises it)."""

    NoCredentialsError = NoRegionError = BotoCoreError

log = logging.getLogger("spot_drain_worker.sqs")

# What boto3 raises when AWS (or the way to it) fails: the queue is unavailable (HTTP 503, runner retries).
AWS_ERRORS = (BotoCoreError, ClientError)

KEY_ITEM_PREFIX = "idempotency-key#"
MAX_VISIBILITY_SECONDS = 43200  # SQS: 12 hours
MAX_WAIT_SECONDS = 20  # SQS long polling
DEPTH_CACHE_SECONDS = 5.0
TABLE_ACTIVE_TIMEOUT_SECONDS = 120.0
# botocore's "standard" retry mode: exponential backoff with full jitter, capped at 20 s, for
# throttling and transient errors.
CLIENT_MAX_ATTEMPTS = 5
# The heartbeat's clients: one attempt, answered within a beat (see the module's docstring).
HEARTBEAT_MAX_ATTEMPTS = 1
# A job whose backoff ends within this much is run: the workers' clocks may differ a little.
CLOCK_SLACK_SECONDS = 0.5
# A message is replaced by a fresh copy at its receive maxReceiveCount - 1 (claimrule.RENEW): below 3 even a
# first receive would be replaced, every receive would renew it, and no job would ever start.
MIN_MAX_RECEIVE_COUNT = 3
# Every job attribute the code names, spelled through placeholders (several are reserved words).
_NAMES = {f"#{name}": name for name in (
    "id", "kind", "payload", "status", "attempts", "lease", "last_error", "result", "idempotency_key",
    "owner", "lease_expires_at", "created_at", "updated_at", "started_at", "finished_at", "run_after",
    "job_id")}
_FENCE = "#lease = :lease AND #status = :processing"


def visibility(seconds: float) -> int:
    """SQS takes whole seconds, 0 to 12 hours; round up so a lease or backoff is never shortened."""
    return max(0, min(MAX_VISIBILITY_SECONDS, math.ceil(seconds)))


def stored_payload(payload: Any) -> str:
    """The payload as the record holds it: compact JSON, non-ASCII kept as UTF-8 (escaped it would take up
    to 3 times the room of one item), escaped only when it cannot be UTF-8 (a lone surrogate)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(payload, separators=(",", ":"))
    return text


def check_payload_size(text: str) -> None:
    """PayloadTooLarge when the stored payload leaves its record no room in one DynamoDB item. The request
    body was within MAX_PAYLOAD_BYTES, but its stored form can be longer (1e5 is stored as 100000.0)."""
    size = len(text.encode())
    if size > SQS_MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"the job's payload takes {size} bytes as stored (compact JSON), more than the "
                              f"{SQS_MAX_PAYLOAD_BYTES} that one DynamoDB item (400 KB) leaves it beside the job's "
                              f"record: send a smaller payload")


def heartbeat_timeout(lease_seconds: float) -> float:
    """How long one heartbeat call may take: a beat (a third of the lease), at least 1 s, at most 10 s."""
    return min(10.0, max(1.0, lease_seconds / 3))


def _attr(value: Any) -> dict:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": repr(value) if isinstance(value, float) else str(value)}
    return {"S": str(value)}


def _plain(attribute: dict) -> Any:
    kind, value = next(iter(attribute.items()))
    if kind == "N":
        number = float(value)
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    if kind == "NULL":
        return None
    return value


def _values(**values) -> dict:
    return {f":{name}": _attr(value) for name, value in values.items()}


def _names(*expressions: str) -> dict:
    """The placeholders the expressions use, and no other (DynamoDB refuses unused ones)."""
    used = set(re.findall(r"#\w+", " ".join(expressions)))
    return {placeholder: name for placeholder, name in _NAMES.items() if placeholder in used}


@dataclasses.dataclass(frozen=True)
class SqsHandle:
    receipt: str
    lease: int  # the fencing number of this attempt
    receive_count: int
    body: str


def job_from_item(item: dict, handle: SqsHandle | None = None) -> Job:
    data = {key: _plain(value) for key, value in item.items()}
    result = data.get("result")
    return Job(
        id=data["id"], payload=json.loads(data["payload"]), status=data["status"],
        attempts=int(data.get("attempts", 0)), last_error=data.get("last_error"),
        result=None if result is None else json.loads(result),
        idempotency_key=data.get("idempotency_key"),
        lease_token=None if handle is None else str(handle.lease),
        lease_expires_at=data.get("lease_expires_at"), created_at=data["created_at"],
        updated_at=data["updated_at"], started_at=data.get("started_at"),
        finished_at=data.get("finished_at"), run_after=data.get("run_after", data["created_at"]),
        handle=handle,
    )


def parse_queue_arn(arn: str) -> tuple[str, str, str]:
    """arn:aws:sqs:REGION:ACCOUNT:NAME -> (region, account, name)."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError(f"not an SQS queue ARN: {arn!r}")
    return parts[3], parts[4], parts[5]


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return error.get("QueryErrorCode") or error.get("Code") or "Unknown"
    return type(exc).__name__


def _is(exc: Exception, *codes: str) -> bool:
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    return bool({error.get("Code"), error.get("QueryErrorCode")} & set(codes))


class SqsQueue(JobQueueBase):
    claim_waits = True
    errors = AWS_ERRORS

    def __init__(self, *, queue_url: str, table: str, sqs, dynamodb, max_attempts: int,
                 retry_backoff_seconds: float, wait_seconds: int = 5, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, metrics=None, heartbeat_clients=None):
        super().__init__()
        self.queue_url = queue_url
        self.table = table
        self.sqs = sqs
        self.dynamodb = dynamodb
        # (sqs, dynamodb) for the heartbeat's two calls; the same clients when none are given.
        self.heartbeat_sqs, self.heartbeat_dynamodb = heartbeat_clients or (sqs, dynamodb)
        self.max_attempts = max_attempts
        self.retry_backoff_seconds = retry_backoff_seconds
        self.wait_seconds = wait_seconds
        self.clock = clock
        self.monotonic = monotonic
        self.metrics = metrics
        self._redrive: tuple[str, int] | None | bool = False  # False: not read yet
        self._redrive_lock = threading.Lock()
        self._depth_lock = threading.Lock()
        self._depth: dict | None = None
        self._depth_at = -math.inf

    # ---- construction and the start-up check ----

    @staticmethod
    def clients(config, *, max_attempts: int = CLIENT_MAX_ATTEMPTS, timeout_seconds: float | None = None):
        """(sqs, dynamodb) clients; `timeout_seconds` bounds connecting and each answer (default: the long
        poll's wait plus 15 s)."""
        if boto3 is None:
            raise ConfigError("QUEUE_URL needs boto3, which is not installed: "
                              "pip install 'spot-drain-worker[sqs]'")
        # Endpoints (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL_DYNAMODB) and credentials
        # (the instance profile) are botocore's own business; the region is passed because botocore
        # reads only AWS_DEFAULT_REGION, not AWS_REGION.
        read_timeout = config.sqs_wait_seconds + 15 if timeout_seconds is None else timeout_seconds
        client_config = BotoConfig(
            # total_max_attempts counts the first attempt; botocore's max_attempts would count retries only.
            region_name=config.aws_region, retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=min(5, read_timeout), read_timeout=read_timeout,
            max_pool_connections=config.server_threads + 4)
        session = boto3.session.Session()
        return (session.client("sqs", config=client_config),
                session.client("dynamodb", config=client_config))

    @classmethod
    def from_config(cls, config, *, clock=time.time, metrics=None, max_attempts: int = CLIENT_MAX_ATTEMPTS,
                    heartbeat: bool = True):
        """The queue a worker runs on; `heartbeat=False` (the start-up check) leaves out the heartbeat's clients."""
        sqs, dynamodb = cls.clients(config, max_attempts=max_attempts)
        heartbeat_clients = None
        if heartbeat:
            heartbeat_clients = cls.clients(config, max_attempts=HEARTBEAT_MAX_ATTEMPTS,
                                            timeout_seconds=heartbeat_timeout(config.lease_seconds))
        return cls(queue_url=config.queue_url, table=config.jobs_table, sqs=sqs, dynamodb=dynamodb,
                   max_attempts=config.max_attempts, retry_backoff_seconds=config.retry_backoff_seconds,
                   wait_seconds=config.sqs_wait_seconds, clock=clock, metrics=metrics,
                   heartbeat_clients=heartbeat_clients)

    @classmethod
    def check(cls, config, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Start-up check: the queue (and its dead-letter queue) exists and answers, the table exists
        (or is created) with the worker's key. Raises ConfigError with one line naming the culprit."""
        # Two attempts only: an unreachable endpoint should stop the start soon, not after a minute.
        queue = cls.from_config(config, max_attempts=2, heartbeat=False)
        queue.verify(create_table=config.jobs_table_create, sleep=sleep)

    def _explain(self, what: str, exc: Exception) -> ConfigError:
        code = _code(exc)
        if isinstance(exc, NoCredentialsError):
            return ConfigError(f"{what}: no AWS credentials found (on EC2 they come from the instance profile; "
                               f"see the README for the IAM policy)")
        if isinstance(exc, NoRegionError):
            return ConfigError(f"{what}: no AWS region: set AWS_REGION or AWS_DEFAULT_REGION")
        if "AccessDenied" in code or code in ("UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId",
                                              "UnrecognizedClientException", "InvalidSignatureException"):
            detail = exc.response["Error"].get("Message", "") if isinstance(exc, ClientError) else str(exc)
            return ConfigError(f"{what}: access denied ({code}: {detail}); the instance profile needs the "
                               f"policy in the worker's README")
        message = str(exc)
        if isinstance(exc, ClientError):
            message = f"{code}: {exc.response['Error'].get('Message', '')}"
        return ConfigError(f"{what}: {message}")

    def verify(self, *, create_table: bool, sleep: Callable[[float], None] = time.sleep) -> None:
        what = f"QUEUE_URL {self.queue_url}"
        try:
            attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                                       AttributeNames=["All"])["Attributes"]
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the queue
            if _is(exc, "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"):
                raise ConfigError(f"{what}: no such queue (QueueDoesNotExist): create it or fix the URL") from None
            raise self._explain(what, exc) from None
        if attributes.get("FifoQueue") == "true":
            raise ConfigError(f"{what}: a FIFO queue; the worker needs a standard queue")
        try:
            self._read_redrive(attributes)
        except Exception as exc:  # noqa: BLE001
            if _is(exc, "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"):
                raise ConfigError(f"{what}: its redrive policy names a dead-letter queue that does not exist "
                                  f"({attributes.get('RedrivePolicy')})") from None
            raise self._explain(f"{what} (its dead-letter queue)", exc) from None
        if self._redrive and self._redrive[1] < MIN_MAX_RECEIVE_COUNT:
            count = self._redrive[1]
            raise ConfigError(
                f"{what}: its redrive policy's maxReceiveCount is {count}; the worker needs at least "
                f"{MIN_MAX_RECEIVE_COUNT} (10 or more, above MAX_ATTEMPTS, is best): it replaces a message by a fresh "
                f"copy at receive maxReceiveCount - 1 so that SQS never dead-letters a job it still counts, and "
                f"with {count} even a first receive would be replaced and no job would ever start")
        self._verify_table(create_table, sleep)
        log.info("queue %s, table %s, dead-letter queue %s", self.queue_url, self.table,
                 self._redrive[0] if self._redrive else "none (dead jobs' messages are deleted)")

    def _verify_table(self, create: bool, sleep: Callable[[float], None]) -> None:
        what = f"JOBS_TABLE {self.table}"
        deadline = self.monotonic() + TABLE_ACTIVE_TIMEOUT_SECONDS
        while True:
            try:
                table = self.dynamodb.describe_table(TableName=self.table)["Table"]
            except Exception as exc:  # noqa: BLE001
                if not _is(exc, "ResourceNotFoundException"):
                    raise self._explain(what, exc) from None
                if not create:
                    raise ConfigError(f"{what}: no such table, and JOBS_TABLE_CREATE=false: create it (partition "
                                      f"key id, type S, no sort key) or allow the worker to") from None
                self._create_table(what)
                continue
            keys = [(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])]
            types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
            if keys != [("id", "HASH")] or types.get("id") != "S":
                shape = ", ".join(f"{name} {kind} {types.get(name, '?')}" for name, kind in keys)
                raise ConfigError(f"{what}: the table has the key ({shape}), not the worker's (partition key id "
                                  f"of type S, no sort key): name another table")
            if table.get("TableStatus") in ("ACTIVE", "UPDATING"):
                return
            if self.monotonic() > deadline:
                raise ConfigError(f"{what}: still {table.get('TableStatus')} after "
                                  f"{TABLE_ACTIVE_TIMEOUT_SECONDS:g}s")
            sleep(1.0)

    def _create_table(self, what: str) -> None:
        try:
            self.dynamodb.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
            log.warning("created the jobs table %s (on-demand billing)", self.table)
        except Exception as exc:  # noqa: BLE001
            if _is(exc, "ResourceInUseException"):  # another worker created it a moment ago
                return
            raise self._explain(f"{what} (creating it)", exc) from None

    def _read_redrive(self, attributes: dict | None = None) -> tuple[str, int] | None:
        """(dead-letter queue URL, maxReceiveCount) from the queue's redrive policy, or None."""
        with self._redrive_lock:
            if self._redrive is not False:
                return self._redrive
            if attributes is None:
                attributes = self.sqs.get_queue_attributes(
                    QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
            policy = attributes.get("RedrivePolicy")
            if not policy:
                self._redrive = None
                return None
            document = json.loads(policy)
            _region, account, name = parse_queue_arn(document["deadLetterTargetArn"])
            url = self.sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
            self._redrive = (url, int(document.get("maxReceiveCount", 0)))
            return self._redrive

    # ---- the record ----

    def _get_item(self, item_id: str) -> dict | None:
        return self.dynamodb.get_item(TableName=self.table, Key={"id": {"S": item_id}},
                                      ConsistentRead=True).get("Item")

    def _update(self, job_id: str, update: str, condition: str, values: dict,
                return_values: str = "NONE", client=None) -> dict | None:
        """One conditional UpdateItem (with `client`, else the queue's DynamoDB client); None when the
        condition failed."""
        try:
            answer = (client or self.dynamodb).update_item(
                TableName=self.table, Key={"id": {"S": job_id}}, UpdateExpression=update,
                ConditionExpression=condition, ExpressionAttributeNames=_names(update, condition),
                ExpressionAttributeValues=values, ReturnValues=return_values)
        except ClientError as exc:
            if _is(exc, "ConditionalCheckFailedException"):
                return None
            raise
        return answer.get("Attributes", {})

    def get(self, job_id: str) -> Job | None:
        # A key DynamoDB would refuse (empty, over 2048 bytes) names no job: 404, not a 503.
        if not job_id or len(job_id.encode()) > 1024 or job_id.startswith(KEY_ITEM_PREFIX):
            return None
        item = self._get_item(job_id)
        if item is None or item.get("kind", {}).get("S") != "job":
            return None
        return job_from_item(item)

    def enqueue(self, payload: Any, idempotency_key: str | None = None) -> tuple[Job, bool]:
        stored = stored_payload(payload)
        check_payload_size(stored)  # before anything is written: a 413, never a 503 the client would retry
        now = self.clock()
        job_id = uuid.uuid4().hex
        item = {"id": {"S": job_id}, "kind": {"S": "job"},
                "payload": {"S": stored}, "status": {"S": "queued"},
                "attempts": {"N": "0"}, "lease": {"N": "0"}, "created_at": _attr(now),
                "updated_at": _attr(now), "run_after": _attr(now)}
        key_id = None
        if idempotency_key is None:
            self.dynamodb.put_item(TableName=self.table, Item=item,
                                   ConditionExpression="attribute_not_exists(#id)",
                                   ExpressionAttributeNames={"#id": "id"})
        else:
            item["idempotency_key"] = {"S": idempotency_key}
            # Until its message is sent: a worker that dies between the record and the send leaves this mark, and
            # the client's retry with the same key sends the message then (below), instead of getting back a job
            # that no message will ever bring to a worker.
            item["unsent"] = {"BOOL": True}
            key_id = KEY_ITEM_PREFIX + hashlib.sha256(idempotency_key.encode()).hexdigest()
            key_item = {"id": {"S": key_id}, "kind": {"S": "idempotency-key"}, "job_id": {"S": job_id}}
            puts = [{"Put": {"TableName": self.table, "Item": it, "ConditionExpression": "attribute_not_exists(#id)",
                             "ExpressionAttributeNames": {"#id": "id"}}} for it in (item, key_item)]
            try:
                self.dynamodb.transact_write_items(TransactItems=puts)
            except ClientError as exc:
                if not _is(exc, "TransactionCanceledException"):
                    raise
                known = self._get_item(key_id)
                if known is None:
                    raise
                existing = self._get_item(known["job_id"]["S"])
                if existing is None:
                    raise
                if existing.get("unsent", {}).get("BOOL"):
                    self._send(existing["id"]["S"])  # its first POST died before the send (see above)
                return job_from_item(existing), False
        try:
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps({"job_id": job_id}))
        except Exception:
            # No message, no job: take the record back so a retry (with the same key) starts afresh.
            self._forget(job_id, key_id)
            raise
        if key_id is not None:
            self._mark_sent(job_id)
        return job_from_item(item), True

    def _send(self, job_id: str) -> None:
        """The message of a recorded job whose first send may never have happened. Should it have happened after
        all, the job has two messages: a duplicate, which the fenced claim and the done check already handle."""
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps({"job_id": job_id}))
        self._mark_sent(job_id)

    def _mark_sent(self, job_id: str) -> None:
        self.dynamodb.update_item(TableName=self.table, Key={"id": {"S": job_id}}, UpdateExpression="REMOVE unsent",
                                  ConditionExpression="attribute_exists(#id)", ExpressionAttributeNames={"#id": "id"})

    def _forget(self, job_id: str, key_id: str | None) -> None:
        try:
            self.dynamodb.delete_item(TableName=self.table, Key={"id": {"S": job_id}},
                                      ConditionExpression="#status = :queued AND #lease = :zero",
                                      ExpressionAttributeNames={"#status": "status", "#lease": "lease"},
                                      ExpressionAttributeValues=_values(queued="queued", zero=0))
            if key_id is not None:
                self.dynamodb.delete_item(TableName=self.table, Key={"id": {"S": key_id}})
        except Exception as exc:  # noqa: BLE001 - the send's error is the one to report
            log.error("job %s was recorded but its message not sent, and removing the record failed: %s",
                      job_id, exc)

    # ---- the line ----

    def _count(self, counter: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, counter).inc()

    def _set_visibility(self, receipt: str, seconds: float, client=None) -> bool:
        try:
            (client or self.sqs).change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=receipt,
                                                           VisibilityTimeout=visibility(seconds))
            return True
        except (BotoCoreError, ClientError) as exc:
            log.warning("changing a message's visibility failed: %s", exc)
            return False

    def _delete(self, receipt: str) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except Exception as exc:  # noqa: BLE001 - only logged: the status is what counts
            # The message comes back; its job's status (done or dead) makes the next receive delete it.
            log.warning("deleting a message failed (it will be received and dropped again): %s", exc)

    def _renew(self, handle: SqsHandle) -> None:
        """Replace the message by a fresh copy (receive count 0), then delete the old one."""
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=handle.body)
        self._delete(handle.receipt)

    def _max_receive_count(self) -> int | None:
        redrive = self._read_redrive()
        return redrive[1] if redrive else None

    def _bury(self, handle: SqsHandle, job_id: str) -> None:
        """A dead job's message: to the dead-letter queue when the queue has one, else deleted."""
        redrive = self._read_redrive()
        if redrive:
            self.sqs.send_message(QueueUrl=redrive[0], MessageBody=handle.body)
            log.warning("job %s is dead; its message is in the dead-letter queue %s", job_id, redrive[0])
        self._delete(handle.receipt)

    def _receive(self, lease_seconds: float) -> tuple[SqsHandle, str] | None:
        """One message and the job id it names; None when none came (or it names no job: left alone, it comes
        back after the lease, and the redrive policy ends it)."""
        answer = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=self.wait_seconds,
            VisibilityTimeout=visibility(lease_seconds), AttributeNames=["ApproximateReceiveCount"])
        messages = answer.get("Messages") or []
        if not messages:
            return None
        self._count("messages_received")
        message = messages[0]
        receipt, body = message["ReceiptHandle"], message.get("Body", "")
        receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            job_id = json.loads(body)["job_id"]
            if not isinstance(job_id, str):
                raise TypeError(job_id)
        except (ValueError, KeyError, TypeError):
            log.error("a message in %s is not a job (%r); left to the redrive policy", self.queue_url, body[:100])
            return None
        return SqsHandle(receipt, 0, receive_count, body), job_id

    def claim(self, owner: str, lease_seconds: float) -> Job | None:
        """Receive one message; the claim rule (claimrule.decide_claim) says what to do with its job."""
        received = self._receive(lease_seconds)
        if received is None:
            return None
        handle, job_id = received
        item = self._get_item(job_id)
        if item is None or item.get("kind", {}).get("S") != "job":
            log.error("message for unknown job %s deleted", job_id)
            self._delete(handle.receipt)
            return None
        seen = job_from_item(item)
        now = self.clock()
        handle = dataclasses.replace(handle, lease=int(_plain(item.get("lease", {"N": "0"}))))
        decision = decide_claim(
            Seen(status=seen.status, attempts=seen.attempts, run_after=seen.run_after,
                 lease_expires_at=seen.lease_expires_at, owner=_plain(item["owner"]) if "owner" in item else None),
            now=now, max_attempts=self.max_attempts, receive_count=handle.receive_count,
            max_receive_count=self._max_receive_count(), slack=CLOCK_SLACK_SECONDS)
        if decision.action == RUN:
            return self._take(job_id, seen, handle, decision, owner, now, now + lease_seconds)
        self._leave(job_id, seen.status, handle, decision, now, lease_seconds)
        return None

    def _leave(self, job_id: str, status: str, handle: SqsHandle, decision: ClaimDecision, now: float,
               lease_seconds: float) -> None:
        """Every outcome of the claim rule but RUN: the job does not run here now."""
        wait = max(0.0, (decision.retry_at or now) - now)
        if decision.action == DROP:
            log.info("job %s is already done: duplicate message dropped", job_id)
            self._delete(handle.receipt)
        elif decision.action == BURY:
            self._bury(handle, job_id)  # recorded dead, but moving its message failed (or a duplicate)
        elif decision.action == HELD:
            # Another worker holds it (SQS delivers at least once): look again when its lease would end.
            self._set_visibility(handle.receipt, max(lease_seconds, wait))
        elif decision.action == NOT_YET:
            self._set_visibility(handle.receipt, wait)  # not before its backoff
        elif decision.action == RENEW:
            self._renew(handle)  # one more receive and SQS would dead-letter it whatever this worker counts
        elif decision.action == EXPIRE:
            if self._update(job_id, "SET #status = :dead, #last_error = :error, #finished_at = :now, "
                            "#updated_at = :now REMOVE #owner, #lease_expires_at",
                            "#lease = :lease AND #status = :seen",
                            _values(dead="dead", error=decision.error, now=now, lease=handle.lease,
                                    seen=status)) is not None:
                self._bury(handle, job_id)

    def _take(self, job_id: str, seen: Job, handle: SqsHandle, decision: ClaimDecision, owner: str,
              now: float, expires: float) -> Job | None:
        """RUN: the record becomes this attempt's, fenced on the lease number, the status and the attempts the
        claim saw."""
        update = ("SET #status = :processing, #attempts = :attempt, #lease = #lease + :one, "
                  "#owner = :owner, #lease_expires_at = :expires, #started_at = :now, #updated_at = :now")
        values = _values(lease=handle.lease, seen=seen.status, attempts=seen.attempts, owner=owner,
                         expires=expires, now=now, one=1, attempt=decision.attempt, processing="processing")
        if decision.error is not None:  # the holder's lease ran out (killed, hung): that attempt counted
            update += ", #last_error = :error"
            values.update(_values(error=decision.error))
        claimed = self._update(job_id, update, "#lease = :lease AND #status = :seen AND #attempts = :attempts",
                               values, "ALL_NEW")
        if claimed is None:
            return None  # changed meanwhile (another copy of the message): it comes back after the lease
        return job_from_item(claimed, dataclasses.replace(handle, lease=handle.lease + 1))

    def extend(self, job: Job, lease_seconds: float) -> bool:
        """False only when the fenced record write fails: then another attempt holds the job. A visibility
        change that fails is logged and made again at the next beat (the record's lease, renewed here, keeps
        every other receiver off the job meanwhile)."""
        handle: SqsHandle = job.handle
        now = self.clock()
        if self._update(job.id, "SET #lease_expires_at = :expires, #updated_at = :now", _FENCE,
                        _values(expires=now + lease_seconds, now=now, lease=handle.lease,
                                processing="processing"), client=self.heartbeat_dynamodb) is None:
            return False
        self._count("heartbeats")
        if not self._set_visibility(handle.receipt, lease_seconds, client=self.heartbeat_sqs):
            log.warning("job %s: its record's lease is renewed, its message's visibility not (tried again at the "
                        "next heartbeat)", job.id)
        return True

    def complete(self, job: Job, result: Any = None) -> bool:
        handle: SqsHandle = job.handle
        now = self.clock()
        written = self._update(
            job.id, "SET #status = :done, #result = :result, #finished_at = :now, #updated_at = :now "
                    "REMOVE #last_error, #owner, #lease_expires_at", _FENCE,
            _values(done="done", result=json.dumps(result, default=str), now=now, lease=handle.lease,
                    processing="processing"))
        if written is None:
            return False
        self._delete(handle.receipt)  # only now: a crash before this leaves a message that is dropped
        return True

    def fail(self, job: Job, error: str) -> str | None:
        handle: SqsHandle = job.handle
        now = self.clock()
        outcome = after_failure(job.attempts, max_attempts=self.max_attempts,
                                backoff_base=self.retry_backoff_seconds)
        dead = outcome.status == "dead"
        update = ("SET #status = :status, #last_error = :error, #run_after = :after, #updated_at = :now"
                  + (", #finished_at = :now" if dead else "") + " REMOVE #owner, #lease_expires_at")
        if self._update(job.id, update, _FENCE,
                        _values(status=outcome.status, error=error[:2000], after=now + outcome.delay, now=now,
                                lease=handle.lease, processing="processing")) is None:
            return None
        if dead:
            self._bury(handle, job.id)
        else:
            self._set_visibility(handle.receipt, outcome.delay)
        return outcome.status

    def release(self, job: Job, reason: str) -> bool:
        handle: SqsHandle = job.handle
        now = self.clock()
        if self._update(job.id, "SET #status = :queued, #attempts = #attempts - :one, #last_error = :reason, "
                                "#run_after = :now, #updated_at = :now REMOVE #owner, #lease_expires_at",
                        _FENCE + " AND #attempts > :zero",
                        _values(queued="queued", one=1, zero=0, reason=reason, now=now, lease=handle.lease,
                                processing="processing")) is None:
            return False
        max_receive_count = self._max_receive_count()
        if max_receive_count and handle.receive_count >= max_receive_count - 1:
            self._renew(handle)
        else:
            self._set_visibility(handle.receipt, 0)  # another worker receives it at once
        self._count("handed_back")
        return True

    def requeue(self, job_id: str) -> Job | None:
        if self.get(job_id) is None:
            return None
        now = self.clock()
        old = self._update(job_id, "SET #status = :queued, #attempts = :zero, #run_after = :now, "
                                   "#updated_at = :now REMOVE #finished_at",
                           "#status IN (:dead, :failed)",
                           _values(queued="queued", zero=0, now=now, dead="dead", failed="failed"), "ALL_OLD")
        if old is None:
            return None
        try:
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps({"job_id": job_id}))
        except Exception:
            # Put the record back as it was, so the requeue can be asked again.
            self.dynamodb.put_item(TableName=self.table, Item=old)
            raise
        # The record as this write left it (a worker may have claimed it already by the time it is read).
        requeued = dict(old, status={"S": "queued"}, attempts={"N": "0"}, run_after=_attr(now), updated_at=_attr(now))
        requeued.pop("finished_at", None)
        return job_from_item(requeued)

    def counts(self) -> dict:
        # Counting the table by status would be a scan per scrape; the line's depth is in depth().
        return {}

    def depth(self) -> dict | None:
        """ApproximateNumberOfMessages{,NotVisible,Delayed}, read at most every DEPTH_CACHE_SECONDS
        (scrapes in between get the cached value; a failed read keeps the last one)."""
        with self._depth_lock:
            if self.monotonic() - self._depth_at < DEPTH_CACHE_SECONDS:
                return self._depth
            self._depth_at = self.monotonic()
            try:
                attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed"])["Attributes"]
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail for a gauge
                log.warning("reading the queue's depth failed: %s", exc)
                return self._depth
            self._depth = {"visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
                           "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                           "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0))}
            return self._depth
