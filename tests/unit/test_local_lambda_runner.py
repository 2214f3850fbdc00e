"""The local Lambda runner: one S3 event -> one handler invocation, Lambda's async retries."""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

import boto3
import pytest

from infra.local.lambda_runner import (
    GiveUp,
    Retry,
    RunnerConfigError,
    RunnerSettings,
    after_failure,
    process_message,
)
from infra.local.resources import StackSpec, create_resources


def settings_for(resources, **changes) -> RunnerSettings:
    return RunnerSettings(events_queue_url=resources.events_queue_url,
                          on_failure_queue_url=resources.trigger_failures_queue_url,
                          retry_delays=(0, 0), **changes)


@pytest.fixture
def local(aws):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    resources = create_resources(s3, sqs, StackSpec())
    # Configuring the notification sent an s3:TestEvent; start from an empty queue.
    sqs.purge_queue(QueueUrl=resources.events_queue_url)
    return s3, sqs, resources


def receive(sqs, url: str) -> list[dict]:
    return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                               MessageSystemAttributeNames=["ApproximateReceiveCount"]
                               ).get("Messages", [])


def test_retries_follow_lambda_async_invocation():
    settings = RunnerSettings("e", "f", max_attempts=3, retry_delays=(1, 2))
    assert after_failure(1, settings) == Retry(1)
    assert after_failure(2, settings) == Retry(2)
    assert after_failure(3, settings) == GiveUp()


def test_settings_name_the_missing_variable():
    with pytest.raises(RunnerConfigError, match="LAMBDA_ON_FAILURE_QUEUE_URL"):
        RunnerSettings.from_env({"LAMBDA_EVENTS_QUEUE_URL": "q"})
    settings = RunnerSettings.from_env({"LAMBDA_EVENTS_QUEUE_URL": "q",
                                        "LAMBDA_ON_FAILURE_QUEUE_URL": "f",
                                        "LAMBDA_RETRY_DELAYS": "3,7"})
    assert settings.retry_delays == (3, 7)
    assert settings.handler == "lambda_trigger.app.handler"


def test_handler_gets_the_s3_event_and_a_lambda_context(local):
    s3, sqs, resources = local
    s3.put_object(Bucket=resources.bucket, Key="stream_chunks/chunk-00000001.csv", Body=b"a\n1\n")
    calls = []

    def handler(event, context):
        calls.append((event, context))

    [message] = receive(sqs, resources.events_queue_url)
    assert process_message(sqs, settings_for(resources), handler, message) == "ok"

    [(event, context)] = calls
    [record] = event["Records"]
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == resources.bucket
    # Form-encoded, as S3 sends keys (moto also escapes '/'; the handler decodes either).
    assert unquote_plus(record["s3"]["object"]["key"]) == "stream_chunks/chunk-00000001.csv"
    assert context.function_name == "chunk-trigger"
    assert 0 < context.get_remaining_time_in_millis() <= 60_000
    assert context.aws_request_id
    assert receive(sqs, resources.events_queue_url) == []  # deleted after success


def test_a_failing_event_is_retried_twice_then_parked_in_the_on_failure_queue(local):
    s3, sqs, resources = local
    s3.put_object(Bucket=resources.bucket, Key="stream_chunks/chunk-00000002.csv", Body=b"x")
    settings = settings_for(resources)
    attempts = []

    def handler(event, context):
        attempts.append(context.aws_request_id)
        raise RuntimeError("SQS said no")

    outcomes = []
    while messages := receive(sqs, resources.events_queue_url):
        outcomes += [process_message(sqs, settings, handler, m) for m in messages]

    assert outcomes == ["retry", "retry", "failed"]
    assert len(attempts) == 3 and len(set(attempts)) == 1  # one event, one request id
    [parked] = receive(sqs, resources.trigger_failures_queue_url)
    record = json.loads(parked["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert unquote_plus(record["requestPayload"]["Records"][0]["s3"]["object"]["key"]) == (
        "stream_chunks/chunk-00000002.csv")


def test_a_handler_that_fails_once_succeeds_on_retry(local):
    s3, sqs, resources = local
    s3.put_object(Bucket=resources.bucket, Key="stream_chunks/chunk-00000003.csv", Body=b"x")
    settings = settings_for(resources)
    seen = []

    def handler(event, context):
        seen.append(event)
        if len(seen) == 1:
            raise TimeoutError("throttled")

    outcomes = []
    while messages := receive(sqs, resources.events_queue_url):
        outcomes += [process_message(sqs, settings, handler, m) for m in messages]
    assert outcomes == ["retry", "ok"]
    assert seen[0] == seen[1]
    assert receive(sqs, resources.trigger_failures_queue_url) == []


def test_the_s3_test_event_never_reaches_the_handler(aws):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    resources = create_resources(s3, sqs, StackSpec())
    [message] = receive(sqs, resources.events_queue_url)
    assert json.loads(message["Body"])["Event"] == "s3:TestEvent"

    def handler(event, context):
        raise AssertionError("Lambda is never invoked with s3:TestEvent")

    assert process_message(sqs, settings_for(resources), handler, message) == "test_event"
