"""Building blocks for the worker's integration tests: data, AWS resources, the reference.

The worker runs against a moto *server* (Spark's Python workers are other processes), a
real PostgreSQL and the session's SparkSession. What it must have done comes from
``tests/reference_model.py`` replaying the chunks in PRODUCTION order - the producer's
sequence numbers, never the order PostgreSQL recorded, which is what is under test
(``assert_applied_in_production_order``). Only hand-uploaded chunks, which have no number,
are replayed in the recorded order (``expected_detections_in_order``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import psutil
import psycopg2

from chunk_contract.layout import CHUNK_PREFIX, chunk_key, chunk_seq
from chunk_contract.message import ChunkMessage
from infra.local.stack import poll_until
from producer.generate import generate
from spark_detector.engine.rules import Thresholds
from tests.reference_model import ChunkRejectedWhole, ReferenceEngine, read_chunk, read_weights

if TYPE_CHECKING:
    from spark_detector.worker.loop import Worker
    from spark_detector.worker.summary import BatchSummary

REPO = Path(__file__).resolve().parents[2]

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
        """Every message in the queue: visible, in flight, and delayed (sent with a delay
        that has not passed: they are still to be delivered)."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return sum(int(count) for count in attrs.values())

    def redrive(self, key: str | None = None) -> int:
        """Move the DLQ's messages (those for chunk ``key``, if given) back to the chunk
        queue, body and message attributes kept, as ``aws sqs start-message-move-task`` does
        (moto has no message move task); how many were moved."""
        moved = 0
        while messages := self.sqs.receive_message(
                QueueUrl=self.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                VisibilityTimeout=30).get("Messages", []):
            for message in messages:
                if key is not None and json.loads(message["Body"]).get("key") != key:
                    continue
                self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=message["Body"],
                                      MessageAttributes=message.get("MessageAttributes", {}))
                self.sqs.delete_message(QueueUrl=self.dlq_url,
                                        ReceiptHandle=message["ReceiptHandle"])
                moved += 1
        return moved

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


def applied_rows(database_url: str) -> dict[str, tuple[int, int]]:
    """chunk key -> (rows_good, rows_rejected) as processed_chunks recorded them."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, rows_good, rows_rejected FROM processed_chunks")
        return {key: (good, rejected) for key, good, rejected in cur.fetchall()}


def committed_detections(database_url: str) -> list[tuple]:
    """(seq, pattern, merchant, customer, chunk fired after) in detection order."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq, pattern_id, merchant_id, customer_name, chunk_key"
                    " FROM detected_patterns ORDER BY seq")
        return cur.fetchall()


def production_order(keys: Iterable[str], prefix: str = CHUNK_PREFIX) -> list[str]:
    """The producer's chunks in production order: by the sequence number in their keys
    (under ``prefix``; "" for bare file names)."""
    seqs = {key: chunk_seq(key, prefix) for key in keys}
    unnumbered = [k for k, seq in seqs.items() if seq is None]
    assert not unnumbered, f"no production order for hand-uploaded chunks: {unnumbered}"
    return sorted(seqs, key=seqs.__getitem__)


@dataclass
class ReferenceRun:
    """The reference model's run over chunks in a given order."""

    applied: list[str]  # in that order, without the chunks it rejects whole
    rows: dict[str, tuple[int, int]]  # chunk key -> (rows good, rows rejected)
    detections: list[tuple]  # (seq, pattern, merchant, customer, chunk fired after)


def reference_run(chunks: dict[str, bytes], importance: bytes, order: Iterable[str],
                  thresholds: Thresholds = THRESHOLDS) -> ReferenceRun:
    weights = read_weights(importance)
    reference = ReferenceEngine(thresholds)
    rows = {}
    for key in order:
        try:
            read = read_chunk(chunks[key])
        except ChunkRejectedWhole:
            continue
        rows[key] = (len(read.rows), len(read.rejected))
        reference.apply_rows(key, read.rows, weights)
    detections = [(d.seq, d.pattern_id, d.merchant_id, d.customer_name, d.chunk_key)
                  for d in reference.detections]
    return ReferenceRun(list(reference.applied), rows, detections)


def expected_detections(chunks: dict[str, bytes], importance: bytes,
                        thresholds: Thresholds = THRESHOLDS, prefix: str = CHUNK_PREFIX
                        ) -> list[tuple]:
    """The reference model's detections for the producer's ``chunks`` in production order."""
    return reference_run(chunks, importance, production_order(chunks, prefix),
                         thresholds).detections


