"""Outages of S3 and of the Spark runtime in the real worker process (SPEC 6a,
docs/operations.md "S3 and Spark outages"): intake stops, no chunk is charged a failure,
nothing reaches the DLQ, and the stream resumes by itself in production order.

Each outage lasts until the worker met it more often than its failure budget allows
(``WORKER_MAX_CHUNK_FAILURES=2``, retried after 0.2 s): a worker that charged the chunk at
the head of the stream would have dead-lettered it, and the next one, by then. With the
defaults (3 failures, 30 s doubling) that is what a 10-minute outage does to ~6 chunks: the
small budget makes the same thing happen in seconds, counted, not timed.
"""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from infra.local.stack import poll_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.workers import (
    AwsResources,
    applied_count,
    assert_applied_in_production_order,
    log_lines,
    split_chunks,
    stage,
    start_worker,
    stop,
    worker_env,
)

pytestmark = pytest.mark.spark

BUDGET = {"WORKER_MAX_CHUNK_FAILURES": "2", "WORKER_RETRY_DELAY_SECONDS": "0.2",
          "WORKER_MAX_BATCH_CHUNKS": "2", "WORKER_VISIBILITY_TIMEOUT_SECONDS": "20",
          "WORKER_HEARTBEAT_AFTER_SECONDS": "5"}


def failure_records(database_url: str) -> list[tuple]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, attempts FROM chunk_failures ORDER BY chunk_key")
        return cur.fetchall()


def settled_or_dead_lettered(resources: AwsResources, url: str, applied: int):
    """Until ``applied`` chunks are applied, or one reached the DLQ (the old failure)."""
    return lambda: applied_count(url) >= applied or resources.depth(resources.dlq_url) > 0


def assert_nothing_charged(resources: AwsResources, url: str, log: Path) -> None:
    assert resources.depth(resources.dlq_url) == 0
    assert failure_records(url) == []
    assert not log_lines(log, "chunk failed")


def test_s3_endpoint_down_stops_intake_and_the_stream_resumes_by_itself(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    """S3's endpoint resets every connection (a proxy in front of moto, taken down): first
    while the worker starts (it waits for the reference data instead of exiting), then while
    chunks are queued; SQS and PostgreSQL stay up."""
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:8])
    keys = sorted(chunks)
    resources = AwsResources.create(moto_endpoint, visibility_timeout=20, max_receive_count=5)
    stage(resources, chunks, importance)
    proxy = TcpProxy(moto_endpoint)
    proxy.down()
    log = tmp_path / "worker.log"
    url = migrated_database_url
    worker = start_worker(worker_env(resources, url, AWS_ENDPOINT_URL_S3=proxy.url, **BUDGET),
                          log)
    try:
        poll_until(lambda: log_lines(log, "s3 unavailable at start-up: waiting for the"
                                          " reference data"), 300,
                   "the worker waiting for S3 at start-up", process=worker, log=log)
        proxy.up()
        resources.enqueue(keys[:2])
        poll_until(lambda: applied_count(url) == 2, 300, "the first 2 chunks applied",
                   process=worker, log=log)

        proxy.down()
        before = proxy.reset
        resources.enqueue(keys[2:])
        # 20 connections reset: 4 fetches of botocore's 5 attempts each, i.e. two chunks'
        # failure budgets spent, had the chunks been charged
        poll_until(lambda: proxy.reset - before >= 20, 300, "20 S3 connections reset",
                   process=worker, log=log)
        assert_nothing_charged(resources, url, log)
        assert applied_count(url) == 2
        attrs = resources.sqs.get_queue_attributes(
            QueueUrl=resources.queue_url, AttributeNames=["All"])["Attributes"]
        # the held chunks' messages stay hidden (the heartbeat), the rest stay in the queue
        assert int(attrs["ApproximateNumberOfMessages"]) >= 4

        proxy.up()
        poll_until(settled_or_dead_lettered(resources, url, 8), 300,
                   "every chunk applied after the outage", process=worker, log=log)
        poll_until(lambda: resources.depth() == 0, 60, "the queue drained", process=worker,
                   log=log)
        stop(worker, log)
    finally:
        if worker.poll() is None:
            worker.kill()
        proxy.close()
    assert_nothing_charged(resources, url, log)
    assert_applied_in_production_order(url, chunks, importance)
    outage = log_lines(log, "s3 unavailable: holding the chunks, receiving nothing until it"
                            " answers")
    assert outage and all(line["dependency"] == "s3" for line in outage)
    assert keys[2] in outage[0]["chunk_keys"]
    assert log_lines(log, "dependency outage over: resuming")


