"""Production order in the worker's loop (docs/detection-semantics.md), in-process: moto
server, real PostgreSQL, the session's SparkSession. The detections, and the chunk after which each
fired, must depend only on the data and the producer's sequence order."""

from __future__ import annotations

import random

import psycopg2
import pytest

from spark_detector.status import collect_status
from spark_detector.worker import Worker
from tests.integration.worker_support import (
    AwsResources,
    applied_order,
    committed_detections,
    expected_detections,
    make_worker,
    split_chunks,
)

pytestmark = pytest.mark.spark


def run_until(worker: Worker, done, max_loops: int = 300) -> None:
    for _ in range(max_loops):
        if done():
            return
        worker.run_batch()
    raise AssertionError("the worker never got there")


def rejected(database_url: str) -> dict[str, str]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, reason FROM rejected_chunks")
        return dict(cur.fetchall())


def test_shuffled_delayed_and_duplicated_events_give_the_production_order_result(
        spark, weights, dataset, resources, migrated_database_url):
    transactions, importance = dataset
    chunks = split_chunks(transactions, 1000)
    keys = sorted(chunks)
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    shuffled = random.Random(7).sample(keys, len(keys))
    delayed, duplicated = set(shuffled[:4]), shuffled[4:9]
    resources.enqueue([k for k in shuffled if k not in delayed])
    resources.enqueue(sorted(delayed), delay_seconds=2)
    resources.enqueue(duplicated)
    worker = make_worker(resources, migrated_database_url, spark, weights)

    run_until(worker, lambda: len(applied_order(migrated_database_url)) == len(keys)
              and resources.depth() == 0)

    assert applied_order(migrated_database_url) == keys
    assert committed_detections(migrated_database_url) == expected_detections(
        chunks, importance, keys)
    assert resources.depth(resources.dlq_url) == 0
    worker.close()


def test_a_chunk_whose_event_never_came_is_taken_from_s3_without_a_backfill(
        spark, weights, dataset, resources, migrated_database_url):
    chunks = dict(list(split_chunks(dataset[0], 500).items())[:5])
    keys = sorted(chunks)
    resources.upload(chunks)
    resources.enqueue([k for k in keys if k != keys[2]])  # the third chunk's event is lost
    worker = make_worker(resources, migrated_database_url, spark, weights)

    run_until(worker, lambda: len(applied_order(migrated_database_url)) == 5
              and resources.depth() == 0)

    assert applied_order(migrated_database_url) == keys
    worker.close()


