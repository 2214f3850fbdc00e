"""The pipeline's AWS resources, created in moto the way ``template.yaml`` creates them in AWS.

In AWS the bucket notifies the trigger Lambda directly and Lambda queues the event for an
asynchronous invocation. moto cannot run a Lambda, so locally the notification targets an
*events queue* instead (same events, same prefix/suffix filter) and the local Lambda runner
(``infra.local.lambda_runner``) plays Lambda's part: it takes each event from that queue and
invokes the real handler, retrying and finally parking failed events in an on-failure queue
as Lambda's async invocation does. Everything downstream of the handler — the chunk queue,
its redrive policy, the DLQ — is created exactly as in the template.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from chunk_contract import layout

OBJECT_CREATED = "s3:ObjectCreated:*"
NOTIFICATION_ID = "ChunkCreated"


@dataclass(frozen=True)
class StackSpec:
    """Names and settings of the local resources.

    The settings come from template.yaml (``infra.local.template.spec_from_template``); the
    defaults here are that template's defaults, for code that builds a spec by hand.
    """

    bucket: str = "txn-pipeline-local"
    chunk_queue: str = "txn-pipeline-chunks"
    dead_letter_queue: str = "txn-pipeline-chunks-dlq"
    trigger_failures_queue: str = "txn-pipeline-trigger-failures"  # Lambda's OnFailure
    # Local stand-in for Lambda's internal queue of asynchronous invocations.
    events_queue: str = "txn-pipeline-s3-events"
    chunk_prefix: str = layout.CHUNK_PREFIX
    chunk_suffix: str = layout.CHUNK_SUFFIX
    notification_events: tuple[str, ...] = (OBJECT_CREATED,)
    max_receive_count: int = 50
    chunk_visibility_timeout: int = 60
    chunk_receive_wait_seconds: int = 20
    retention_seconds: int = 14 * 24 * 3600
    lambda_max_retry_attempts: int = 2
    lambda_timeout_seconds: int = 30
    # The function's literal environment (POWERTOOLS_*); BUCKET/QUEUE_URL/... are local.
    lambda_environment: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Resources:
    bucket: str
    queue_url: str
    dlq_url: str
    events_queue_url: str
    trigger_failures_queue_url: str


def redrive_policy(dlq_arn: str, max_receive_count: int) -> str:
    return json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})


def notification_configuration(spec: StackSpec, events_queue_arn: str) -> dict[str, Any]:
    """ObjectCreated events under the chunk prefix with the chunk suffix, to the events queue."""
    return {
        "QueueConfigurations": [{
            "Id": NOTIFICATION_ID,
            "QueueArn": events_queue_arn,
            "Events": list(spec.notification_events),
            "Filter": {"Key": {"FilterRules": [
                {"Name": "prefix", "Value": spec.chunk_prefix},
                {"Name": "suffix", "Value": spec.chunk_suffix},
            ]}},
        }]
    }


def _queue(sqs: Any, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    return url, arn


def create_resources(s3: Any, sqs: Any, spec: StackSpec) -> Resources:
    """Create (or find, when they exist) every resource; safe to call twice."""
    retention = {"MessageRetentionPeriod": str(spec.retention_seconds)}
    dlq_url, dlq_arn = _queue(sqs, spec.dead_letter_queue, retention)
    queue_url, _ = _queue(sqs, spec.chunk_queue, {
        **retention,
        "VisibilityTimeout": str(spec.chunk_visibility_timeout),
        "ReceiveMessageWaitTimeSeconds": str(spec.chunk_receive_wait_seconds),
        "RedrivePolicy": redrive_policy(dlq_arn, spec.max_receive_count),
    })
    failures_url, _ = _queue(sqs, spec.trigger_failures_queue, retention)
    events_url, events_arn = _queue(sqs, spec.events_queue, {
        # An event stays invisible while the runner invokes the handler, like Lambda's timeout.
        **retention, "VisibilityTimeout": str(spec.lambda_timeout_seconds * 2)})

    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):  # created before
        s3.create_bucket(Bucket=spec.bucket)
    s3.put_bucket_notification_configuration(
        Bucket=spec.bucket,
        NotificationConfiguration=notification_configuration(spec, events_arn),
    )
    return Resources(bucket=spec.bucket, queue_url=queue_url, dlq_url=dlq_url,
                     events_queue_url=events_url, trigger_failures_queue_url=failures_url)