def test_every_fetch_failing_every_fetch_denied_and_every_spark_job_failing_charge_no_chunk(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    """Three outages in turn, each switched on by a file (``WORKER_FAULT``) until it has
    fired 4 times: S3 answering 500 InternalError to every GetObject; a bad IAM deploy (every
    GetObject, and the worker's own probe, denied); a Spark runtime failing every job, the
    worker's made-up probe batch too."""
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:8])
    keys = sorted(chunks)
    resources = AwsResources.create(moto_endpoint, visibility_timeout=20, max_receive_count=5)
    stage(resources, chunks, importance)
    switches = {name: tmp_path / name for name in ("s3-500", "iam", "spark")}
    faults = ",".join([f"spark_fetch@InternalError@{switches['s3-500']}",
                       f"spark_fetch@AccessDenied@{switches['iam']}",
                       f"s3_probe@AccessDenied@{switches['iam']}",
                       f"spark_job@spark@{switches['spark']}"])
    log = tmp_path / "worker.log"
    url = migrated_database_url
    worker = start_worker(worker_env(resources, url, WORKER_FAULT=faults, **BUDGET), log)

    def fired(switch: Path) -> int:
        return len(switch.read_text().splitlines()) if switch.exists() else 0

    try:
        resources.enqueue(keys[:2])
        poll_until(lambda: applied_count(url) == 2, 300, "the first 2 chunks applied",
                   process=worker, log=log)
        for n, (name, switch) in enumerate(switches.items(), start=1):
            switch.touch()
            resources.enqueue(keys[2 * n: 2 * n + 2])
            poll_until(lambda s=switch: fired(s) >= 4, 300, f"the {name} fault fired 4 times",
                       process=worker, log=log)
            switch.unlink()
            poll_until(settled_or_dead_lettered(resources, url, 2 * n + 2), 300,
                       f"the chunks held during the {name} outage applied", process=worker,
                       log=log)
            assert_nothing_charged(resources, url, log)
        stop(worker, log)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert_applied_in_production_order(url, chunks, importance)
    outages = log_lines(log, "s3 unavailable: holding the chunks, receiving nothing until it"
                             " answers")
    assert any("InternalError" in line["error"] for line in outages)
    denied = [line for line in outages if "denied" in line["error"]]
    assert denied and denied[0]["error"].startswith("s3:GetObject denied on arn:aws:s3:::")
    assert "the worker's role needs s3:GetObject" in denied[0]["hint"]
    spark = log_lines(log, "spark unavailable: holding the chunks, receiving nothing until it"
                           " answers")
    assert spark and "injected Spark runtime failure" in spark[0]["error"]
    assert len(log_lines(log, "dependency outage over: resuming")) == 3


def test_a_second_worker_waits_for_a_failing_chunks_retry_time_before_reading_it(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    """Worker A fails chunk 1 (a failpoint: its own failure, counted) and holds its message
    until its retry time, an hour away. Worker B, on another queue of the same stream, gets
    chunk 2, and finds chunk 1 in S3 itself: it must wait for that retry time too, not read
    chunk 1 at once."""
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:2])
    first, second = sorted(chunks)
    resources = AwsResources.create(moto_endpoint, visibility_timeout=20, max_receive_count=5)
    stage(resources, chunks, importance)
    other_queue = resources.sqs.create_queue(QueueName=resources.queue_url.rsplit("/", 1)[1]
                                             + "-b")["QueueUrl"]
    url = migrated_database_url
    settings = {**BUDGET, "WORKER_RETRY_DELAY_SECONDS": "3600"}
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    worker_a = start_worker(worker_env(
        resources, url, WORKER_RAISE=f"spark_fetch@{first.split('/')[-1]}", **settings), log_a)
    b_resources = AwsResources(resources.endpoint, resources.bucket, other_queue,
                               resources.dlq_url)
    worker_b = start_worker(worker_env(b_resources, url, **settings), log_b)
    try:
        resources.enqueue([first])
        poll_until(lambda: failure_records(url) == [(first, 1)], 300,
                   "chunk 1 failed once in worker A", process=worker_a, log=log_a)
        poll_until(lambda: log_lines(log_b, "worker started"), 300, "worker B started",
                   process=worker_b, log=log_b)
        b_resources.enqueue([second])

        def waits() -> list[dict]:
            return [line for line in log_lines(log_b, "chunk waits for its retry time")
                    if line["chunk_key"] == first]

        poll_until(lambda: waits() or applied_count(url) > 0, 300,
                   "worker B found chunk 1 in S3", process=worker_b, log=log_b)
        assert applied_count(url) == 0, "worker B read chunk 1 before its retry time"
        assert failure_records(url) == [(first, 1)]

        stop(worker_a, log_a)  # its failpoint would fail chunk 1 again
        # the retry time passes (an hour: moved, not waited for)
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE chunk_failures SET retry_after = clock_timestamp()")
        poll_until(lambda: applied_count(url) == 2, 300, "worker B applied both chunks",
                   process=worker_b, log=log_b)
        stop(worker_b, log_b)
    finally:
        for worker in (worker_a, worker_b):
            if worker.poll() is None:
                worker.kill()
    assert_applied_in_production_order(url, chunks, importance)
    assert resources.depth(resources.dlq_url) == 0
    assert failure_records(url) == [(first, 1)]
