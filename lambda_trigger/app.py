"""AWS Lambda entry point: S3 ObjectCreated notifications -> chunk messages on SQS.

A thin edge around pure functions (``records``, ``chunk_contract.sqs_batch``). Settings and
the SQS client are built on the first invocation and reused by the container; importing this
module reads no environment and talks to nothing. It imports nothing from spark_detector or
pyspark, so the deployment package is this folder and ``chunk_contract`` (Powertools comes
from its public layer).
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from chunk_contract.sqs_batch import EnqueueFailed, RetryPolicy, enqueue
from lambda_trigger.config import TriggerSettings
from lambda_trigger.records import chunk_message, object_key, skip_reason

SERVICE = "chunk-trigger"
NAMESPACE = "TxnPipeline"

# POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE, when set, win over these defaults.
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)  # disabled outside Lambda; patches boto3 calls inside it


@functools.cache
def settings() -> TriggerSettings:
    return TriggerSettings.from_env()


@functools.cache
def sqs_client() -> Any:
    # boto3 reads AWS_ENDPOINT_URL itself; botocore's standard mode retries throttling.
    return boto3.client("sqs", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def enqueue_chunks(event: S3Event, config: TriggerSettings, sqs: Any) -> dict[str, int]:
    """Skip what is not a chunk, enqueue the rest; one log line per record."""
    if "Records" not in event.raw_event:
        # s3:TestEvent, sent when a notification is configured, has no Records.
        logger.info("skipped record", extra={"reason": "test_event",
                                             "s3_event": event.get("Event", "")})
        metrics.add_metric(name="RecordsSkipped", unit=MetricUnit.Count, value=1)
        return {"enqueued": 0, "skipped": 1}

    messages = []
    skipped = 0
    for record in event.records:
        reason = skip_reason(record, config)
        if reason is None:
            messages.append(chunk_message(record))
            continue
        skipped += 1
        logger.info("skipped record", extra={
            "reason": reason, "event_name": record.event_name,
            "bucket": record.s3.bucket.name, "key": object_key(record)})
    if skipped:
        metrics.add_metric(name="RecordsSkipped", unit=MetricUnit.Count, value=skipped)
    if not messages:
        return {"enqueued": 0, "skipped": skipped}

    try:
        retry = RetryPolicy(max_attempts=config.enqueue_max_attempts,
                            base_delay=config.enqueue_base_delay)
        enqueued = enqueue(sqs, config.queue_url, messages, fifo=config.fifo, retry=retry)
    except EnqueueFailed as exc:
        _log_enqueued(exc.enqueued)
        for failure in exc.failed:
            logger.error("chunk not enqueued", extra={
                "bucket": failure.message.bucket, "key": failure.message.key,
                "error_code": failure.code, "error": failure.reason})
        metrics.add_metric(name="EnqueueFailures", unit=MetricUnit.Count, value=len(exc.failed))
        # Raising hands the event to Lambda's async retries and then its on-failure destination.
        raise
    _log_enqueued(enqueued)
    return {"enqueued": len(enqueued), "skipped": skipped}


def _log_enqueued(messages: Any) -> None:
    for message in messages:
        logger.info("chunk enqueued", extra={
            "bucket": message.bucket, "key": message.key, "size": message.size,
            "etag": message.etag, "sequencer": message.sequencer})
    if messages:
        metrics.add_metric(name="ChunksEnqueued", unit=MetricUnit.Count, value=len(messages))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
@event_source(data_class=S3Event)
def handler(event: S3Event, context: LambdaContext) -> dict[str, int]:
    return enqueue_chunks(event, settings(), sqs_client())
