"""Chunk limits and a bounded Spark job, in the real worker process (docs/configuration.md,
"Chunk limits and memory"; docs/worker.md, exit codes).

The scenario of issue 25: a 61 MB chunk of 1,000,000 rows, all distinct customers, inside
the old 64 MiB / 1,000,000-row limits, made the 512 MiB driver JVM run out of heap; the
Spark call then never returned and the worker held the chunk for ever. Now a chunk at the
limits is applied, that chunk is over them (rejected whole, unread), a JVM out of heap exits
and a job that never ends is a dead runtime: the messages go back to the queue at once and
the process exits 3.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psutil
import psycopg2
import pytest

from chunk_contract.layout import CHUNK_PREFIX, chunk_key
from infra.local.stack import poll_until
from spark_detector.config import DEFAULT_MAX_CHUNK_BYTES, DEFAULT_MAX_CHUNK_ROWS
from tests.support.workers import (
    AwsResources,
    applied_count,
    applied_order,
    log_lines,
    split_chunks,
    stage,
    start_worker,
    stop,
    worker_env,
)

pytestmark = pytest.mark.spark

HEADER = b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n"
ROW_BYTES = 62  # a row below with a 7-digit customer number


def distinct_customer_chunk(rows: int, size: int, first: int = 0) -> bytes:
    """A chunk of ``rows`` good rows of one merchant, each with its own customer, as close
    to ``size`` bytes as rows of one length come (the customer numbers set the length)."""
    width = 7 + (size - len(HEADER)) // rows - ROW_BYTES
    assert 10**width >= first + rows, "too short for that many distinct customers"
    body = "".join(f"0,'C{i:0{width}d}','4','F','28007','M1823','28007','es_food',"
                   f"{i % 90 + 10}.5,0\n" for i in range(first, first + rows))
    return HEADER + body.encode()


def key(seq: int) -> str:
    return chunk_key(CHUNK_PREFIX, seq, datetime(2026, 12, 1, tzinfo=UTC))


def messages_visible(resources: AwsResources) -> str:
    return resources.sqs.get_queue_attributes(
        QueueUrl=resources.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, its exit not yet collected
    except psutil.NoSuchProcess:
        return True


def failures_recorded(database_url: str) -> int:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM chunk_failures")
        return cur.fetchone()[0]


@pytest.fixture(scope="module")
def issue_chunk() -> bytes:
    """The issue's chunk: 61 MB, 1,000,000 rows, all distinct customers."""
    chunk = distinct_customer_chunk(1_000_000, 61_000_100)
    assert len(chunk) // 1_000_000 == 61  # 61 MB
    return chunk


def test_chunks_at_the_limits_are_applied_and_the_issues_chunk_is_rejected_with_a_reason(
        dataset, issue_chunk, moto_endpoint, migrated_database_url, tmp_path):
    """The default limits and the default driver memory: two chunks at both limits, all
    distinct customers, in one backlog (the worker cuts the batch into one job each), and
    the issue's chunk before them, rejected as too large without being read."""
    transactions, importance = dataset
    at_limits = [distinct_customer_chunk(DEFAULT_MAX_CHUNK_ROWS, DEFAULT_MAX_CHUNK_BYTES,
                                         first=n * DEFAULT_MAX_CHUNK_ROWS) for n in (1, 2)]
    assert all(0.98 * DEFAULT_MAX_CHUNK_BYTES < len(c) <= DEFAULT_MAX_CHUNK_BYTES
               and c.count(b"\n") == DEFAULT_MAX_CHUNK_ROWS + 1 for c in at_limits)
    small = next(iter(split_chunks(transactions, 500).values()))
    chunks = {key(1): issue_chunk, key(2): at_limits[0], key(3): at_limits[1], key(4): small}
    resources = AwsResources.create(moto_endpoint, max_receive_count=50)
    stage(resources, chunks, importance)
    resources.enqueue(sorted(chunks))
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(resources, migrated_database_url,
                                     WORKER_VISIBILITY_TIMEOUT_SECONDS="20",
                                     WORKER_HEARTBEAT_AFTER_SECONDS="5"), log)
    try:
        poll_until(lambda: applied_count(migrated_database_url) == 3, 420,
                   "the chunks at the limits and the small one applied", process=worker, log=log)
    finally:
        stop(worker, log)

    assert applied_order(migrated_database_url) == [key(2), key(3), key(4)]
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT rows_good, rows_rejected, pairs FROM processed_chunks"
                    " WHERE chunk_key IN (%s, %s)", (key(2), key(3)))
        assert cur.fetchall() == [(DEFAULT_MAX_CHUNK_ROWS, 0, DEFAULT_MAX_CHUNK_ROWS)] * 2
        cur.execute("SELECT customers FROM merchant_state WHERE merchant = 'M1823'")
        assert cur.fetchone() == (2 * DEFAULT_MAX_CHUNK_ROWS,)
        cur.execute("SELECT chunk_key, reason FROM rejected_chunks")
        assert cur.fetchall() == [(key(1), f"too large: {len(issue_chunk):,} bytes, the limit"
                                            f" is {DEFAULT_MAX_CHUNK_BYTES:,}")]
    copied = resources.s3.head_object(Bucket=resources.bucket,
                                      Key=f"quarantine/chunks/{key(1).split('/')[-1]}")
    assert copied["ContentLength"] == len(issue_chunk)
    assert resources.depth() == 0 and resources.depth(resources.dlq_url) == 0
    assert failures_recorded(migrated_database_url) == 0


