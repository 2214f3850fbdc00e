"""Building blocks for the worker's integration tests: data, AWS resources, the reference.

The worker runs against a moto *server* (Spark's Python workers are other processes), a
real PostgreSQL and the session's SparkSession; the expected detections come from
``tests/reference_model.py`` replaying the chunks in the apply order PostgreSQL recorded.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import boto3
import psycopg2

from chunk_contract.layout import CHUNK_PREFIX, chunk_key
from chunk_contract.message import ChunkMessage
from spark_detector.detection_state import Thresholds
from tests.reference_model import ReferenceEngine, read_chunk, read_weights

if TYPE_CHECKING:
    from spark_detector.worker import BatchSummary, Worker

# Small enough that all three patterns fire on 20,000 generated rows (seed 3): about 70
# detections, so one full file of 50 and a partial one.
THRESHOLDS = Thresholds(upgrade_min_total=1000, child_min_count=8, dei_min_female=1)
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "region_name": "us-east-1"}


def split_chunks(transactions: bytes, rows_per_chunk: int, prefix: str = CHUNK_PREFIX
                 ) -> dict[str, bytes]:
    """The master file as the producer would stream it: header + rows, names in order."""
    header, *lines = transactions.decode().splitlines(keepends=True)
    start = datetime(2026, 11, 27, tzinfo=UTC)
    return {
        chunk_key(prefix, n + 1, start + timedelta(seconds=n)):
            (header + "".join(lines[i : i + rows_per_chunk])).encode()
        for n, i in enumerate(range(0, len(lines), rows_per_chunk))
    }


@dataclass
class AwsResources:
    endpoint: str
    bucket: str
    queue_url: str
    dlq_url: str

    @property
    def s3(self):
        return boto3.client("s3", endpoint_url=self.endpoint, **CREDENTIALS)

    @property
    def sqs(self):
        return boto3.client("sqs", endpoint_url=self.endpoint, **CREDENTIALS)

    @classmethod
    def create(cls, endpoint: str, *, visibility_timeout: int = 30,
               max_receive_count: int = 3) -> AwsResources:
        name = uuid.uuid4().hex[:10]
        s3 = boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS)
        sqs = boto3.client("sqs", endpoint_url=endpoint, **CREDENTIALS)
        s3.create_bucket(Bucket=f"data-{name}")
        dlq_url = sqs.create_queue(QueueName=f"dlq-{name}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(QueueName=f"chunks-{name}", Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": str(max_receive_count)}),
        })["QueueUrl"]
        return cls(endpoint, f"data-{name}", queue_url, dlq_url)

    def upload(self, chunks: dict[str, bytes]) -> None:
        for key, body in chunks.items():
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def enqueue(self, keys: Iterable[str], *, bucket: str | None = None,
                delay_seconds: int = 0) -> None:
        """A chunk message per key, as the trigger sends it (the object's size and ETag, if
        it is there)."""
        for key in keys:
            try:
                head = self.s3.head_object(Bucket=self.bucket, Key=key)
                size, etag = head["ContentLength"], head["ETag"].strip('"')
            except self.s3.exceptions.ClientError:
                size, etag = 1, ""
            self.send_raw(ChunkMessage(bucket=bucket or self.bucket, key=key, size=size,
                                       etag=etag,
                                       event_time=datetime.now(UTC).isoformat()).to_json(),
                          delay_seconds=delay_seconds)

    def send_raw(self, body: str, delay_seconds: int = 0) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body,
                              DelaySeconds=delay_seconds)

    def depth(self, url: str | None = None) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"])

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                   Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def detection_files(self) -> list[list[dict[str, str]]]:
        return [list(csv.DictReader(io.StringIO(self.read(k).decode())))
                for k in self.keys("detected_patterns/")]


def applied_order(database_url: str) -> list[str]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key FROM processed_chunks ORDER BY apply_order")
        return [key for (key,) in cur.fetchall()]


def committed_detections(database_url: str) -> list[tuple]:
    """(seq, pattern, merchant, customer, chunk fired after) in detection order."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key"
                    " FROM detected_patterns ORDER BY seq")
        return cur.fetchall()


def expected_detections(chunks: dict[str, bytes], importance: bytes, order: list[str],
                        thresholds: Thresholds = THRESHOLDS) -> list[tuple]:
    """The reference model's detections for the chunks applied in `order`."""
    weights = read_weights(importance)
    reference = ReferenceEngine(thresholds)
    for key in order:
        reference.apply_rows(key, read_chunk(chunks[key]), weights)
    return [(d.seq, d.pattern_id, d.merchant_id, d.customer_name, d.chunk_key)
            for d in reference.detections]


def assert_files_hold_each_detection_once(resources: AwsResources, detections: list[tuple],
                                          *, complete: bool) -> None:
    """Files of exactly 50 in detection order (the last may be partial), none in two files."""
    files = resources.detection_files()
    rows = [row for file in files for row in file]
    assert [len(f) for f in files[:-1]] == [50] * (len(files) - 1)
    if files:
        assert 0 < len(files[-1]) <= 50
    expected = detections if complete else detections[: len(rows)]
    assert [(r["patternId"], r["MerchantId"], r["customerName"]) for r in rows] == [
        (p, m, c) for _, p, m, c, _ in expected]
    if not complete:
        assert len(rows) == 50 * (len(detections) // 50)
    header = resources.read(resources.keys("detected_patterns/")[0]).split(b"\n")[0]
    assert header == b"YStartTime,detectionTime,patternId,ActionType,customerName,MerchantId"
    for row in rows:
        assert row["detectionTime"].endswith("+05:30") and row["YStartTime"].endswith("+05:30")


def make_worker(resources: AwsResources, database_url: str, spark, weights,
                **overrides) -> Worker:
    """The real Worker in this process, on the session's SparkSession, started."""
    from spark_detector import db
    from spark_detector.batch_result import weight_table
    from spark_detector.config import WorkerSettings
    from spark_detector.spark_job import FetchSpec
    from spark_detector.spark_runtime import SparkAggregator
    from spark_detector.worker import Worker

    options = {"wait_time_seconds": 0, "batch_window_seconds": 0.2, "max_batch_chunks": 4,
               "thresholds": THRESHOLDS, **overrides}
    settings = WorkerSettings(bucket=resources.bucket, queue_url=resources.queue_url,
                              database_url=database_url, **options)
    spec = FetchSpec(resources.bucket, endpoint_url=resources.endpoint,
                     access_key_id="testing", secret_access_key="testing")
    aggregator = SparkAggregator(spark, spec, weight_table(weights))
    worker = Worker(settings, s3=resources.s3, sqs=resources.sqs,
                    connect=lambda: db.connect(database_url), aggregate=aggregator.aggregate)
    worker.start()
    return worker


def run_until_idle(worker: Worker, max_batches: int = 200) -> list[BatchSummary]:
    """Run loops until nothing is received and nothing is held; the loops' summaries."""
    summaries = []
    for _ in range(max_batches):
        summary = worker.run_batch()
        if summary is None:
            return summaries
        summaries.append(summary)
    raise AssertionError("the queue never went idle")
