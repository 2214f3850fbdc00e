"""`python -m spark_detector status`: figures read from SQS and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import boto3

from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.engine import state as detection_state
from spark_detector.engine.rules import Thresholds
from spark_detector.ops.status import collect_status, format_status
from tests.reference_model import chunk_from_rows


def test_status_reports_queues_chunks_rows_detections_and_the_outbox(
        aws, migrated_database_url):
    sqs = boto3.client("sqs", region_name="us-east-1")
    dlq = sqs.create_queue(QueueName="chunks-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName="chunks", Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})})["QueueUrl"]
    for body in ("a", "b"):
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    sqs.send_message(QueueUrl=dlq, MessageBody="poison")
    settings = WorkerSettings(bucket="b", queue_url=queue, database_url=migrated_database_url)

    conn = db.connect(migrated_database_url)
    thresholds = Thresholds(child_min_count=1, child_max_avg_amount=Decimal(23))
    started = datetime.now(UTC)
    detection_state.apply_chunk(conn, detection_state.ChunkRef("stream_chunks/c1.csv"),
                       chunk_from_rows("stream_chunks/c1.csv", [("C1", "M1", "5", "F")],
                                       rows_rejected=2),
                       y_start_time=started, thresholds=thresholds)
    detection_state.record_rejected_chunk(
        conn, detection_state.ChunkRef("stream_chunks/bad.csv"), "empty",
        "quarantine/chunks/bad.csv")

    status = collect_status(conn, sqs, settings, now=datetime.now(UTC) + timedelta(seconds=5))
    conn.close()

    assert (status.queue_visible, status.queue_in_flight, status.dlq_depth) == (2, 0, 1)
    assert (status.chunks_applied, status.chunks_rejected) == (1, 1)
    assert (status.rows_good, status.rows_rejected) == (1, 2)
    assert status.detections == {"PatId1": 0, "PatId2": 1, "PatId3": 0}
    assert (status.outbox_files_pending, status.detections_unfiled) == (0, 1)
    assert 5 <= status.newest_applied_age_s < 60
    text = format_status(status)
    assert "1 applied, 1 rejected" in text and "PatId2 1" in text
    assert json.loads(format_status(status, as_json=True))["dlq_depth"] == 1
