"""The SQS backend's settings as plain values, and the runner's retry delay after queue errors."""

from __future__ import annotations

import pytest

from spot_drain_worker.config import ConfigError, load_config, queue_url_region
from spot_drain_worker.runner import ERROR_BACKOFF_CAP_SECONDS, error_backoff

URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs"
LOCAL = "http://127.0.0.1:5000/123456789012/jobs"


def test_sqlite_stays_the_default():
    config = load_config({})
    assert (config.queue_url, config.jobs_table) == (None, None)


def test_queue_url_and_table_select_sqs_with_the_region_from_the_url():
    config = load_config({"QUEUE_URL": URL, "JOBS_TABLE": "spot-jobs"})
    assert (config.queue_url, config.jobs_table, config.jobs_table_create, config.aws_region,
            config.sqs_wait_seconds) == (URL, "spot-jobs", True, "eu-west-1", 5)


def test_aws_region_wins_over_the_default_region_and_the_url():
    env = {"QUEUE_URL": URL, "JOBS_TABLE": "t-1", "AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "us-west-1"}
    assert load_config(env).aws_region == "us-east-2"
    del env["AWS_REGION"]
    assert load_config(env).aws_region == "us-west-1"


@pytest.mark.parametrize("url,region", [
    (URL, "eu-west-1"), ("https://sqs.cn-north-1.amazonaws.com.cn/1/q", "cn-north-1"),
    ("https://us-east-2.queue.amazonaws.com/1/q", "us-east-2"), (LOCAL, None),
])
def test_region_in_a_queue_url(url, region):
    assert queue_url_region(url) == region


@pytest.mark.parametrize("env,message", [
    ({"QUEUE_URL": LOCAL}, r"^JOBS_TABLE must be set with QUEUE_URL"),
    ({"QUEUE_URL": LOCAL, "JOBS_TABLE": "t-1"}, r"^AWS_REGION \(or AWS_DEFAULT_REGION\) must be set"),
    ({"QUEUE_URL": LOCAL, "JOBS_TABLE": "t-1", "AWS_REGION": "Frankfurt"}, r"^AWS_REGION must be a region"),
    ({"JOBS_TABLE": "t-1"}, r"^JOBS_TABLE is set but QUEUE_URL is not"),
    ({"SQS_WAIT_SECONDS": "3"}, r"^SQS_WAIT_SECONDS is set but QUEUE_URL is not"),
    ({"QUEUE_URL": "sqs://jobs", "JOBS_TABLE": "t-1"}, r"^QUEUE_URL must be an SQS queue URL"),
    ({"QUEUE_URL": URL + ".fifo", "JOBS_TABLE": "t-1"}, r"^QUEUE_URL names a FIFO queue"),
    ({"QUEUE_URL": URL + "?x=1", "JOBS_TABLE": "t-1"}, r"^QUEUE_URL must be a plain queue URL"),
    ({"QUEUE_URL": URL, "JOBS_TABLE": "t"}, r"^JOBS_TABLE must be a DynamoDB table name"),
    ({"QUEUE_URL": URL, "JOBS_TABLE": "t-1", "JOBS_TABLE_CREATE": "maybe"}, r"^JOBS_TABLE_CREATE must be true"),
    ({"QUEUE_URL": URL, "JOBS_TABLE": "t-1", "SQS_WAIT_SECONDS": "21"}, r"^SQS_WAIT_SECONDS must be at most 20"),
    ({"QUEUE_URL": URL, "JOBS_TABLE": "t-1", "LEASE_SECONDS": "50000"}, r"^LEASE_SECONDS must be at most 43200"),
    ({"QUEUE_URL": URL, "JOBS_TABLE": "t-1", "MAX_PAYLOAD_BYTES": "393217"},
     r"^MAX_PAYLOAD_BYTES must be at most 393216 with QUEUE_URL .*one DynamoDB item \(400 KB\)"),
])
def test_bad_sqs_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env)


def test_error_backoff_is_jittered_exponential_and_capped():
    assert error_backoff(0, rand=lambda: 1.0) == 0.0
    assert [error_backoff(n, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert error_backoff(100, rand=lambda: 1.0) == ERROR_BACKOFF_CAP_SECONDS
    assert error_backoff(3, rand=lambda: 0.25) == 0.5  # full jitter: a fraction of the ceiling