def test_a_jvm_out_of_heap_is_a_dead_runtime_and_the_chunk_is_not_charged(
        dataset, issue_chunk, moto_endpoint, migrated_database_url, tmp_path):
    """The old limits, which the 512 MiB driver cannot honour: the issue's chunk makes the JVM
    run out of heap. It exits (-XX:+ExitOnOutOfMemoryError) instead of leaving the job
    hanging; the worker gives the message back and exits 3, charging the chunk nothing."""
    _, importance = dataset
    resources = AwsResources.create(moto_endpoint, visibility_timeout=600)
    stage(resources, {key(1): issue_chunk}, importance)
    resources.enqueue([key(1)])
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(
        resources, migrated_database_url, WORKER_MAX_CHUNK_BYTES=str(64 * 2**20),
        WORKER_MAX_CHUNK_ROWS="1000000", WORKER_VISIBILITY_TIMEOUT_SECONDS="600",
        WORKER_HEARTBEAT_AFTER_SECONDS="20", WORKER_SPARK_JOB_TIMEOUT_SECONDS="3600"), log)
    try:
        assert worker.wait(timeout=480) == 3, log.read_text(errors="replace")[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()

    text = log.read_text(errors="replace")
    assert "java.lang.OutOfMemoryError" in text
    (lost,) = log_lines(log, "spark runtime lost: messages given back, exiting")
    assert lost["exit_code"] == 3
    assert messages_visible(resources) == "1"  # given back, not hidden for 600 s
    assert failures_recorded(migrated_database_url) == 0
    assert applied_count(migrated_database_url) == 0


def test_a_spark_job_that_never_ends_is_a_dead_runtime(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    """A job hangs (a failpoint in its fetch): after WORKER_SPARK_JOB_TIMEOUT_SECONDS the
    watchdog gives the message back, kills the JVM and ends the process with exit code 3,
    long before the message's visibility timeout."""
    transactions, importance = dataset
    chunk = next(iter(split_chunks(transactions, 500).values()))
    resources = AwsResources.create(moto_endpoint, visibility_timeout=600)
    stage(resources, {key(1): chunk}, importance)
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(
        resources, migrated_database_url, WORKER_HANG=f"spark_fetch@{key(1).split('/')[-1]}",
        WORKER_SPARK_JOB_TIMEOUT_SECONDS="60", WORKER_VISIBILITY_TIMEOUT_SECONDS="600",
        WORKER_HEARTBEAT_AFTER_SECONDS="20"), log)
    try:
        poll_until(lambda: log_lines(log, "spark warm"), 240, "the worker warmed up",
                   process=worker, log=log)
        (jvm,) = [p for p in psutil.Process(worker.pid).children(recursive=True)
                  if p.name() == "java"]
        resources.enqueue([key(1)])
        enqueued = time.monotonic()
        assert worker.wait(timeout=240) == 3, log.read_text(errors="replace")[-3000:]
        waited = time.monotonic() - enqueued
    finally:
        if worker.poll() is None:
            worker.kill()

    (lost,) = log_lines(log, "spark runtime lost: messages given back, exiting")
    assert "WORKER_SPARK_JOB_TIMEOUT_SECONDS=60" in lost["error"]
    assert lost["chunk_keys"] == [key(1)] and lost["exit_code"] == 3
    assert waited > 60
    assert messages_visible(resources) == "1"  # given back, not hidden for 600 s
    assert failures_recorded(migrated_database_url) == 0
    poll_until(lambda: gone(jvm), 30, "the JVM killed, not left behind")