def expected_detections_in_order(chunks: dict[str, bytes], importance: bytes,
                                 order: list[str],
                                 thresholds: Thresholds = THRESHOLDS) -> list[tuple]:
    """The reference model's detections for chunks applied in ``order``, which is not the
    production order: only where the test knows that order for itself (late chunks applied
    where they arrived) or where delivery decides it (hand-uploaded chunks, recorded)."""
    return reference_run(chunks, importance, order, thresholds).detections


def assert_applied_in_production_order(database_url: str, chunks: dict[str, bytes],
                                       importance: bytes, *, left_out: Iterable[str] = (),
                                       thresholds: Thresholds = THRESHOLDS) -> list[tuple]:
    """What the worker committed is the reference model's run over ``chunks`` (less
    ``left_out``: dead-lettered, skipped) in production order: the same chunks applied in
    that order, each with the same good and rejected rows, and the same detections, each
    after the same chunk. The detections, for further checks."""
    left_out = set(left_out)
    expected = reference_run(chunks, importance,
                             production_order(k for k in chunks if k not in left_out),
                             thresholds)
    assert applied_order(database_url) == expected.applied
    assert applied_rows(database_url) == expected.rows
    assert committed_detections(database_url) == expected.detections
    return expected.detections


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


# --- the worker as a real process -------------------------------------------------------------

