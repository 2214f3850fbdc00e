"""The worker's loop in-process: moto server, real PostgreSQL, the session's SparkSession."""

from __future__ import annotations

from dataclasses import replace

import psycopg2
import pytest

from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.worker.loop import Worker
from tests.support.workers import (
    applied_order,
    assert_applied_in_production_order,
    assert_files_hold_each_detection_once,
    make_worker,
    run_until_idle,
    split_chunks,
)

pytestmark = pytest.mark.spark


# Rows the rules reject, each alone (docs/detection-semantics.md), for pairs that exist: a
# reading of the input looser than the rules, in the worker or in the reference, changes the
# rows counted and the state, and so shows in the comparison with the reference.
BAD_ROWS = [
    "{c},'4','F','28007',{m},'28007','es_food',1e3,0",
    "{c},'4','F','28007',{m},'28007','es_food',1_000,0",
    "{c},'4','F','28007',{m},'28007','es_food',\u0661\u0662,0",
    "{c},'4','F','28007',{m},'28007','es_food',10000000000000000,0",
    "{c},'4','F','28007',{m},'28007','es_food',-0.004,0",
    "{c},'4','F','28007',{m},'28007','es_food',NaN,0",
    "{c},'4','F','28007',{m},'28007',\"es_food,x\",1.5,0",
    "'','4','F','28007',{m},'28007','es_food',1.5,0",
]


def with_bad_rows(body: bytes) -> bytes:
    """The chunk with BAD_ROWS for its first row's customer and merchant, among its rows."""
    header, first, *rest = body.decode().splitlines(keepends=True)
    step, customer, _, _, _, merchant = first.split(",")[:6]
    bad = [f"{step},{row.format(c=customer, m=merchant)}\n" for row in BAD_ROWS]
    return (header + first + "".join(bad[:4]) + "".join(rest) + "".join(bad[4:])).encode()


def test_a_run_matches_the_reference_and_files_hold_fifty_each(
        spark, weights, dataset, resources, migrated_database_url):
    transactions, importance = dataset
    chunks = split_chunks(transactions, 1000)
    assert len(chunks) == 20
    for key in sorted(chunks)[2::5]:
        chunks[key] = with_bad_rows(chunks[key])
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    resources.enqueue(chunks)
    worker = make_worker(resources, migrated_database_url, spark, weights)

    batches = run_until_idle(worker)

    assert len(batches) < len(chunks)  # micro-batches of several chunks (4 at most)
    # most chunks were aggregated by an overlapped Spark job, while the batch before theirs
    # was applied; the results are the reference's all the same
    assert sum(b.overlapped for b in batches) >= len(chunks) // 2
    expected = assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert {p for _, p, *_ in expected} == {"PatId1", "PatId2", "PatId3"}
    assert sum(b.rows_rejected for b in batches) == 4 * len(BAD_ROWS)
    assert_files_hold_each_detection_once(resources, expected, complete=False)
    assert resources.depth() == 0

    worker.flush_partial("drain")
    assert_files_hold_each_detection_once(resources, expected, complete=True)
    worker.close()


def test_bad_input_is_set_aside_and_everything_else_is_processed(
        spark, weights, dataset, resources, migrated_database_url):
    transactions = dataset[0]
    good = dict(list(split_chunks(transactions, 500).items())[:3])
    first, second, third = sorted(good)
    header = transactions.split(b"\n", 1)[0]
    bad_rows = first.replace("chunk-", "chunk-badrows-")
    extra = {
        # one row with an empty merchant, one with 3 fields, one with a negative amount
        bad_rows: good[first].replace(b"'M348934600'", b"''", 1) + b"1,2,3\n"
        + b"0,'C1','4','F','1','M1','1','x',-5,0\n",
        "stream_chunks/chunk-bad-header.csv": header.replace(b"merchant", b"shop") + b"\n1\n",
        "stream_chunks/chunk-latin1.csv": header + b"\n0,'C\xe9','4','F','1','M1','1','x',1,0\n",
    }
    resources.upload({**good, **extra})
    resources.enqueue([first, second, third, first, second, *extra])
    resources.enqueue(["stream_chunks/chunk-never-uploaded.csv"])
    resources.send_raw("this is not a chunk message")
    worker = make_worker(resources, migrated_database_url, spark, weights,
                         retry_delay_seconds=0)

    run_until_idle(worker)

    assert sorted(applied_order(migrated_database_url)) == sorted([*good, bad_rows])
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, reason, quarantine_key FROM rejected_chunks"
                    " ORDER BY chunk_key")
        rejected = cur.fetchall()
        cur.execute("SELECT rows_good, rows_rejected FROM processed_chunks WHERE chunk_key = %s",
                    (bad_rows,))
        rows_good, rows_rejected = cur.fetchone()
    assert [key for key, *_ in rejected] == ["stream_chunks/chunk-bad-header.csv",
                                             "stream_chunks/chunk-latin1.csv"]
    assert "merchant" in rejected[0][1] and "UTF-8" in rejected[1][1]
    assert (rows_good, rows_rejected) == (499, 3)
    quarantined = resources.keys("quarantine/")
    assert {key for _, _, key in rejected} <= set(quarantined)
    rows_file = resources.read(f"quarantine/rows/{bad_rows.split('/')[-1]}").decode()
    assert rows_file.splitlines()[0] == "row,reason,line"
    assert len(rows_file.splitlines()) == 4 and "negative" in rows_file
    # The poison (a missing object, a garbage body) went to the DLQ after its bounded
    # retries; the duplicates were recognised and deleted.
    assert resources.depth() == 0
    assert resources.depth(resources.dlq_url) == 2
    worker.close()