def test_a_chunk_that_never_comes_is_a_visible_gap_until_an_operator_skips_it(
        spark, weights, dataset, resources, migrated_database_url, capsys, caplog,
        monkeypatch):
    from spark_detector.__main__ import main

    chunks = dict(list(split_chunks(dataset[0], 500).items())[:5])
    keys = sorted(chunks)
    never = keys.pop(2)
    resources.upload({k: chunks[k] for k in keys})
    resources.enqueue(keys)
    worker = make_worker(resources, migrated_database_url, spark, weights,
                         gap_alert_seconds=0.01)

    run_until(worker, lambda: applied_order(migrated_database_url) == keys[:2])
    run_until(worker, lambda: any(r.getMessage() == "stream gap" for r in caplog.records))
    assert applied_order(migrated_database_url) == keys[:2]  # chunks 4, 5 still wait
    conn = psycopg2.connect(migrated_database_url)
    status = collect_status(conn, resources.sqs, worker.settings)
    conn.close()
    assert status.next_seq == 3 and status.waiting_since is not None

    for name, value in {"BUCKET": resources.bucket, "QUEUE_URL": resources.queue_url,
                        "DATABASE_URL": migrated_database_url,
                        "AWS_ENDPOINT_URL": resources.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    assert main(["skip-seq", "3", "--reason", "producer lost it", "--by", "ops"]) == 0
    assert "now waits for chunk 4" in capsys.readouterr().out
    run_until(worker, lambda: len(applied_order(migrated_database_url)) == 4)

    assert applied_order(migrated_database_url) == keys
    assert never not in applied_order(migrated_database_url)
    conn = psycopg2.connect(migrated_database_url)
    status = collect_status(conn, resources.sqs, worker.settings)
    conn.close()
    assert status.next_seq == 6 and status.waiting_since is None
    assert [(s["seq"], s["by"], s["reason"]) for s in status.skipped_seqs] == [
        (3, "ops", "producer lost it")]
    worker.close()


def test_hand_uploaded_chunks_without_a_number_are_applied_in_arrival_order(
        spark, weights, dataset, resources, migrated_database_url):
    bodies = list(split_chunks(dataset[0], 500).values())[:2]
    second, first = "stream_chunks/manual-b.csv", "stream_chunks/manual-a.csv"
    resources.upload({second: bodies[0], first: bodies[1]})
    worker = make_worker(resources, migrated_database_url, spark, weights,
                         max_batch_chunks=1)
    resources.enqueue([second])
    run_until(worker, lambda: len(applied_order(migrated_database_url)) == 1)
    resources.enqueue([first])
    run_until(worker, lambda: len(applied_order(migrated_database_url)) == 2)
    assert applied_order(migrated_database_url) == [second, first]
    worker.close()


def test_empty_and_oversized_chunks_are_rejected_whole_before_anything_reads_them(
        spark, weights, dataset, resources, migrated_database_url):
    chunks = dict(list(split_chunks(dataset[0], 500).items())[:4])
    keys = sorted(chunks)
    chunks[keys[1]] = b""
    chunks[keys[2]] = chunks[keys[2]] * 3  # over the limit below
    resources.upload(chunks)
    resources.enqueue(keys)
    limit = len(chunks[keys[0]]) * 2
    worker = make_worker(resources, migrated_database_url, spark, weights,
                         max_chunk_bytes=limit)

    run_until(worker, lambda: resources.depth() == 0
              and len(applied_order(migrated_database_url)) == 2)

    assert applied_order(migrated_database_url) == [keys[0], keys[3]]
    reasons = rejected(migrated_database_url)
    assert reasons[keys[1]] == "empty chunk (0 bytes)"
    assert reasons[keys[2]].startswith(f"too large: {len(chunks[keys[2]]):,} bytes")
    quarantined = resources.keys("quarantine/chunks/")
    assert {f"quarantine/chunks/{keys[1].split('/')[-1]}",
            f"quarantine/chunks/{keys[2].split('/')[-1]}"} <= set(quarantined)
    worker.close()


def test_redeliveries_are_not_failures(spark, weights, dataset, moto_endpoint,
                                       migrated_database_url):
    """A message delivered six times (six killed workers) is applied, not dead-lettered:
    the queue's maxReceiveCount is a high backstop (50, as in template.yaml)."""
    resources = AwsResources.create(moto_endpoint, max_receive_count=50)
    chunks = dict(list(split_chunks(dataset[0], 500).items())[:1])
    resources.upload(chunks)
    resources.enqueue(chunks)
    for _ in range(6):  # each receive without a delete is what a killed worker leaves
        got = resources.sqs.receive_message(QueueUrl=resources.queue_url, WaitTimeSeconds=1)
        (message,) = got["Messages"]
        resources.sqs.change_message_visibility(QueueUrl=resources.queue_url,
                                                ReceiptHandle=message["ReceiptHandle"],
                                                VisibilityTimeout=0)
    worker = make_worker(resources, migrated_database_url, spark, weights)
    run_until(worker, lambda: resources.depth() == 0)
    assert applied_order(migrated_database_url) == list(chunks)
    assert resources.depth(resources.dlq_url) == 0
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM chunk_failures")
        assert cur.fetchone()[0] == 0
    worker.close()

