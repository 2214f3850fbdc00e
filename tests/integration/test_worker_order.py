"""Production order in the worker's loop (docs/detection-semantics.md), in-process: moto
server, real PostgreSQL, the session's SparkSession. The detections, and the chunk after which each
fired, must depend only on the data and the producer's sequence order."""

from __future__ import annotations

import random
import subprocess

import psycopg2
import pytest

from spark_detector.ops.status import collect_status
from spark_detector.worker.chunk_queue import MAX_HOLD_SECONDS, InFlight, Received
from tests.support.workers import (
    AwsResources,
    applied_order,
    assert_applied_in_production_order,
    command,
    make_worker,
    run_until,
    split_chunks,
    worker_env,
)

pytestmark = pytest.mark.spark


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

    # until every message, the delayed ones too (depth counts them), came and went
    batches = run_until(worker, lambda: len(applied_order(migrated_database_url)) == len(keys)
                        and resources.depth() == 0)

    assert_applied_in_production_order(migrated_database_url, chunks, importance)
    assert resources.depth(resources.dlq_url) == 0
    # chunks waited for their predecessors, and duplicate events were recognised as such
    assert sum(b.waiting for b in batches) > 0 and sum(b.duplicates for b in batches) > 0
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



def sequence_marks(database_url: str) -> list[tuple]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq, outcome, reason, decided_by FROM sequence_marks ORDER BY seq")
        return cur.fetchall()


def test_skip_seq_refuses_a_chunk_that_exists_unless_forced_and_skips_ranges_whole(
        dataset, resources, migrated_database_url):
    """The operator's command as a real process: a number whose chunk is in S3 is refused,
    and a refused range changes nothing; --force insists; --through skips a range."""
    chunks = dict(list(split_chunks(dataset[0], 500).items())[:5])
    keys = sorted(chunks)
    resources.upload({keys[1]: chunks[keys[1]], keys[4]: chunks[keys[4]]})  # chunks 2 and 5
    env = worker_env(resources, migrated_database_url)

    def skip(*args: str) -> subprocess.CompletedProcess:
        return command(env, "skip-seq", *args, "--reason", "lost upstream", "--by", "ops")

    refused = skip("2")
    assert refused.returncode == 2 and f"chunk 2 exists in S3 ({keys[1]})" in refused.stderr
    refused = skip("1", "--through", "3")  # 1 and 3 are not there, 2 is
    assert refused.returncode == 2 and "chunk 2 exists in S3" in refused.stderr
    assert sequence_marks(migrated_database_url) == []  # nothing of the range was skipped
    assert skip("3", "--through", "2").returncode == 2  # a range that goes backwards

    forced = skip("1", "--through", "3", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "skipped 1-3; the stream now waits for chunk 4" in forced.stdout
    again = skip("3", "--through", "4")
    assert again.returncode == 2 and "sequence number 3 is already skipped" in again.stderr
    assert skip("4").stdout.strip() == "skipped 4; the stream now waits for chunk 5"
    assert sequence_marks(migrated_database_url) == [
        (n, "skipped", "lost upstream", "ops") for n in (1, 2, 3, 4)]


def test_the_heartbeat_lets_go_of_a_message_before_sqs_12_hour_limit(resources):
    """A held message is extended by every beat until MAX_HOLD_SECONDS after its receipt
    (SQS refuses to extend one past 12 hours); then it is made visible again instead."""
    for body in ("old", "fresh"):
        resources.send_raw(body)
    got = resources.sqs.receive_message(QueueUrl=resources.queue_url, MaxNumberOfMessages=10,
                                        VisibilityTimeout=60)["Messages"]
    assert sorted(m["Body"] for m in got) == ["fresh", "old"]
    now = 50_000.0
    held = {m["Body"]: Received(m["MessageId"], m["ReceiptHandle"], m["Body"],
                                received_at=now - (MAX_HOLD_SECONDS if m["Body"] == "old" else 1))
            for m in got}
    inflight = InFlight(resources.sqs, resources.queue_url, every_seconds=60,
                        extend_to_seconds=60, clock=lambda: now)
    inflight.add("chunk-old", [held["old"]])
    inflight.add("chunk-fresh", [held["fresh"]])

    inflight.beat()

    assert inflight.messages("chunk-old") == [] and inflight.messages("chunk-fresh") == [
        held["fresh"]]
    again = resources.sqs.receive_message(QueueUrl=resources.queue_url, MaxNumberOfMessages=10,
                                          VisibilityTimeout=60).get("Messages", [])
    assert [m["Body"] for m in again] == ["old"]  # visible at once; "fresh" still hidden