def test_backfill_enqueues_only_chunks_neither_applied_nor_rejected(
        spark, weights, dataset, resources, migrated_database_url):
    chunks = dict(list(split_chunks(dataset[0], 500).items())[:5])
    keys = sorted(chunks)
    resources.upload(chunks)
    resources.enqueue(keys[:2])  # the events of the other three were lost
    worker = make_worker(resources, migrated_database_url, spark, weights)
    run_until_idle(worker)
    assert applied_order(migrated_database_url) == keys[:2]

    worker.settings = replace(worker.settings, backfill_every_seconds=0.0)
    worker.idle_work(None)  # the periodic backfill, due at once
    assert resources.depth() == 3
    run_until_idle(worker)

    assert applied_order(migrated_database_url) == keys
    worker.idle_work(None)
    assert resources.depth() == 0  # nothing left to enqueue
    worker.close()


def test_a_database_restart_mid_run_loses_and_duplicates_nothing(
        spark, weights, dataset, resources, migrated_database_url):
    chunks = dict(list(split_chunks(dataset[0], 500).items())[:6])
    chunks[sorted(chunks)[3]] = with_bad_rows(chunks[sorted(chunks)[3]])
    resources.upload(chunks)
    resources.enqueue(sorted(chunks))
    worker = make_worker(resources, migrated_database_url, spark, weights,
                         max_batch_chunks=2)
    assert worker.run_batch().chunks == 2
    connection_before = worker.db.conn
    # Every server connection of this database is cut, as a PostgreSQL restart would.
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    run_until_idle(worker)
    assert worker.db.conn is not connection_before  # it did reconnect
    assert_applied_in_production_order(migrated_database_url, chunks, dataset[1])
    worker.close()



def test_a_failed_batch_is_released_for_a_retry_not_hidden_for_the_visibility_timeout(
        resources, migrated_database_url):
    chunks = {"stream_chunks/chunk-00000001.csv": b"irrelevant"}
    resources.upload(chunks)
    resources.enqueue(chunks)
    settings = WorkerSettings(bucket=resources.bucket, queue_url=resources.queue_url,
                              database_url=migrated_database_url, wait_time_seconds=0,
                              retry_delay_seconds=0)
    worker: Worker

    def failing_spark_job(keys: list[str]):
        worker.stop_event.set()  # one batch is enough for this test
        raise ConnectionError("S3 unavailable")

    worker = Worker(settings, s3=resources.s3, sqs=resources.sqs,
                    connect=lambda: db.connect(migrated_database_url),
                    aggregate=failing_spark_job)
    worker.run()

    attrs = resources.sqs.get_queue_attributes(
        QueueUrl=resources.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "1"  # visible again now
    assert applied_order(migrated_database_url) == []
    worker.close()


def test_an_idle_worker_flushes_the_partial_file_only_when_configured(
        spark, weights, dataset, resources, migrated_database_url):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:2])
    resources.upload(chunks)
    resources.enqueue(chunks)
    worker = make_worker(resources, migrated_database_url, spark, weights)
    run_until_idle(worker)
    expected = assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert 0 < len(expected) < 50

    worker.idle_work(None)  # no idle flush configured: nothing is written
    assert resources.keys("detected_patterns/") == []

    worker.settings = replace(worker.settings, flush_partial_after_seconds=0.0)
    worker.idle_work(None)
    assert_files_hold_each_detection_once(resources, expected, complete=True)
    worker.close()