def worker_env(resources: AwsResources, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker process on ``resources``, with small thresholds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WORKER_"))}
    env.update({
        "BUCKET": resources.bucket, "QUEUE_URL": resources.queue_url,
        "DATABASE_URL": database_url, "AWS_ENDPOINT_URL": resources.endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "SPARK_MASTER": "local[2]",
        "WORKER_WAIT_TIME_SECONDS": "1", "WORKER_MAX_BATCH_CHUNKS": "3",
        # The queue's visibility timeout is 3 s, so a killed worker's messages come back soon;
        # the heartbeat keeps a live worker's batch hidden meanwhile.
        "WORKER_HEARTBEAT_AFTER_SECONDS": "1", "WORKER_VISIBILITY_TIMEOUT_SECONDS": "3",
        "PATID1_MIN_TOTAL": str(THRESHOLDS.upgrade_min_total),
        "PATID2_MIN_COUNT": str(THRESHOLDS.child_min_count),
        "PATID3_MIN_FEMALE": str(THRESHOLDS.dei_min_female),
        **extra,
    })
    return env


def start_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """``python -m spark_detector run *args``, its output appended to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "spark_detector", "run", *args], cwd=REPO,
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def run_worker_until_applied(env: dict[str, str], log: Path, database_url: str, count: int,
                             during: Callable[[subprocess.Popen], object] = lambda p: None,
                             timeout: float = 180) -> None:
    """A worker process (``env``) run until ``count`` chunks are applied, then stopped with
    SIGTERM, exit code 0 required; ``during(process)`` once it runs."""
    worker = start_worker(env, log)
    try:
        during(worker)
        poll_until(lambda: applied_count(database_url) == count, timeout,
                   "every chunk applied", process=worker, log=log)
    finally:
        stop(worker, log)


@contextlib.contextmanager
def paused(process: subprocess.Popen) -> Iterator[None]:
    """The worker process and its children (the JVM, Spark's Python workers) stopped with
    SIGSTOP for the block, then continued: a worker stalled for a while (a long GC pause, a
    starved host), which lets another worker take the stream's head meanwhile."""
    parent = psutil.Process(process.pid)
    tree = [parent, *parent.children(recursive=True)]
    for member in tree:
        member.suspend()
    try:
        yield
    finally:
        for member in reversed(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                member.resume()


def share_the_stream(database_url: str, total: int, enqueue: Callable[[], None],
                     first: tuple[subprocess.Popen, Path], second: tuple[subprocess.Popen, Path],
                     stop_first: Callable[[], int]) -> None:
    """Two ready workers both apply chunks of one stream of ``total`` chunks.

    Left alone, the worker that leads the stream's head keeps it: it looks the next chunks up
    in S3 and applies them before the other's Spark job is done, and the other only meets
    duplicates. So ``second`` is paused while ``enqueue()`` fills the queue and ``first``
    applies a quarter of the stream; then both run until half is applied; then ``first`` is
    stopped (``stop_first()``, its exit code must be 0), giving its messages back, and
    ``second`` has the rest to apply (the caller waits for it).
    """
    with paused(second[0]):
        enqueue()
        poll_until(lambda: applied_count(database_url) >= total // 4, 300,
                   "a quarter of the stream applied by the first worker",
                   process=first[0], log=first[1], tail=3000)
    poll_until(lambda: applied_count(database_url) >= total // 2, 300,
               "half the stream applied by the two workers", process=second[0], log=second[1],
               tail=3000)
    assert stop_first() == 0, first[1].read_text()[-3000:]


def command(env: dict[str, str], *args: str, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    """``python -m spark_detector ARGS`` as an operator runs it, to its end."""
    return subprocess.run([sys.executable, "-m", "spark_detector", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr without the JSON log lines: what the command says to the operator."""
    return [line for line in result.stderr.splitlines() if line and not line.startswith("{")]


def stage(resources: AwsResources, chunks: dict[str, bytes], importance: bytes) -> None:
    """The chunks and CustomerImportance in the bucket."""
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)


def queued_stream(folder: Path, endpoint: str, rows: int = 3_000
                  ) -> tuple[dict[str, bytes], bytes, AwsResources]:
    """``rows`` generated rows as chunks of 1,000 in a new bucket with the CustomerImportance at
    the reference key, their messages queued: what a worker process is given to apply."""
    generate(folder, rows=rows, seed=3)
    chunks = split_chunks((folder / "transactions.csv").read_bytes(), 1000)
    importance = (folder / "CustomerImportance.csv").read_bytes()
    resources = AwsResources.create(endpoint)
    stage(resources, chunks, importance)
    resources.enqueue(sorted(chunks))
    return chunks, importance, resources


def stop(process: subprocess.Popen, log: Path) -> None:
    """SIGTERM the worker process (unless it ended) and require exit code 0."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]


def applied_count(database_url: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM processed_chunks")
        return cur.fetchone()[0]


def log_lines(log: Path, message: str | None = None) -> list[dict]:
    """The JSON lines of a worker's log (those saying ``message``, when given)."""
    lines = []
    if not log.exists():
        return lines
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and (message is None or f'"{message}"' in line):
            record = json.loads(line)
            if message is None or record.get("message") == message:
                lines.append(record)
    return lines


def applied_by(log: Path) -> list[str]:
    """The chunks this worker process applied itself (its "batch done" lines)."""
    return [key for line in log_lines(log, "batch done") for key in line["keys"]]


def assert_each_worker_applied_and_one_chunk_waited(logs: list[Path]) -> None:
    """Proof that several workers really shared the stream: each applied chunks of its own,
    and at least once a chunk was held for a predecessor (in hand, not yet its turn)."""
    applied = [applied_by(log) for log in logs]
    assert all(applied), f"chunks applied per worker: {[len(a) for a in applied]}"
    assert len({key for keys in applied for key in keys}) == sum(map(len, applied))
    assert any(line["waiting"] for log in logs for line in log_lines(log, "batch done"))


# --- the worker in this process ----------------------------------------------------------------

def make_worker(resources: AwsResources, database_url: str, spark, weights,
                **overrides) -> Worker:
    """The real Worker in this process, on the session's SparkSession, started."""
    from spark_detector import db
    from spark_detector.config import WorkerSettings
    from spark_detector.ops.backfill import backfill
    from spark_detector.spark.batch_result import weight_table
    from spark_detector.spark.job import FetchSpec
    from spark_detector.worker.loop import Worker
    from spark_detector.worker.spark_runtime import SparkAggregator

    options = {"wait_time_seconds": 0, "batch_window_seconds": 0.2, "max_batch_chunks": 4,
               "thresholds": THRESHOLDS, **overrides}
    settings = WorkerSettings(bucket=resources.bucket, queue_url=resources.queue_url,
                              database_url=database_url, **options)
    spec = FetchSpec(resources.bucket, endpoint_url=resources.endpoint,
                     access_key_id="testing", secret_access_key="testing")
    aggregator = SparkAggregator(spark, spec, weight_table(weights))
    worker = Worker(settings, s3=resources.s3, sqs=resources.sqs,
                    connect=lambda: db.connect(database_url), aggregate=aggregator.aggregate,
                    backfill=lambda conn: backfill(conn, resources.s3, resources.sqs, settings))
    worker.start()
    return worker


def run_until(worker: Worker, done: Callable[[], object], timeout: float = 120
              ) -> list[BatchSummary]:
    """Run loops until ``done()`` (checked before each loop); the loops' summaries. Bounded
    by time, not by a number of loops: an idle loop takes milliseconds, and a message sent
    with a delay arrives only once the delay has passed."""
    summaries = []
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker never got there within {timeout:.0f} s")
        summary = worker.run_batch()
        if summary is not None:
            summaries.append(summary)
    return summaries


def run_until_idle(worker: Worker, max_batches: int = 200) -> list[BatchSummary]:
    """Run loops until nothing is received and nothing is held; the loops' summaries."""
    summaries = []
    for _ in range(max_batches):
        summary = worker.run_batch()
        if summary is None:
            return summaries
        summaries.append(summary)
    raise AssertionError("the queue never went idle")
