"""A sequence number is applied at most once, and a chunk key is applied in one version only
(docs/detection-semantics.md, production order): the faults are put into the bucket and the
queue of the real worker process, and the result is compared with the reference model."""

from __future__ import annotations

import signal
from datetime import UTC, datetime

import psycopg2
import pytest

from chunk_contract.layout import CHUNK_PREFIX, chunk_key
from infra.local.stack import poll_until
from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.ops.status import collect_status, format_status
from tests.support.workers import (
    AwsResources,
    applied_count,
    applied_order,
    committed_detections,
    expected_detections_in_order,
    split_chunks,
    start_worker,
    worker_env,
)

pytestmark = pytest.mark.spark

LATER = datetime(2026, 11, 28, tzinfo=UTC)


def query(database_url: str, sql: str) -> list[tuple]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_a_second_chunk_with_a_settled_number_and_an_overwritten_key_are_reported_never_applied(
        dataset, moto_endpoint, migrated_database_url, tmp_path):
    transactions, importance = dataset
    bodies = list(split_chunks(transactions, 1000).values())
    chunks = dict(list(split_chunks(transactions, 1000).items())[:4])
    keys = sorted(chunks)
    # A second producer's chunk 2 (the same rows, uploaded at another time), and hand uploads
    # whose names only look like the producer's: none of them carries a sequence number.
    second = chunk_key(CHUNK_PREFIX, 2, LATER)
    hand = {
        f"{CHUNK_PREFIX}backup/{keys[2].removeprefix(CHUNK_PREFIX)}": bodies[4],
        f"{CHUNK_PREFIX}my-{keys[3].removeprefix(CHUNK_PREFIX)}": bodies[5],
        chunk_key(CHUNK_PREFIX, 3, LATER).replace("00000003", "0000000\u0663"): bodies[6],
        chunk_key(CHUNK_PREFIX, 1, LATER).replace("00000001", "00000000"): bodies[7],
    }
    every = {**chunks, second: chunks[keys[1]], **hand}
    resources = AwsResources.create(moto_endpoint, visibility_timeout=30, max_receive_count=50)
    resources.upload(every)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    resources.enqueue([keys[0], keys[1], *hand, second, keys[2], keys[3]])
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env(resources, migrated_database_url,
                                     WORKER_RETRY_DELAY_SECONDS="1"), log)
    try:
        poll_until(lambda: applied_count(migrated_database_url) == len(chunks) + len(hand)
                   and resources.depth() == 0, 240, "the chunks applied, the copy rejected",
                   process=worker, log=log)

        # The key of chunk 1 is uploaded again with other content, and its event comes.
        resources.s3.put_object(Bucket=resources.bucket, Key=keys[0], Body=bodies[8])
        resources.enqueue([keys[0]])
        poll_until(lambda: query(migrated_database_url, "SELECT count(*) FROM chunk_conflicts")
                   [0][0] == 1 and resources.depth() == 0, 120, "the overwrite recorded",
                   process=worker, log=log)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=120)
    assert code == 0, log.read_text()[-3000:]

    order = applied_order(migrated_database_url)
    assert sorted(order) == sorted([*keys, *hand])
    assert [k for k in order if k in chunks] == keys
    # the hand uploads' places are delivery's: the reference replays the recorded order
    assert committed_detections(migrated_database_url) == expected_detections_in_order(
        every, importance, order)  # chunk 2's rows once, chunk 1's first version only
    assert dict(query(migrated_database_url, "SELECT chunk_key, seq FROM processed_chunks")) == {
        **{key: n for n, key in enumerate(keys, 1)}, **dict.fromkeys(hand)}
    ((rejected, reason, duplicate_of),) = query(
        migrated_database_url, "SELECT chunk_key, reason, duplicate_of FROM rejected_chunks")
    assert (rejected, duplicate_of) == (second, keys[1])
    assert reason.startswith("duplicate sequence number 2: ")
    assert f"quarantine/chunks/{second.removeprefix(CHUNK_PREFIX)}" in resources.keys(
        "quarantine/chunks/")
    assert query(migrated_database_url, "SELECT seq, outcome, chunk_key, late_chunk_key"
                 " FROM sequence_marks ORDER BY seq") == [
        (n, "applied", key, None) for n, key in enumerate(keys, 1)]
    head = resources.s3.head_object(Bucket=resources.bucket, Key=keys[0])
    assert query(migrated_database_url, "SELECT chunk_key, etag, kind FROM chunk_conflicts") == [
        (keys[0], head["ETag"].strip('"'), "overwritten")]
    assert query(migrated_database_url, "SELECT count(*) FROM chunk_failures") == [(0,)]
    assert resources.depth(resources.dlq_url) == 0

    conn = db.connect(migrated_database_url)
    status = collect_status(conn, resources.sqs, WorkerSettings(
        bucket=resources.bucket, queue_url=resources.queue_url,
        database_url=migrated_database_url))
    conn.close()
    assert (status.next_seq, status.duplicate_chunks, status.conflicts_total) == (5, 1, 1)
    text = format_status(status)
    assert f"{second} duplicates chunk 2 ({keys[1]})" in text
    assert f"{keys[0]}: uploaded again with other content" in text
    assert '"duplicate sequence number"' in log.read_text()
    assert '"chunk key uploaded again with other content"' in log.read_text()
