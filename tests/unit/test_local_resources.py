"""The local stack's resources: the queue wiring and the bucket notification's filter."""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

import boto3

from infra.local.resources import StackSpec, create_resources
from infra.local.template import spec_from_template


def event_keys(sqs, url: str) -> list[str]:
    keys = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=0).get("Messages", []):
        for message in messages:
            body = json.loads(message["Body"])
            keys += [unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return keys


def test_only_chunk_objects_notify_the_events_queue(aws):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    spec = StackSpec()
    resources = create_resources(s3, sqs, spec)
    event_keys(sqs, resources.events_queue_url)  # the s3:TestEvent

    for key in ["stream_chunks/chunk-00000001.csv", "detected_patterns/detections-00000001.csv",
                "quarantine/stream_chunks/chunk-00000001.csv", "stream_chunks/notes.txt",
                "_state/producer.json", "reference/CustomerImportance.csv",
                "stream_chunks/chunk-00000002.csv"]:
        s3.put_object(Bucket=spec.bucket, Key=key, Body=b"x")

    assert event_keys(sqs, resources.events_queue_url) == [
        "stream_chunks/chunk-00000001.csv", "stream_chunks/chunk-00000002.csv"]


def test_the_chunk_queue_redrives_to_the_dlq(aws):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    spec = StackSpec(max_receive_count=4)
    resources = create_resources(s3, sqs, spec)
    attrs = sqs.get_queue_attributes(QueueUrl=resources.queue_url,
                                     AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=resources.dlq_url,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert json.loads(attrs["RedrivePolicy"]) == {"deadLetterTargetArn": dlq_arn,
                                                  "maxReceiveCount": 4}
    assert attrs["VisibilityTimeout"] == str(spec.chunk_visibility_timeout)


def test_creating_twice_finds_the_same_resources(aws):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    assert create_resources(s3, sqs, StackSpec()) == create_resources(s3, sqs, StackSpec())


def test_the_local_spec_is_read_from_template_yaml():
    spec = spec_from_template()
    assert (spec.chunk_prefix, spec.chunk_suffix) == ("stream_chunks/", ".csv")
    assert spec.notification_events == ("s3:ObjectCreated:*",)
    assert (spec.max_receive_count, spec.chunk_visibility_timeout) == (50, 60)
    assert spec.lambda_max_retry_attempts == 2
    assert ("POWERTOOLS_SERVICE_NAME", "chunk-trigger") in spec.lambda_environment


def test_template_parameter_overrides_reach_the_spec():
    spec = spec_from_template(overrides={"MaxReceiveCount": 3, "ChunkPrefix": "in/"})
    assert spec.max_receive_count == 3
    assert spec.chunk_prefix == "in/"
