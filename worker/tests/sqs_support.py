"""The SQS backend's test fixture: a queue with a dead-letter queue and a table name, unique per test, on
the session's moto server; the workers reach it through a fault proxy."""

from __future__ import annotations

import dataclasses
import json
import uuid

import boto3

from spot_drain_worker.config import Config
from tests.support.moto import FAKE_CREDENTIALS, REGION


def config_for(aws, **changes) -> Config:
    """An in-process SqsQueue's configuration on the test's queue and table (no long polling)."""
    values = dict(queue_url=aws.queue_url, jobs_table=aws.table, aws_region=REGION, sqs_wait_seconds=0,
                  max_attempts=3, retry_backoff_seconds=2.0)
    return dataclasses.replace(Config(), **dict(values, **changes))


class AwsFixture:
    def __init__(self, moto, proxy, max_receive_count: int = 10):
        self.moto, self.proxy = moto, proxy
        suffix = uuid.uuid4().hex[:10]
        self.sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto.url)
        self.dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto.url)
        self.dlq_url = self.sqs.create_queue(QueueName=f"dlq-{suffix}")["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=self.dlq_url,
                                                AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.queue_url = self.sqs.create_queue(QueueName=f"jobs-{suffix}", Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": str(max_receive_count)})})["QueueUrl"]
        self.table = f"jobs-{suffix}"

    def worker_env(self, through_proxy: bool = True) -> dict:
        """What a worker on this queue needs: the URL (moto's, as AWS would give it), the table, the region
        (AWS_REGION only: the worker passes it on), and the endpoint through the standard variable."""
        endpoint = self.proxy.url if through_proxy else self.moto.url
        return dict(FAKE_CREDENTIALS, QUEUE_URL=self.queue_url, JOBS_TABLE=self.table, AWS_REGION=REGION,
                    AWS_DEFAULT_REGION="", AWS_ENDPOINT_URL=endpoint, SQS_WAIT_SECONDS="1", DATABASE_URL="")

    def item(self, job_id: str) -> dict | None:
        item = self.dynamodb.get_item(TableName=self.table, Key={"id": {"S": job_id}},
                                      ConsistentRead=True).get("Item")
        return None if item is None else {k: next(iter(v.values())) for k, v in item.items()}

    def dlq_job_ids(self, wait: int = 1) -> list[str]:
        found = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10,
                                                WaitTimeSeconds=wait, VisibilityTimeout=30).get("Messages", [])
            if not messages:
                return found
            found += [json.loads(m["Body"])["job_id"] for m in messages]
            wait = 0
