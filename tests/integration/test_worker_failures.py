"""Failure isolation in the real worker process (docs/operations.md): a fault is injected into
the running process (a failpoint, a stopped PostgreSQL, a killed JVM, a huge chunk) and the
result is compared with the reference model."""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import psycopg2
import pytest

from infra.local import postgres
from infra.local.stack import poll_until
from spark_detector import db
from tests.support.workers import (
    AwsResources,
    applied_count,
    applied_order,
    assert_applied_in_production_order,
    log_lines,
    split_chunks,
    stage,
    start_worker,
    stop,
    worker_env,
)

pytestmark = pytest.mark.spark

PLACES = ("spark_fetch", "apply_chunk", "quarantine")
MILLISECOND = timedelta(milliseconds=1)  # log timestamps have milliseconds


def moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def retry_window(database_url: str, key: str) -> tuple[int, float]:
    """(attempts, seconds from the last failure to the next try) as chunk_failures holds
    them: both instants come from one statement, so the window is exact."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT attempts, extract(epoch FROM retry_after - last_failed_at)"
                    " FROM chunk_failures WHERE chunk_key = %s", (key,))
        attempts, seconds = cur.fetchone()
    return attempts, round(float(seconds), 2)


def test_chunks_failing_in_batches_of_10_never_take_the_others_with_them(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    """One process, 30 chunks in batches of 10, and a chunk failing at each of three places:
    the Spark fetch (the whole Spark job fails: here the overlapped job of the second batch,
    run while the first is applied), the apply transaction, the quarantine write."""
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 100).items())[:30])
    keys = sorted(chunks)
    bad = dict(zip(PLACES, (keys[14], keys[4], keys[24]), strict=True))
    for key in bad.values():
        chunks[key] += b"0,'C1','4','F','1','M1','1','x',-5,0\n"  # a bad row: quarantine runs
    resources = AwsResources.create(moto_endpoint, visibility_timeout=20, max_receive_count=50)
    stage(resources, chunks, importance)
    resources.enqueue(keys)
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(
        resources, migrated_database_url, WORKER_MAX_BATCH_CHUNKS="10",
        WORKER_BATCH_WINDOW_SECONDS="2", WORKER_VISIBILITY_TIMEOUT_SECONDS="20",
        WORKER_HEARTBEAT_AFTER_SECONDS="5", WORKER_RETRY_DELAY_SECONDS="0.2",
        WORKER_MAX_CHUNK_FAILURES="3",
        WORKER_RAISE=",".join(f"{place}@{key.split('/')[-1]}" for place, key in bad.items())),
        log)
    try:
        poll_until(lambda: applied_count(migrated_database_url) == 27
                   and resources.depth(resources.dlq_url) == 3, 300,
                   "27 chunks applied, the 3 failing ones in the DLQ", process=worker, log=log)
    finally:
        stop(worker, log)

    assert_applied_in_production_order(migrated_database_url, chunks, importance,
                                       left_out=bad.values())
    dead = {}
    for _ in range(3):
        for message in resources.sqs.receive_message(
                QueueUrl=resources.dlq_url, MessageAttributeNames=["All"],
                MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", []):
            attributes = message["MessageAttributes"]
            dead[json.loads(message["Body"])["key"]] = (
                attributes["dead_letter_reason"]["StringValue"],
                attributes["dead_letter_attempts"]["StringValue"])
    assert set(dead) == set(bad.values())
    for place, key in bad.items():
        assert f"injected failure at {place}" in dead[key][0] and dead[key][1] == "3"
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, attempts, last_error, dead_lettered_at IS NOT NULL"
                    " FROM chunk_failures ORDER BY chunk_key")
        assert cur.fetchall() == [(key, 3, dead[key][0], True) for key in sorted(dead)]
    assert resources.depth() == 0
    # The start-up warm-up ran on the Spark thread, done before the first batch's Spark job
    text = log.read_text(errors="replace")
    assert 0 < text.index('"spark warm"') < text.index('"batch done"')
    # Spark jobs overlapped the applies (a batch's "overlapped" counts only the chunks such
    # a job aggregated: how many depends on how the failures cut the batches, and the one
    # overlapped job that fails - chunk 15's - counts for nobody); each failing chunk failed
    # exactly its budget of 3 times, each time alone
    assert sum(b["overlapped"] for b in log_lines(log, "batch done")) >= 1
    assert any(bad["spark_fetch"] in line["chunk_keys"]
               for line in log_lines(log, "overlapped Spark job failed: its chunks are"
                                          " aggregated in their turn"))
    for key in bad.values():
        assert len([r for r in log_lines(log, "chunk failed") if r["chunk_key"] == key]) == 3



def test_a_redriven_chunk_gets_a_fresh_budget_and_a_stale_copy_is_deleted(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    """One process without overlapped Spark jobs (WORKER_OVERLAP_BATCHES=false), and one chunk
    failing at its apply every time: it is retried after a delay that doubles, moved to the
    DLQ after its budget of 3, and the chunks after it are applied; a stale copy of its
    original message is deleted, not retried; redriven from the DLQ by an operator, it starts
    a fresh budget of 3 and goes back to the DLQ."""
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 300).items())[:6])
    keys = sorted(chunks)
    bad = keys[2]
    resources = AwsResources.create(moto_endpoint, visibility_timeout=20, max_receive_count=50)
    stage(resources, chunks, importance)
    resources.enqueue(keys)
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(
        resources, migrated_database_url, WORKER_MAX_BATCH_CHUNKS="2",
        WORKER_OVERLAP_BATCHES="false", WORKER_VISIBILITY_TIMEOUT_SECONDS="20",
        WORKER_HEARTBEAT_AFTER_SECONDS="5", WORKER_RETRY_DELAY_SECONDS="0.5",
        WORKER_MAX_CHUNK_FAILURES="3", WORKER_RAISE=f"apply_chunk@{bad.split('/')[-1]}"), log)

    def failures() -> list[dict]:
        return [r for r in log_lines(log, "chunk failed") if r["chunk_key"] == bad]

    try:
        poll_until(lambda: applied_count(migrated_database_url) == 5
                   and resources.depth(resources.dlq_url) == 1, 240,
                   "the others applied, the failing chunk in the DLQ", process=worker, log=log)
        first = failures()
        assert [r["attempts"] for r in first] == [1, 2, 3]
        # each retry came no earlier than the failure before it said (exact: both instants)
        for before, after in itertools.pairwise(first):
            assert moment(after["timestamp"]) >= moment(before["retry_after"]) - MILLISECOND
        assert retry_window(migrated_database_url, bad) == (3, 0.5 * 2 ** 2)  # doubled twice

        resources.enqueue([bad])  # a late duplicate of its S3 event: the stale original
        poll_until(lambda: log_lines(log, "stale message of a dead-lettered chunk deleted")
                   and resources.depth() == 0, 120, "the stale copy deleted",
                   process=worker, log=log)
        assert len(failures()) == 3  # not retried, not counted

        assert resources.redrive() == 1
        poll_until(lambda: len(failures()) == 6 and resources.depth(resources.dlq_url) == 1,
                   120, "the redriven chunk failing its fresh budget", process=worker, log=log)
    finally:
        stop(worker, log)
    assert log_lines(log, "dead-lettered chunk redriven: a fresh failure budget")
    assert [r["attempts"] for r in failures()] == [1, 2, 3, 1, 2, 3]
    assert retry_window(migrated_database_url, bad) == (3, 0.5 * 2 ** 2)
    assert_applied_in_production_order(migrated_database_url, chunks, importance,
                                       left_out=[bad])
    # no Spark job ran ahead of its batch (with overlap, the second batch's would have)
    assert [b["overlapped"] for b in log_lines(log, "batch done")] == [0] * len(
        log_lines(log, "batch done"))
    assert resources.depth() == 0

def test_a_postgresql_outage_stops_intake_and_loses_nothing(
        dataset, moto_endpoint, tmp_path):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:12])
    keys = sorted(chunks)
    resources = AwsResources.create(moto_endpoint, visibility_timeout=20, max_receive_count=3)
    stage(resources, chunks, importance)
    pgdata = Path(tempfile.mkdtemp(prefix="outage-pg-")) / "data"
    server = postgres.start_embedded(pgdata)
    log = tmp_path / "worker.log"
    worker = None
    try:
        url = postgres.recreate_database(server.url, "outage")
        with contextlib.closing(db.connect(url)) as conn:
            db.migrate(conn)
        worker = start_worker(worker_env(
            resources, url, WORKER_MAX_BATCH_CHUNKS="2", WORKER_DB_RETRY_ATTEMPTS="2",
            WORKER_VISIBILITY_TIMEOUT_SECONDS="20", WORKER_HEARTBEAT_AFTER_SECONDS="5"), log)
        resources.enqueue(keys[:4])
        poll_until(lambda: applied_count(url) == 4, 240, "the first 4 chunks applied",
                   process=worker, log=log)

        postgres.stop_embedded(pgdata)
        resources.enqueue(keys[4:])
        # longer than the whole retry budget (2 attempts), the queue untouched meanwhile
        waiting = "database still unavailable: receiving nothing"
        poll_until(lambda: len(log_lines(log, waiting)) >= 4, 120,
                   "the worker waiting for the database", process=worker, log=log)
        attrs = resources.sqs.get_queue_attributes(
            QueueUrl=resources.queue_url, AttributeNames=["All"])["Attributes"]
        assert (attrs["ApproximateNumberOfMessages"],
                attrs["ApproximateNumberOfMessagesNotVisible"]) == ("8", "0")

        postgres.start_embedded(pgdata)
        poll_until(lambda: applied_count(url) == 12 and resources.depth() == 0, 240,
                   "every chunk applied after the outage", process=worker, log=log)
        stop(worker, log)
        assert_applied_in_production_order(url, chunks, importance)
        assert resources.depth(resources.dlq_url) == 0
        assert log_lines(log, "database is back: resuming")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        postgres.stop_embedded(pgdata)


def test_a_dead_spark_jvm_gives_the_messages_back_and_ends_the_process(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:2])
    second = sorted(chunks)[1]
    resources = AwsResources.create(moto_endpoint, visibility_timeout=60)
    stage(resources, {second: chunks[second]}, importance)  # its predecessor never came
    resources.enqueue([second])
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(
        resources, migrated_database_url, WORKER_WAIT_TIME_SECONDS="20",
        WORKER_VISIBILITY_TIMEOUT_SECONDS="60", WORKER_HEARTBEAT_AFTER_SECONDS="20"), log)
    try:
        poll_until(lambda: resources.sqs.get_queue_attributes(
            QueueUrl=resources.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"
            and log_lines(log, "worker started"), 180, "the chunk held by the worker",
            process=worker, log=log)
        (jvm,) = [p for p in psutil.Process(worker.pid).children(recursive=True)
                  if p.name() == "java"]
        jvm.kill()
        assert worker.wait(timeout=30) == 3, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    assert log_lines(log, "spark runtime lost: messages given back, exiting")
    attrs = resources.sqs.get_queue_attributes(
        QueueUrl=resources.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "1"  # not after 60 s


def test_a_200_mb_chunk_is_rejected_unread_and_the_chunks_after_it_are_applied(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    transactions, importance = dataset
    chunks = dict(list(split_chunks(transactions, 500).items())[:4])
    keys = sorted(chunks)
    header = transactions.split(b"\n", 1)[0] + b"\n"
    line = b"0,'C1','4','F','28007','M1','28007','es_food',12.50,0\n"
    chunks[keys[1]] = header + line * (200 * 1024 * 1024 // len(line))
    resources = AwsResources.create(moto_endpoint)
    stage(resources, chunks, importance)
    resources.enqueue(keys)
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(resources, migrated_database_url), log)
    peak = {"driver": 0, "at_start": None}

    def sample() -> None:
        rss = psutil.Process(worker.pid).memory_info().rss
        peak["driver"] = max(peak["driver"], rss)
        if peak["at_start"] is None and log_lines(log, "worker started"):
            peak["at_start"] = rss

    try:
        poll_until(lambda: sample() or applied_count(migrated_database_url) == 3, 240,
                   "the chunks around the huge one applied", process=worker, log=log)
    finally:
        stop(worker, log)

    assert applied_order(migrated_database_url) == [keys[0], keys[2], keys[3]]
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT chunk_key, reason FROM rejected_chunks")
        ((key, reason),) = cur.fetchall()
    assert key == keys[1] and reason.startswith("too large:")
    copied = resources.s3.head_object(Bucket=resources.bucket,
                                      Key=f"quarantine/chunks/{keys[1].split('/')[-1]}")
    assert copied["ContentLength"] == len(chunks[keys[1]])
    # the driver never held the chunk: its memory grew by far less than the chunk's size
    print(f"driver RSS at start {peak['at_start'] / 2**20:.0f} MiB,"
          f" peak {peak['driver'] / 2**20:.0f} MiB")
    assert peak["driver"] - peak["at_start"] < 100 * 2**20


def test_a_3_kb_customer_is_rejected_alone_and_its_chunk_applied_not_dead_lettered(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    """One row of a 10,000-row chunk names a customer of 3,000 characters that PostgreSQL
    cannot compress: over a btree row's limit, so pair_state's key would refuse it, which
    psycopg2 reports as an OperationalError. The row is a bad row (SPEC: identifiers are
    bounded); the 9,999 others are applied, and nothing is charged or dead-lettered."""
    transactions, importance = dataset
    chunks = split_chunks(transactions, 10_000)
    keys = sorted(chunks)
    lines = chunks[keys[0]].decode().split("\n")
    fields = lines[5000].split(",")  # data row 5000 (line 0 is the header)
    fields[1] = f"'{secrets.token_hex(1500)}'"  # the customer
    lines[5000] = ",".join(fields)
    chunks[keys[0]] = "\n".join(lines).encode()
    resources = AwsResources.create(moto_endpoint, visibility_timeout=20, max_receive_count=50)
    stage(resources, chunks, importance)
    resources.enqueue(keys)
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(
        resources, migrated_database_url, WORKER_RETRY_DELAY_SECONDS="0.2",
        WORKER_MAX_CHUNK_FAILURES="2", WORKER_DB_RETRY_ATTEMPTS="2",
        WORKER_VISIBILITY_TIMEOUT_SECONDS="20", WORKER_HEARTBEAT_AFTER_SECONDS="5"), log)
    try:
        poll_until(lambda: applied_count(migrated_database_url) == 2
                   or resources.depth(resources.dlq_url) > 0, 300,
                   "both chunks applied (or one dead-lettered)", process=worker, log=log)
    finally:
        stop(worker, log)

    assert resources.depth(resources.dlq_url) == 0
    assert_applied_in_production_order(migrated_database_url, chunks, importance)
    with psycopg2.connect(migrated_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT rows_good, rows_rejected FROM processed_chunks WHERE chunk_key = %s",
                    (keys[0],))
        assert cur.fetchone() == (9_999, 1)
        cur.execute("SELECT count(*) FROM chunk_failures")
        assert cur.fetchone() == (0,)
    rows = resources.read(f"quarantine/rows/{keys[0].split('/')[-1]}").decode().splitlines()
    assert rows[1].startswith("5000,customer is longer than 64 characters (3000),")
    assert not log_lines(log, "chunk failed")
